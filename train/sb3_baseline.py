"""MaskablePPO on ``sudoku-grid-v0``: the off-the-shelf RL baseline for Sudoku (issue 5).

    python train/sb3_baseline.py                         # default budget, a few CPU-minutes
    python train/sb3_baseline.py --timesteps 1000000 --levels 1 2 3

sb3-contrib's MaskablePPO plays Sudoku one (cell, digit) move at a time, with the env's
``action_masks()`` (empty cell, digit not yet in its row/column/box) both in training and at
evaluation, where it acts deterministically. The MLP sees the board one-hot (81 x 10) and the
candidate mask (81 x 9: the digits each cell still allows). The reward is the env's own: 1 when
the board is full and verified, 0 otherwise (``--move-reward`` adds optional shaping). It is
sparse: a masked random walk dead-ends after ~4 moves on level-1 boards and solves about 1 in
200, while always filling a cell with a single candidate solves every level-1 board; whatever
success the trained policy reaches is reported as measured.

Evaluation, after an env-step budget of training on the train split:
- ``test``: the sudoku-grid-v0 test split, ``eval_n`` puzzles per level, seeded exactly as
  ``r3m_agent.evaluation.evaluate_family`` seeds sudoku-v0, so both see the same puzzles;
- ``norvig_easy50``, ``norvig_top95`` and ``royle17_1000`` (a fixed 1,000-puzzle sample of
  royle_sudoku17, ``load_sudoku_csv(path, limit=1000, seed=0)``), played through
  ``reset(options={"instance": ...})``. These external sets are evaluation only: nothing here
  trains or tunes on them.

Writes ``--out``: ``metrics.json``, the model zip, SB3's TensorBoard logs (``tb/``) and the
evaluation scalars (``eval/`` prefix).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch

if __package__ in (None, ""):  # `python train/sb3_baseline.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3m import envs  # noqa: F401  (registers sudoku-grid-v0)
from r3m.envs.base import Instance
from r3m_agent.config import parse_config
from r3m_agent.evaluation import EVAL_SEED, SUDOKU_EVAL_DIR, load_sudoku_csv
from r3m_agent.logger import Logger, log

ENV_ID = "sudoku-grid-v0"
LEVELS = (1, 2, 3, 4, 5)
# success key -> (CSV file stem, fixed sample size or None for the whole file)
EXTERNAL = {"norvig_easy50": ("norvig_easy50", None), "norvig_top95": ("norvig_top95", None),
            "royle17_1000": ("royle_sudoku17", 1000)}


@dataclass(frozen=True)
class Config:
    """MaskablePPO baseline on sudoku-grid-v0, evaluated on the test split and external CSVs."""

    timesteps: int = 200_000
    """Env-step budget for training (moves, summed over the parallel envs)."""
    levels: tuple[int, ...] = (1, 2)
    """Training difficulty levels (each reset draws one uniformly)."""
    eval_levels: tuple[int, ...] = LEVELS
    """Test-split levels to evaluate; ``success["test"]`` is their mean (equal counts)."""
    eval_n: int = 100
    """Test puzzles per evaluated level."""
    csv_limit: int = 0
    """Testing aid: cap each external set at this many puzzles (fixed-seed sample; 0: no cap). The
    success keys keep their names; ``n`` in metrics.json records the counts actually played."""
    n_envs: int = 8
    """Parallel training envs (DummyVecEnv)."""
    n_steps: int = 256
    """Rollout length per env between updates."""
    batch_size: int = 256
    """PPO minibatch size."""
    n_epochs: int = 4
    """PPO epochs per rollout."""
    lr: float = 3e-4
    """Adam learning rate."""
    gamma: float = 0.99
    """Discount."""
    ent_coef: float = 0.01
    """Entropy bonus."""
    candidates: bool = True
    """Show the policy the candidate mask (81 x 9) beside the one-hot board."""
    move_reward: float = 0.0
    """Shaping: reward per move that keeps the board completable (0: the env's sparse reward only)."""
    net: tuple[int, ...] = (256, 256)
    """Hidden sizes of the policy and value MLPs."""
    seed: int = 0
    """Seeds the policy, the envs and the level draws: same seed, same numbers."""
    device: str = "cpu"
    """Torch device for SB3 (cpu is the fastest for an MLP policy)."""
    threads: int = 1
    """torch CPU threads (0: torch's default)."""
    out: str = ""
    """Run directory (default runs/sb3-<time>)."""
    tensorboard: bool = True
    """Write TensorBoard logs (SB3's rollout/train scalars and eval/ success)."""

    def __post_init__(self) -> None:
        bad = [lv for lv in (*self.levels, *self.eval_levels) if lv not in LEVELS]
        if bad or not self.levels:
            raise ValueError(f"levels must be non-empty and within {LEVELS}, "
                             f"got {self.levels} / {self.eval_levels}")
        if self.timesteps < 1 or self.n_envs < 1 or self.n_steps < 1 or self.eval_n < 0 or self.csv_limit < 0:
            raise ValueError("timesteps, n_envs and n_steps must be >= 1; eval_n and csv_limit >= 0")


class GridFeatures(gym.Wrapper):
    """The board one-hot [81 x 10], optionally followed by the candidate mask [81 x 9] (what
    ``action_masks`` allows, so the MLP can see which cells are forced); each reset draws a level
    from ``levels`` with its own seeded rng. ``move_reward`` (shaping, 0: the env's reward only)
    is added for every move that leaves the board completable or completes it.

    ``action_masks`` is forwarded explicitly so MaskablePPO finds it through the wrapper.
    """

    def __init__(self, env: gym.Env, levels: Sequence[int] = LEVELS, candidates: bool = False,
                 move_reward: float = 0.0):
        super().__init__(env)
        self.levels, self.candidates, self.move_reward = tuple(levels), candidates, move_reward
        self.observation_space = gym.spaces.Box(0.0, 1.0, (81 * 10 + 729 * candidates,), np.float32)
        self._rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._rng = np.random.default_rng([seed, 1])
        opts = dict(options or {})
        if "instance" not in opts and "difficulty" not in opts:
            opts["difficulty"] = int(self._rng.choice(self.levels))
        board, info = self.env.reset(seed=seed, options=opts)
        return self.features(board), info

    def step(self, action):
        board, reward, terminated, truncated, info = self.env.step(action)
        if self.move_reward and (not terminated or info.get("correct")):
            reward += self.move_reward
        return self.features(board), reward, terminated, truncated, info

    def features(self, board: np.ndarray) -> np.ndarray:
        onehot = np.zeros((81, 10), np.float32)
        onehot[np.arange(81), board] = 1.0
        if not self.candidates:
            return onehot.reshape(-1)
        return np.concatenate([onehot.reshape(-1), self.action_masks().astype(np.float32)])

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()


def make_env(levels: Sequence[int], split: str = "train", candidates: bool = False,
             move_reward: float = 0.0) -> GridFeatures:
    env = gym.make(ENV_ID, split=split, disable_env_checker=True)
    return GridFeatures(env, levels, candidates, move_reward)


def build_model(cfg: Config, run_dir: Path):
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    vec = DummyVecEnv([lambda: Monitor(make_env(cfg.levels, candidates=cfg.candidates, move_reward=cfg.move_reward))
                       for _ in range(cfg.n_envs)])
    model = MaskablePPO(
        "MlpPolicy", vec, learning_rate=cfg.lr, n_steps=cfg.n_steps, batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs, gamma=cfg.gamma, ent_coef=cfg.ent_coef, seed=cfg.seed, device=cfg.device,
        policy_kwargs={"net_arch": list(cfg.net)},
        tensorboard_log=str(run_dir / "tb") if cfg.tensorboard else None, verbose=0)
    if not cfg.tensorboard:  # SB3's default logger would otherwise make a /tmp/SB3-<time> folder per run
        from stable_baselines3.common.logger import configure
        model.set_logger(configure(str(run_dir), [""]))
    return model


def play(model, resets: Sequence[dict[str, Any]], candidates: bool = False,
         batch_size: int = 200) -> list[dict[str, Any]]:
    """Deterministic masked episodes, one per ``{"seed", "options"}``; returns each episode's result.

    Episodes run in batches: one ``predict`` call per move for every live board of the batch.
    """
    results: list[dict[str, Any]] = []
    for start in range(0, len(resets), batch_size):
        chunk = resets[start : start + batch_size]
        games = [make_env(LEVELS, split="test", candidates=candidates) for _ in chunk]
        first = [g.reset(seed=r.get("seed"), options=r.get("options")) for g, r in zip(games, chunk)]
        obs = [o for o, _ in first]
        out: list[dict[str, Any]] = [{"difficulty": int(info["difficulty"])} for _, info in first]
        live = list(range(len(games)))
        while live:
            masks = np.stack([games[i].action_masks() for i in live])
            batch = np.stack([obs[i] for i in live])
            actions, _ = model.predict(batch, deterministic=True, action_masks=masks)
            still = []
            for i, a in zip(live, actions.tolist()):
                obs[i], _, terminated, truncated, info = games[i].step(a)
                if terminated or truncated:
                    out[i].update(correct=bool(info.get("correct", False)), filled=int(info["filled"]),
                                  reason=str(info.get("reason", "")))
                else:
                    still.append(i)
            live = still
        results += out
    return results


def split_resets(levels: Sequence[int], n: int) -> list[dict[str, Any]]:
    """The test puzzles ``evaluate_family`` plays on sudoku-v0 (seeds ``EVAL_SEED + i`` per level)."""
    return [{"seed": EVAL_SEED + i, "options": {"split": "test", "difficulty": lv}}
            for lv in levels for i in range(n)]


def external_sets(csv_limit: int = 0) -> dict[str, list[Instance]]:
    sets = {}
    for key, (stem, limit) in EXTERNAL.items():
        path = SUDOKU_EVAL_DIR / f"{stem}.csv"
        if not path.exists():
            raise FileNotFoundError(f"external Sudoku set {path} is missing "
                                    "(set R3M_EVAL_DIR to the eval folder)")
        if csv_limit:
            limit = min(limit or csv_limit, csv_limit)
        sets[key] = load_sudoku_csv(path, limit=limit, seed=0)
    return sets


def evaluate(model, cfg: Config) -> dict[str, Any]:
    """success / n / by-level success / mean cells filled, per evaluation set."""
    games = {"test": play(model, split_resets(cfg.eval_levels, cfg.eval_n), cfg.candidates)}
    for key, instances in external_sets(cfg.csv_limit).items():
        resets = [{"seed": i, "options": {"instance": x}} for i, x in enumerate(instances)]
        games[key] = play(model, resets, cfg.candidates)
    summary: dict[str, Any] = {"success": {}, "n": {}, "filled": {}, "test_by_level": {}}
    for key, res in games.items():
        summary["success"][key] = _mean(r["correct"] for r in res)
        summary["n"][key] = len(res)
        summary["filled"][key] = _mean(r["filled"] for r in res)
    for lv in cfg.eval_levels:
        summary["test_by_level"][lv] = _mean(r["correct"] for r in games["test"] if r["difficulty"] == lv)
    return summary


def _mean(xs) -> float:
    xs = list(xs)
    return float(np.mean(xs)) if xs else 0.0


def main(cfg: Config) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out or f"runs/sb3-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    t0 = time.perf_counter()
    model = build_model(cfg, run_dir)
    model.learn(total_timesteps=cfg.timesteps, tb_log_name="maskable_ppo")
    train_seconds = time.perf_counter() - t0
    model.save(run_dir / "model.zip")
    log.info(f"MaskablePPO trained {model.num_timesteps} env steps in {train_seconds:.0f}s; evaluating")
    summary = evaluate(model, cfg)
    seconds = time.perf_counter() - t0
    metrics = {"algorithm": "sb3-contrib MaskablePPO", "env": ENV_ID, "config": config, **summary,
               "timesteps": int(model.num_timesteps), "seconds": seconds, "train_seconds": train_seconds,
               "eval_seconds": seconds - train_seconds, "model": str(run_dir / "model.zip")}
    logger = Logger(str(run_dir), "sb3_eval", tensorboard=cfg.tensorboard)
    logger.scalars(metrics["timesteps"], {f"eval/success/{k}": v for k, v in summary["success"].items()})
    logger.close()
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print("| set | n | success | mean cells filled |\n|---|---|---|---|")
    for key, value in summary["success"].items():
        print(f"| {key} | {summary['n'][key]} | {value:.3f} | {summary['filled'][key]:.1f} |")
    print(f"\n{metrics['timesteps']} env steps, {seconds:.0f}s; metrics: {run_dir / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    main(parse_config(Config))
