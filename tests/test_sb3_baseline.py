"""train/sb3_baseline.py: tiny MaskablePPO runs, determinism, and the evaluation bookkeeping."""

import json

import numpy as np
import pytest

from conftest import needs_eval_data

from r3m import tools
from r3m.envs.text_env import TextTaskEnv
from r3m.learn.evaluation import EVAL_SEED
from r3m.learn.baselines import GridFeatures, make_grid_env as make_env, play_grid as play, split_resets
from r3m.train.sb3_baseline import Config, main

TINY = dict(timesteps=64, n_envs=2, n_steps=32, batch_size=32, n_epochs=1, net=(32,), eval_levels=(1,),
            eval_n=2, set_limit=2, tensorboard=False, progress=False)


def _params(path):
    from sb3_contrib import MaskablePPO

    return {k: v.clone() for k, v in MaskablePPO.load(path, device="cpu").policy.state_dict().items()}


@needs_eval_data
def test_tiny_run_trains_evaluates_and_is_seeded(tmp_path):
    a = main(Config(**TINY, out=str(tmp_path / "a")))
    sets = {"norvig_easy50", "norvig_top95", "norvig_hardest", "magictour_top1465", "royle17_1000"}
    assert set(a["success"]) == {"test", *sets}
    assert all(0.0 <= v <= 1.0 for v in a["success"].values())
    assert a["n"] == {"test": 2, **{name: 2 for name in sets}}
    assert a["timesteps"] >= 64 and a["seconds"] > 0
    assert all(f >= 1 for f in a["filled"].values())  # every board got at least one masked move
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["success"] == a["success"]
    b = main(Config(**TINY, out=str(tmp_path / "b")))
    assert (a["success"], a["filled"]) == (b["success"], b["filled"])
    pa, pb = _params(tmp_path / "a" / "model.zip"), _params(tmp_path / "b" / "model.zip")
    assert all(np.array_equal(pa[k].numpy(), pb[k].numpy()) for k in pa)
    main(Config(**{**TINY, "seed": 1}, out=str(tmp_path / "c")))
    pc = _params(tmp_path / "c" / "model.zip")
    assert not all(np.array_equal(pa[k].numpy(), pc[k].numpy()) for k in pa)


def test_test_split_matches_the_text_env_puzzles():
    text = TextTaskEnv("sudoku")
    for r in split_resets((1, 3), 2):
        board, _ = make_env((1,)).unwrapped.reset(seed=r["seed"], options=r["options"])
        prompt, info = text.reset(seed=r["seed"], options=r["options"])
        assert prompt.endswith("".join(str(v) if v else "." for v in board))
        assert info["difficulty"] == r["options"]["difficulty"]
    assert split_resets((2,), 3)[0]["seed"] == EVAL_SEED


@pytest.mark.parametrize("candidates", [False, True])
def test_features_masks_and_levels(candidates):
    env = make_env((2, 3), candidates=candidates)
    levels = set()
    for seed in range(6):
        obs, info = env.reset(seed=seed)
        levels.add(info["difficulty"])
        board = obs[:810].reshape(81, 10)
        assert obs.shape == (810 + 729 * candidates,) and np.all(board.sum(1) == 1)
        assert np.array_equal(env.action_masks(), env.unwrapped.action_masks())
        if candidates:
            assert np.array_equal(obs[810:], env.action_masks().astype(np.float32))
    assert levels <= {2, 3} and len(levels) == 2
    assert isinstance(env, GridFeatures)


def test_move_reward_shapes_surviving_moves_only():
    env = make_env((1,), move_reward=0.25)
    env.reset(seed=0)
    expert = env.unwrapped.expert_actions()
    rewards = [env.step(a)[1] for a in expert]
    assert rewards[:-1] == [0.25] * (len(expert) - 1) and rewards[-1] == 1.25  # solved: verdict + shaping
    obs, _ = env.reset(seed=0)
    taken = int(np.flatnonzero(obs.reshape(81, 10)[:, 0] == 0)[0])
    _, reward, terminated, _, info = env.step(taken * 9)  # a filled cell: invalid, ends with 0
    assert terminated and reward == 0.0 and not info["correct"]


class Oracle:
    """Plays the solver's digit in the first empty cell: every episode must count as solved."""

    def predict(self, obs, deterministic=True, action_masks=None):
        actions = []
        for row, mask in zip(obs.reshape(len(obs), 81, 10), action_masks):
            puzzle = "".join("." if d == 0 else str(d) for d in row.argmax(1))
            solution = tools.call("sudoku_solver", puzzle).output
            cell = puzzle.index(".")
            a = cell * 9 + int(solution[cell]) - 1
            assert mask[a]
            actions.append(a)
        return np.array(actions), None


class FirstValid:
    def predict(self, obs, deterministic=True, action_masks=None):
        return action_masks.argmax(1), None


@pytest.mark.parametrize("level", [1, 4])
def test_play_scores_an_oracle_and_a_naive_policy(level):
    resets = split_resets((level,), 3)
    solved = play(Oracle(), resets, batch_size=2)
    assert [r["correct"] for r in solved] == [True] * 3 and all(r["difficulty"] == level for r in solved)
    blanks = [make_env((1,)).unwrapped.reset(**r)[0].tolist().count(0) for r in resets]
    assert [r["filled"] for r in solved] == blanks
    naive = play(FirstValid(), resets)
    assert all(r["filled"] <= b for r, b in zip(naive, blanks))


def test_config_rejects_bad_levels():
    with pytest.raises(ValueError, match="levels"):
        Config(levels=(0,))
    with pytest.raises(ValueError, match="levels"):
        Config(levels=())
