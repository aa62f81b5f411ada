"""MaskablePPO on ``sudoku-grid-v0``: the off-the-shelf RL baseline for Sudoku.

    python train/sb3_baseline.py                         # default budget, a few CPU-minutes
    python train/sb3_baseline.py --timesteps 1000000 --levels 1 2 3

sb3-contrib's MaskablePPO plays Sudoku one (cell, digit) move at a time with the env's action
masks (see ``r3m.learn.baselines``). Evaluation, after an env-step budget of training on the
train split:
- ``test``: the sudoku-grid-v0 test split, ``eval_n`` puzzles per level, seeded exactly as
  ``r3m.learn.evaluation.evaluate_family`` seeds sudoku-v0, so both see the same puzzles;
- the Sudoku family's registered external sets (``r3m.envs.list_eval_sets("sudoku")``: the
  Norvig and magictour collections and ``royle17_1000``, a fixed 1,000-puzzle sample of
  royle_sudoku17), played through ``reset(options={"instance": ...})``. These external sets are
  evaluation only: nothing here trains or tunes on them; a missing file is skipped with a warning.

Writes ``--out``: ``metrics.json``, the model zip, ``training_curve.png``, SB3's TensorBoard logs
(``tb/``) and the evaluation scalars (``eval/`` prefix).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python train/sb3_baseline.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3m.learn.cli import require_train_extra

require_train_extra(__name__)  # without torch: one line naming the extra, not a traceback

import torch

from r3m.learn import cli
from r3m.learn.baselines import MaskablePPOSettings, train_maskable_ppo
from r3m.learn.reporting import Logger, grid_table, setup_logging, write_metrics
from r3m.learn.run import check_out


@dataclass(frozen=True)
class Config(MaskablePPOSettings):
    """MaskablePPO baseline on sudoku-grid-v0, evaluated on the test split and external CSVs."""

    threads: int = 1
    """torch CPU threads (0: torch's default)."""
    out: str = ""
    """Run directory (empty: runs/sb3-<time>)."""
    tensorboard: bool = True
    """Write TensorBoard logs (SB3's rollout/train scalars and eval/ success)."""
    progress: bool = True
    """Show a progress bar (plain log lines when the output is not a terminal)."""


def main(cfg: Config) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    setup_logging()
    run_dir = Path(cfg.out or f"runs/sb3-{time.strftime('%Y%m%d-%H%M%S')}")
    check_out(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    result = train_maskable_ppo(cfg, run_dir, cfg.tensorboard, cfg.progress)
    metrics = {"algorithm": result.pop("algorithm"), "env": result.pop("env"), "config": config, **result}
    logger = Logger(str(run_dir), "sb3_eval", tensorboard=cfg.tensorboard)
    logger.scalars(metrics["timesteps"], {f"eval/success/{k}": v for k, v in metrics["success"].items()})
    logger.close()
    metrics = write_metrics(run_dir, metrics, grid_table(metrics))
    print(f"\n{metrics['timesteps']} env steps, {metrics['seconds']:.0f}s; metrics: {run_dir / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    cli.run(main, Config)
