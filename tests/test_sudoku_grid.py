"""sudoku-grid-v0: the numeric (cell, digit) Sudoku env for stable-baselines3."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from r3m import envs  # noqa: F401  (registers the env ids)
from r3m.envs.sudoku_grid import SudokuGridEnv
from r3m.verifiers.sudoku import UNITS


def _mask_reference(board: np.ndarray) -> np.ndarray:
    mask = np.zeros(729, bool)
    for cell in range(81):
        if board[cell]:
            continue
        used = {int(board[j]) for u in UNITS if cell in u for j in u}
        for d in range(1, 10):
            mask[cell * 9 + d - 1] = d not in used
    return mask


def test_check_env_gymnasium_and_sb3():
    gym_check_env(SudokuGridEnv(difficulty=1), skip_render_check=True)
    sb3_check_env(SudokuGridEnv(difficulty=3))
    env = gym.make("sudoku-grid-v0")
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs) and info["difficulty"] in (1, 2, 3, 4, 5)


def test_expert_fill_scores_one():
    env = SudokuGridEnv()
    for level in (1, 3, 5):
        obs, info = env.reset(options={"difficulty": level, "index": level, "split": "test"})
        inst = env.family.instance("test", level, level)
        assert obs.tolist() == [0 if ch == "." else int(ch) for ch in inst.data["puzzle"]]
        blanks = np.flatnonzero(obs == 0)
        expert = env.expert_actions()
        assert expert == [cell * 9 + int(inst.answer[cell]) - 1 for cell in blanks]
        for n, action in enumerate(expert):
            mask = env.action_masks()
            assert mask[action] and np.array_equal(mask, _mask_reference(obs))
            obs, reward, terminated, truncated, info = env.step(action)
            assert not truncated and terminated == (n == len(blanks) - 1)
        assert reward == 1.0 and info["correct"] and info["filled"] == len(blanks)
        assert "".join(map(str, obs)) == inst.answer and not env.action_masks().any()


def test_masked_action_terminates_with_zero():
    env = SudokuGridEnv(difficulty=2)
    obs, _ = env.reset(seed=0)
    given = int(np.flatnonzero(obs)[0])
    for action in (given * 9, np.int64(given * 9 + 1), np.array(given * 9 + 2)):
        env.reset(seed=0)
        new_obs, reward, terminated, _, info = env.step(action)
        assert terminated and reward == 0.0 and not info["correct"] and "invalid" in info["reason"]
        assert np.array_equal(new_obs, obs)


@pytest.mark.parametrize("action, error", [(729, ValueError), (-1, ValueError), (np.int32(800), ValueError),
                                           ("5", TypeError), (1.5, TypeError), (5.0, TypeError),
                                           (True, TypeError), (np.array([5]), TypeError), (None, TypeError)])
def test_action_outside_discrete_729_raises(action, error):
    """Not a move but a caller's bug: it raises, names the space, and leaves the episode running."""
    env = SudokuGridEnv(difficulty=1)
    obs, _ = env.reset(seed=0)
    with pytest.raises(error, match="729|728"):
        env.step(action)
    blank = int(np.flatnonzero(obs == 0)[0])
    legal = blank * 9 + int(np.flatnonzero(env.action_masks()[blank * 9 : blank * 9 + 9])[0])
    _, _, _, _, info = env.step(np.int64(legal))
    assert info["filled"] == 1


def test_random_valid_moves_reach_full_board_or_dead_end():
    env = SudokuGridEnv(difficulty=1)
    rng = np.random.default_rng(0)
    outcomes = set()
    for episode in range(30):
        obs, _ = env.reset(options={"index": episode})
        solution = env.family.instance("train", episode, 1).answer
        terminated = False
        while not terminated:  # mostly correct moves, sometimes a random valid one
            mask = env.action_masks()
            assert mask.any() and np.array_equal(mask, _mask_reference(obs))
            cell = int(rng.choice(np.flatnonzero(obs == 0)))
            action = cell * 9 + int(solution[cell]) - 1
            if rng.random() < 0.05 or not mask[action]:
                action = int(rng.choice(np.flatnonzero(mask)))
            obs, reward, terminated, _, info = env.step(action)
        if obs.all():
            assert reward == 1.0 and info["correct"]
            outcomes.add("solved")
        else:
            assert reward == 0.0 and "dead end" in info["reason"]
            stuck = [c for c in np.flatnonzero(obs == 0) if not _mask_reference(obs)[c * 9 : c * 9 + 9].any()]
            assert stuck  # a dead end really has an empty cell with no valid digit
            outcomes.add("dead end")
    assert outcomes == {"solved", "dead end"}


def test_reset_determinism():
    env = SudokuGridEnv()
    a, _ = env.reset(seed=5)
    b, _ = env.reset(seed=5)
    c, _ = env.reset(options={"index": 12, "difficulty": 4})
    d, _ = env.reset(options={"index": 12, "difficulty": 4})
    assert np.array_equal(a, b) and np.array_equal(c, d) and not np.array_equal(a, c)


def test_maskable_ppo_trains(tmp_path):
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.logger import configure

    env = gym.make("sudoku-grid-v0", difficulty=1)
    model = MaskablePPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu",
                        policy_kwargs={"net_arch": [32]})
    model.set_logger(configure(str(tmp_path), [""]))  # not SB3's default /tmp/SB3-<time> folder
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, action_masks=env.unwrapped.action_masks(), deterministic=True)
    assert env.unwrapped.action_masks()[int(action)]
