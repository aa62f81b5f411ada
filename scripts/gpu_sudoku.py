"""Sudoku without tools on one GPU in a fixed training budget, against the dense baselines.

    python scripts/gpu_sudoku.py                                   # one GPU: 9 minutes per model
    python scripts/gpu_sudoku.py --device cpu --minutes 0.2 --preset cpu-tiny --steps 50 \\
        --eval-n 5 --set-limit 5 --out runs/gpu-sudoku-smoke       # the same path on CPU, in a minute

One command, three parts, one ``--out/metrics.json``:
1. ``train/imitate.py`` trains R3M (the cells view: one position per cell with the row, column and
   box structure, the predictions fed back; deep supervision over ``--segments`` segments with the
   state carried, detached; the family's grid symmetries and digit relabelling on the fly; the
   weights' moving average) on ``--levels`` for at most ``--minutes`` of training time, then the
   parameter-matched and compute-matched dense baselines for the same minutes each, on the same
   batches; it evaluates all three on the test split of every trained level (R3M at each
   ``--eval-ks``), and R3M with per-row halting by the stable rule against its largest K.
2. ``train/evaluate.py`` plays each of the three checkpoints, without tools, on the external
   evaluation sets (``norvig_top95``, ``magictour_top1465`` and ``royle17_1000``, the fixed-seed
   1,000-puzzle sample of ``royle_sudoku17``, read from ``../shared/eval/sudoku/``): evaluation only.
3. ``metrics.json`` holds imitate's keys (``accuracy_vs_k``, ``baseline_accuracy``, ``halting``,
   ``device``, ...) and ``sets``: set -> model -> exact accuracy (R3M also by K and with halting).

The budget counts training only (evaluation is not in it); ``--steps`` is a ceiling set above what
the budget allows, so the budget decides, and the learning rate decays over the budget.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python scripts/gpu_sudoku.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3m.learn.cli import require_train_extra

require_train_extra(__name__)

from r3m.learn import cli
from r3m.learn.cli import check_device
from r3m.learn.reporting import pct, setup_logging, write_metrics
from r3m.train import evaluate, imitate

SETS = ("norvig_top95", "magictour_top1465", "royle17_1000")


@dataclass(frozen=True)
class Config:
    """Sudoku without tools in a fixed training budget per model (R3M, dense param- and
    compute-matched), evaluated on the test split and the external Sudoku sets."""

    minutes: float = 9.0
    """Training budget of each model, in minutes (evaluation not counted)."""
    device: str = "auto"
    """cuda, cuda:N, cpu or auto. On CUDA the forward runs under bf16 autocast."""
    preset: str = "gpu-sudoku"
    """R3M size (r3m_agent.PRESETS); the dense baselines are matched to it."""
    levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    """Training levels of sudoku-v0 (5: minimal puzzles that need search, as the hard sets do)."""
    steps: int = 1_000_000
    """Ceiling on the optimiser steps of each model (the budget ends training first)."""
    batch_size: int = 256
    """Puzzles per step."""
    lr: float = 1e-3
    """Peak learning rate of every model."""
    k_train: int = 16
    """Refinement steps per segment in training."""
    segments: int = 2
    """Segments per batch, the state carried (detached) from one to the next."""
    ema: float = 0.999
    """Decay of the weights' moving average each model is evaluated with."""
    eval_ks: tuple[int, ...] = (1, 8, 16, 32, 64)
    """Refinement steps R3M is evaluated at (the largest is the headline and halting's cap)."""
    eval_n: int = 200
    """Test-split puzzles per level."""
    sets: tuple[str, ...] = SETS
    """External Sudoku sets to evaluate on (registered names, r3m.envs.list_eval_sets())."""
    set_limit: int = 0
    """Puzzles per set (0: each set's registered size; royle17_1000 is a fixed 1,000 sample)."""
    baseline: bool = True
    """Train and evaluate the dense baselines (the same budget each)."""
    seed: int = 0
    """Seed of the model inits and the batches."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    out: str = "runs/gpu-sudoku"
    """Run directory: train/ (imitate's run), eval-<model>/ (evaluate's) and metrics.json."""
    resume: bool = False
    """Continue a killed run in --out (training resumes from its checkpoints; evaluation reruns)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise ValueError(f"--minutes must be > 0, got {self.minutes}")
        cli.check_at_least(self, steps=1, batch_size=1, k_train=1, segments=1, eval_n=1, set_limit=0)
        check_device(self.device)


