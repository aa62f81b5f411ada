"""Evaluation through the envs: the same verifiers that give the training reward.

``evaluate_family`` plays greedy episodes on a family's test split, level by level, with a
fixed set of seeds, and summarises accuracy, refinement steps, memory writes and tool use.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from r3m import envs
from r3m.envs.base import Instance
from r3m_agent.policy import Policy
from r3m_agent.rollout import Episode, make_vec, run_episodes

EVAL_SEED = 1_000_003  # evaluation instances come from seeds far from any training stream


@dataclass
class FamilyEval:
    accuracy: float
    by_level: dict[int, float]
    steps: float
    steps_by_level: dict[int, float]
    writes: float
    tool_call_rate: float
    malformed_rate: float
    episodes: list[Episode] = field(repr=False, default_factory=list)

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "by_level": self.by_level, "avg_steps": self.steps,
                "steps_by_level": self.steps_by_level, "writes_per_sample": self.writes,
                "tool_call_rate": self.tool_call_rate, "malformed_rate": self.malformed_rate}


def env_id_of(family: str) -> str:
    ids = [i for i, f in envs.ENV_IDS.items() if f == family]
    if not ids:
        raise KeyError(f"no text env registered for family {family!r}")
    return sorted(ids)[0]


def evaluate_family(policy: Policy, family: str, *, n_per_level: int, levels: Sequence[int] | None = None,
                    split: str = "test", allow_tools: bool = False, batch_size: int = 100,
                    seed: int = EVAL_SEED, env_kwargs: dict | None = None,
                    env_id: str | None = None) -> FamilyEval:
    """Greedy episodes: ``n_per_level`` instances of each level (seeds ``seed + i``, same for every model).

    ``env_id``: play this registered env of ``family`` (default: the family's first text env).
    """
    fam = envs.make_family(family)
    levels = tuple(levels or fam.levels)
    episodes: list[Episode] = []
    kwargs = {"tools_enabled": allow_tools, **(env_kwargs or {})}
    for level in levels:
        for start in range(0, n_per_level, batch_size):
            seeds = [seed + i for i in range(start, min(start + batch_size, n_per_level))]
            vec = make_vec(env_id or env_id_of(family), len(seeds), **kwargs)
            try:
                episodes += run_episodes(policy, vec, seeds, {"split": split, "difficulty": level},
                                         allow_tools=allow_tools)
            finally:
                vec.close()
    return summarize(episodes, levels)


def summarize(episodes: Sequence[Episode], levels: Sequence[int]) -> FamilyEval:
    def mean(xs) -> float:
        xs = list(xs)
        return float(np.mean(xs)) if xs else 0.0

    by = {lvl: [e for e in episodes if e.difficulty == lvl] for lvl in levels}
    return FamilyEval(
        accuracy=mean(e.correct for e in episodes),
        by_level={lvl: mean(e.correct for e in eps) for lvl, eps in by.items()},
        steps=mean(e.steps for e in episodes),
        steps_by_level={lvl: mean(e.steps for e in eps) for lvl, eps in by.items()},
        writes=mean(e.writes for e in episodes),
        tool_call_rate=mean(e.tool_calls > 0 for e in episodes),
        malformed_rate=mean(e.malformed_calls > 0 for e in episodes),
        episodes=list(episodes),
    )


def _eval_dir() -> Path:
    """External evaluation sets: $R3M_EVAL_DIR, else ../shared/eval beside the project checkout."""
    if os.environ.get("R3M_EVAL_DIR"):
        return Path(os.environ["R3M_EVAL_DIR"])
    for candidate in (Path(__file__).resolve().parents[2] / "shared" / "eval", Path.cwd().parent / "shared" / "eval",
                      Path("/work/shared/eval")):
        if candidate.is_dir():
            return candidate
    return Path(__file__).resolve().parents[2] / "shared" / "eval"


EVAL_DIR = _eval_dir()
SUDOKU_EVAL_DIR = EVAL_DIR / "sudoku"


def load_sudoku_csv(path: str | Path, limit: int | None = None, seed: int = 0) -> list[Instance]:
    """Instances for an external Sudoku CSV (``puzzle,solution,...``): evaluation only, never training.

    With ``limit`` smaller than the file, a fixed sample of ``limit`` rows drawn with ``seed``.
    """
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if limit is not None and limit < len(rows):
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))
        rows = [rows[i] for i in keep]
    fam = envs.make_family("sudoku")
    return [fam.from_puzzle(r["puzzle"], r["solution"], key=f"{path.stem}:{i}") for i, r in enumerate(rows)]


def evaluate_instances(policy: Policy, env_id: str, instances: Sequence[Instance], *, allow_tools: bool = False,
                       batch_size: int = 100, env_kwargs: dict | None = None) -> FamilyEval:
    """Greedy episodes on given instances (e.g. ``load_sudoku_csv``), through the env and its verifier."""
    episodes: list[Episode] = []
    kwargs = {"tools_enabled": allow_tools, **(env_kwargs or {})}
    for start in range(0, len(instances), batch_size):
        chunk = instances[start : start + batch_size]
        vec = make_vec(env_id, len(chunk), **kwargs)
        try:
            episodes += run_episodes(policy, vec, list(range(start, start + len(chunk))),
                                     [{"instance": inst} for inst in chunk], allow_tools=allow_tools)
        finally:
            vec.close()
    return summarize(episodes, sorted({e.difficulty for e in episodes}))
