"""Baselines that every R3M number is compared with, trained on the same tasks and budgets.

- a dense Transformer trained by imitation without tools (``dense_baseline``);
- MaskablePPO (sb3-contrib) on a family's numeric env (``sudoku-grid-v0``), one (cell, digit)
  move at a time with the env's ``action_masks()`` both in training and at evaluation, where it
  acts deterministically. The MLP sees the board one-hot (81 x 10) and the candidate mask
  (81 x 9: the digits each cell still allows). The reward is the env's own: 1 when the board is
  full and verified, 0 otherwise (``move_reward`` adds optional shaping). It is sparse: a masked
  random walk dead-ends after ~4 moves on level-1 boards and solves about 1 in 200, while always
  filling a cell with a single candidate solves every level-1 board; whatever success the
  trained policy reaches is reported as measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch

from r3m import envs  # noqa: F401  (registers sudoku-grid-v0)
from r3m.learn.cli import check_at_least, check_device
from r3m.learn.data import DemoSource, TaskSpec
from r3m.learn.evaluation import EVAL_SEED, evaluate_family, evaluate_instances, external_sets
from r3m.learn.loop import FitSpec, train_phase
from r3m.learn.losses import LossOut, imitation_loss
from r3m.learn.policy import Policy
from r3m.learn.reporting import log, mean
from r3m.learn.run import Run
from r3m_agent import DenseTransformer, dense_config_like

LEVELS = (1, 2, 3, 4, 5)


# -- the dense Transformer ---------------------------------------------------------------------------
def run_baselines(cfg, run: Run, r3m_cfg, spec: TaskSpec, budget: int,
                  levels: Sequence[int]) -> tuple[dict, dict]:
    """(name -> set -> success, name -> details such as parameters and the budget it got)."""
    success, details = {}, {}
    name = "dense_2x_no_tools"
    success[name], details[name] = dense_baseline(cfg, run, r3m_cfg, spec, budget, levels)
    if envs.make_family(cfg.family).numeric_env:  # the family offers a numeric env for off-the-shelf RL
        success["maskable_ppo"], details["maskable_ppo"] = maskable_ppo(cfg, run, budget, levels)
    return success, details


def dense_baseline(cfg, run: Run, r3m_cfg, spec: TaskSpec, budget: int,
                   levels: Sequence[int]) -> tuple[dict, dict]:
    """A dense Transformer with 2x R3M's parameters, imitation without tools on ``budget``
    demonstrations, at each of ``cfg.dense_lrs``; the rate with the best accuracy on held-out train
    instances is reported on the test split (and the external sets)."""
    dense_cfg = dense_config_like(r3m_cfg, 2.0)
    steps = max(1, math.ceil(budget / cfg.warm_batch))
    tried, models = {}, {}
    for lr in cfg.dense_lrs:
        torch.manual_seed(cfg.seed)
        model = DenseTransformer(dense_cfg).to(run.device)
        source = DemoSource([spec], dense_cfg.tool_names, cfg.seed, stream="baseline_demos", tool_fraction=0.0,
                            turns=cfg.warm_batch)

        def loss_fn(step: int, model=model, source=source) -> LossOut:
            s, episodes = source.get(step)
            return imitation_loss(model, s, episodes, K=None, grad_steps=None)

        fit_spec = FitSpec(steps, lr, warmup=max(1, min(100, steps // 5)), ckpt_every=max(1, steps // 4),
                           samples_per_step=cfg.warm_batch)
        train_phase(run, f"dense2x_lr{lr:g}", model, fit_spec, loss_fn, weight_decay=0.01,
                    extra={"specs": [spec.as_dict()]})
        policy = Policy(model, spec)
        with torch.no_grad():
            tried[lr] = evaluate_family(policy, cfg.family, n_per_level=cfg.eval_n, levels=levels, split="train",
                                        env_id=cfg.env).accuracy
        models[lr] = policy
    best = max(tried, key=lambda lr: (tried[lr], -lr))
    policy = models[best]
    with torch.no_grad():
        res = {"test": split_eval(cfg, policy, levels, False).accuracy}
        if cfg.external:
            for key, instances in external_sets(cfg.family).items():
                res[key] = evaluate_instances(policy, cfg.env, instances, allow_tools=False).accuracy
    details = {"params": sum(p.numel() for p in policy.model.parameters()), "demonstrations": steps * cfg.warm_batch,
               "steps": steps, "best_lr": best, "validation_accuracy_by_lr": {f"{lr:g}": a for lr, a in tried.items()}}
    return res, details


def split_eval(cfg, policy: Policy, levels: Sequence[int], allow_tools: bool):
    return evaluate_family(policy, cfg.family, n_per_level=cfg.eval_n, levels=levels, allow_tools=allow_tools,
                           env_kwargs={"call_budget": cfg.call_budget}, env_id=cfg.env)


def maskable_ppo(cfg, run: Run, budget: int, levels: Sequence[int]) -> tuple[dict, dict]:
    try:
        import sb3_contrib  # noqa: F401
    except ImportError as exc:
        log.warning(f"MaskablePPO baseline unavailable: {exc}")
        return {}, {"error": str(exc)}
    settings = MaskablePPOSettings(family=cfg.family, timesteps=cfg.sb3_timesteps or budget, levels=tuple(levels),
                                   eval_levels=tuple(levels), eval_n=cfg.eval_n, seed=cfg.seed, external=cfg.external)
    run_dir = run.dir / "sb3"
    run_dir.mkdir(parents=True, exist_ok=True)
    res = train_maskable_ppo(settings, run_dir, cfg.tensorboard, cfg.progress)
    return dict(res["success"]), {"timesteps": int(res["timesteps"]), "train_levels": list(settings.levels),
                                  "seconds": res["train_seconds"]}


# -- MaskablePPO on sudoku-grid-v0 -------------------------------------------------------------------
@dataclass(frozen=True)
class MaskablePPOSettings:
    """MaskablePPO on sudoku-grid-v0, evaluated on the test split and the external Sudoku sets."""

    family: str = "sudoku"
    """A family whose numeric env (TaskFamily.numeric_env) is a 9x9 board with action_masks() (the
    features below are a board one-hot and the candidate mask)."""
    timesteps: int = 200_000
    """Env-step budget for training (moves, summed over the parallel envs)."""
    levels: tuple[int, ...] = (1, 2)
    """Training difficulty levels (each reset draws one uniformly)."""
    eval_levels: tuple[int, ...] = LEVELS
    """Test-split levels to evaluate; ``success["test"]`` is their mean (equal counts)."""
    eval_n: int = 100
    """Test puzzles per evaluated level."""
    external: bool = True
    """Also evaluate on the family's registered external sets (r3m.envs.list_eval_sets; a missing file
    is skipped with a warning)."""
    set_limit: int = 0
    """Cap each external set at this many puzzles (fixed-seed sample; 0: each set's registered size);
    ``n`` in metrics.json records the counts actually played."""
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

    def __post_init__(self) -> None:
        bad = [lv for lv in (*self.levels, *self.eval_levels) if lv not in LEVELS]
        if bad or not self.levels:
            raise ValueError(f"--levels/--eval-levels must be non-empty and within {LEVELS}, "
                             f"got {self.levels} / {self.eval_levels}")
        check_at_least(self, timesteps=1, n_envs=1, n_steps=1, eval_n=0, set_limit=0)
        check_device(self.device)
        if self.family not in envs.list_families() or not envs.make_family(self.family).numeric_env:
            raise ValueError(f"--family {self.family}: not a registered family with a numeric env")


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


def make_grid_env(levels: Sequence[int], split: str = "train", candidates: bool = False,
                  move_reward: float = 0.0, family: str = "sudoku") -> GridFeatures:
    """``family``'s numeric env with the MLP's features (``GridFeatures``)."""
    env = gym.make(envs.make_family(family).numeric_env, split=split, disable_env_checker=True)
    return GridFeatures(env, levels, candidates, move_reward)


def build_maskable_ppo(cfg: "MaskablePPOSettings", run_dir: Path, tensorboard: bool):
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    def make() -> Monitor:
        return Monitor(make_grid_env(cfg.levels, "train", cfg.candidates, cfg.move_reward, cfg.family))

    vec = DummyVecEnv([make for _ in range(cfg.n_envs)])
    model = MaskablePPO(
        "MlpPolicy", vec, learning_rate=cfg.lr, n_steps=cfg.n_steps, batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs, gamma=cfg.gamma, ent_coef=cfg.ent_coef, seed=cfg.seed, device=cfg.device,
        policy_kwargs={"net_arch": list(cfg.net)},
        tensorboard_log=str(run_dir / "tb") if tensorboard else None, verbose=0)
    if not tensorboard:  # SB3's default logger would otherwise make a /tmp/SB3-<time> folder per run
        from stable_baselines3.common.logger import configure
        model.set_logger(configure(str(run_dir), [""]))
    return model


def play_grid(model, resets: Sequence[dict[str, Any]], candidates: bool = False, batch_size: int = 200,
              family: str = "sudoku") -> list[dict[str, Any]]:
    """Deterministic masked episodes, one per ``{"seed", "options"}``; returns each episode's result.

    Episodes run in batches: one ``predict`` call per move for every live board of the batch.
    """
    results: list[dict[str, Any]] = []
    for start in range(0, len(resets), batch_size):
        chunk = resets[start : start + batch_size]
        games = [make_grid_env(LEVELS, split="test", candidates=candidates, family=family) for _ in chunk]
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


def evaluate_grid(model, cfg: "MaskablePPOSettings") -> dict[str, Any]:
    """success / n / by-level success / mean cells filled, per evaluation set."""
    tests = split_resets(cfg.eval_levels, cfg.eval_n)
    games = {"test": play_grid(model, tests, cfg.candidates, family=cfg.family)}
    for key, instances in (external_sets(cfg.family, cfg.set_limit or None) if cfg.external else {}).items():
        resets = [{"seed": i, "options": {"instance": x}} for i, x in enumerate(instances)]
        games[key] = play_grid(model, resets, cfg.candidates, family=cfg.family)
    summary: dict[str, Any] = {"success": {}, "n": {}, "filled": {}, "test_by_level": {}}
    for key, res in games.items():
        summary["success"][key] = mean(r["correct"] for r in res)
        summary["n"][key] = len(res)
        summary["filled"][key] = mean(r["filled"] for r in res)
    for lv in cfg.eval_levels:
        summary["test_by_level"][lv] = mean(r["correct"] for r in games["test"] if r["difficulty"] == lv)
    return summary


def _progress_callback(total: int, progress: bool):
    """An SB3 callback: a progress bar on a terminal (plain log lines otherwise) and the outcome of
    every finished training episode, for the training curve."""
    from stable_baselines3.common.callbacks import BaseCallback

    from r3m.learn.loop import progress_bar
    from r3m.learn.run import Run

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            run = Run(Path("."), torch.device("cpu"), progress=progress)
            self.bar = progress_bar(run, total, 0, "maskable_ppo")
            self.episodes: list[tuple[int, float]] = []  # (env steps so far, episode reward)
            self.next_line = total // 10

        def _on_step(self) -> bool:
            n = self.training_env.num_envs
            self.bar.update(n)
            for info in self.locals.get("infos", []):
                if "episode" in info:
                    self.episodes.append((self.num_timesteps, float(info["episode"]["r"])))
            if progress and self.bar.disable and self.num_timesteps >= self.next_line:
                recent = [r for _, r in self.episodes[-200:]]
                log.info(f"maskable_ppo: {self.num_timesteps}/{total} env steps, mean episode reward "
                         f"{mean(recent):.3f} over the last {len(recent)} episodes")
                self.next_line += max(1, total // 10)
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    return Progress()


def train_maskable_ppo(cfg: MaskablePPOSettings, run_dir: Path, tensorboard: bool = True,
                       progress: bool = True) -> dict[str, Any]:
    """Train for ``cfg.timesteps`` env steps, save the model and evaluate it; returns the metrics
    and writes ``training_curve.png`` (episode reward against env steps)."""
    import time

    from r3m.learn.plots import plot_training_curve

    t0 = time.perf_counter()
    model = build_maskable_ppo(cfg, run_dir, tensorboard)
    callback = _progress_callback(cfg.timesteps, progress)
    model.learn(total_timesteps=cfg.timesteps, tb_log_name="maskable_ppo", callback=callback)
    train_seconds = time.perf_counter() - t0
    plot_training_curve(callback.episodes, run_dir / "training_curve.png",
                        "MaskablePPO on " + envs.make_family(cfg.family).numeric_env)
    model.save(run_dir / "model.zip")
    log.info(f"MaskablePPO trained {model.num_timesteps} env steps in {train_seconds:.0f}s; evaluating")
    summary = evaluate_grid(model, cfg)
    seconds = time.perf_counter() - t0
    env_id = envs.make_family(cfg.family).numeric_env
    return {"algorithm": "sb3-contrib MaskablePPO", "env": env_id, **summary,
            "timesteps": int(model.num_timesteps), "seconds": seconds, "train_seconds": train_seconds,
            "eval_seconds": seconds - train_seconds, "model": str(run_dir / "model.zip")}