def train_config(cfg: Config) -> imitate.Config:
    """imitate's configuration for this run (also what the CPU smoke test checks)."""
    return imitate.Config(
        stage="1", families=("sudoku",), levels=cfg.levels, preset=cfg.preset, device=cfg.device, seed=cfg.seed,
        steps=cfg.steps, minutes=cfg.minutes, batch_size=cfg.batch_size, lr=cfg.lr, k_train=cfg.k_train,
        segments=cfg.segments, ema=cfg.ema, curriculum=0.0, tool_fraction=0.0, eval_ks=cfg.eval_ks,
        eval_n=cfg.eval_n, eval_levels=cfg.levels, baseline=cfg.baseline, baseline_lrs=(cfg.lr,),
        memory_ablations=False, halt_rule="stable", threads=cfg.threads, out=str(Path(cfg.out) / "train"),
        resume=cfg.resume, progress=cfg.progress, ckpt_every=500)


def checkpoints(cfg: Config, trained: dict) -> dict[str, Path]:
    """model name -> checkpoint: R3M's stage 1 and each dense baseline at its (only) learning rate."""
    ckpt = Path(cfg.out) / "train" / "ckpt"
    found = {"r3m": ckpt / "stage1.pt"}
    for kind, b in (trained.get("baseline") or {}).items():
        found[f"dense_{kind}"] = ckpt / f"dense_{kind}_lr{b['best_lr']:g}.pt"
    missing = [str(p) for p in found.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"training left no checkpoint at {', '.join(missing)}")
    return found


def evaluate_sets(cfg: Config, name: str, path: Path) -> dict:
    """One checkpoint on the external sets, without tools (R3M at each K and halting by the stable rule)."""
    ev = evaluate.Config(checkpoint=str(path), n=0, sets=cfg.sets, set_limit=cfg.set_limit, k=cfg.eval_ks,
                         halt=name == "r3m", halt_rule="stable", tools=False, device=cfg.device, threads=cfg.threads,
                         out=str(Path(cfg.out) / f"eval-{name}"), tensorboard=False)
    return evaluate.main(ev)["sets"]


def main(cfg: Config) -> dict:
    setup_logging()
    t0 = time.perf_counter()
    trained = imitate.main(train_config(cfg))
    if trained.get("interrupted"):
        return trained
    sets: dict[str, dict] = {s: {} for s in cfg.sets}
    for name, path in checkpoints(cfg, trained).items():
        for s, r in evaluate_sets(cfg, name, path).items():
            entry = {"accuracy": r["accuracy"], "n": r["n"]}
            if "accuracy_vs_k" in r:
                entry.update(accuracy_vs_k=r["accuracy_vs_k"], at_k=max(cfg.eval_ks),
                             accuracy=r["accuracy_vs_k"][max(cfg.eval_ks)])
            if "halting" in r:
                entry["halting"] = {k: r["halting"][k] for k in ("accuracy", "avg_steps", "steps_fraction")}
            sets[s][name] = entry
    keep = ("accuracy_vs_k", "accuracy_vs_k_by_level", "baseline", "baseline_accuracy", "baseline_accuracy_harder",
            "halting", "params", "fit", "warnings", "device", "views")
    metrics = {"config": dataclasses.asdict(cfg), **{k: trained[k] for k in keep if k in trained},
               "sets": sets, "training_minutes": {p: f["seconds"] / 60 for p, f in (trained.get("fit") or {}).items()},
               "wall_seconds": time.perf_counter() - t0}
    return write_metrics(Path(cfg.out), metrics, table(cfg, metrics))


def table(cfg: Config, m: dict) -> str:
    models = ["r3m"] + [k for k in next(iter(m["sets"].values()), {}) if k != "r3m"]
    head = f"| set | R3M (K={max(cfg.eval_ks)}) | R3M halting (avg steps) | " + " | ".join(models[1:]) + " |"
    lines = [head, "|" + "---|" * (3 + len(models[1:]))]
    for fam, curve in (m.get("accuracy_vs_k") or {}).items():
        dense = [pct(b["accuracy"].get(fam)) for b in (m.get("baseline") or {}).values()]
        h = (m.get("halting") or {}).get(fam, {})
        lines.append(f"| test split, levels {','.join(map(str, cfg.levels))} | {pct(curve.get(max(cfg.eval_ks)))} | "
                     f"{pct(h.get('accuracy'))} ({h.get('avg_steps', float('nan')):.1f}) | " + " | ".join(dense) + " |")
    for s, by in m["sets"].items():
        r = by.get("r3m", {})
        h = r.get("halting") or {}
        lines.append(f"| {s} (n={r.get('n')}) | {pct(r.get('accuracy'))} | {pct(h.get('accuracy'))} "
                     f"({h.get('avg_steps', float('nan')):.1f}) | "
                     + " | ".join(pct(by.get(k, {}).get("accuracy")) for k in models[1:]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    cli.run(main, Config)
