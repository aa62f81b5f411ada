"""Distil a checkpoint's verified tool results into it: where the policy calls, it learns to answer.

    python train/distill.py --checkpoint runs/rl-arithmetic-v0-X/ckpt/rl.pt --env arithmetic-v0
    python train/distill.py --checkpoint runs/x/ckpt/rl.pt --env arithmetic-v0 --distill-levels 1 2

On the levels where the policy calls a tool (or ``--distill-levels``), fresh train instances are
labelled by the tool each step (``--source harvest``: the policy's own verified tool answers on
``--n`` instances), each a tool-free target for its prompt; the same policy learns their answers,
and "answer without the tool" only where its own tool-free answer verifies, beside expert
episodes of its other levels (``r3m.learn.distill``). Before
and after, it is measured on the test split with and without tools on the same instances:
tool-free accuracy on the distilled levels, success with tools on every level, calls, and tool use
against measured need. ``train/rl_verify.py`` runs the same step between its two RL phases.
Writes ``--out``: ``metrics.json`` (``distill`` as in rl_verify), and ``ckpt/distill.pt``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python train/distill.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3m.learn.cli import require_train_extra

require_train_extra(__name__)  # without torch: one line naming the extra, not a traceback

from r3m import envs
from r3m.learn import cli
from r3m.learn.cli import check_device
from r3m.learn.data import TaskSpec
from r3m.learn.distill import SOURCES, Distillation, levels_to_distill, run_distillation
from r3m.learn.evaluation import tool_snapshot
from r3m.learn.policy import Policy
from r3m.learn.reporting import log, pct, setup_logging, write_metrics
from r3m.learn.run import jsonable, start_run, stream_seed
from r3m_agent import model_from_checkpoint
from r3m_agent.checkpoint import read_checkpoint


@dataclass(frozen=True)
class Config:
    """Distillation of verified tool results into a checkpoint's policy."""

    checkpoint: str = cli.required(default="")
    """Checkpoint to distil into (its extra["specs"] must include the env's family)."""
    env: str = "arithmetic-v0"
    """Registered text env id whose tool results are distilled."""
    levels: tuple[int, ...] = ()
    """Levels to measure and replay (empty: the checkpoint's training levels)."""
    distill_levels: tuple[int, ...] = ()
    """Levels to distil (empty: those where the policy calls on at least half the test instances)."""
    k: int = 0
    """Refinement steps K of the policy (0: the checkpoint's K)."""
    source: str = "fresh"
    """Targets: fresh train instances each step, labelled by the family's tool and kept where the
    answer verifies (fresh), or the policy's own verified tool answers on --n train instances (harvest)."""
    n: int = 512
    """With --source harvest: train instances the policy plays with tools for targets."""
    mastery: float = 0.9
    """With --source fresh: the distilled levels open one at a time, easiest first, the next once the
    model's own tool-free answers verify on this share of every open level (0: all at once)."""
    minutes: float = 0.0
    """Wall-clock budget in minutes (0: none; --steps ends it)."""
    patience: int = 300
    """With --source fresh: end once the newest open level's own-answer rate has not risen by 3 points
    for this many steps (0: never)."""
    steps: int = 300
    """Optimiser steps."""
    lr: float = 1e-3
    """Peak learning rate (warmup then cosine)."""
    batch: int = 32
    """Distillation targets per step."""
    replay_coef: float = 1.0
    """Weight of the expert-episode replay of the other levels."""
    replay_batch: int = 8
    """Expert episodes per replay batch."""
    tool_fraction: float = 0.5
    """Share of replayed expert episodes that call the tool."""
    call_budget: int = 4
    """Env call budget when playing with tools."""
    tool_cost: float = 0.1
    """Reward cost per call (for the cost-adjusted rewards reported)."""
    eval_n: int = 40
    """Test instances per level for the measurements."""
    seed: int = 0
    """Seeds the harvest and the batches."""
    device: str = "cpu"
    """cpu, cuda, cuda:N or auto."""
    threads: int = 1
    """torch CPU threads (0: torch's default)."""
    out: str = ""
    """Run directory (empty: runs/distill-<env>-<time>)."""
    resume: bool = False
    """Continue the run in --out from its checkpoint."""
    tensorboard: bool = True
    """Write TensorBoard logs."""
    progress: bool = True
    """Show progress bars."""
    plugin: tuple[str, ...] = ()
    """User modules to import first (families and tools the other options can then name)."""

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("--checkpoint is required")
        if self.env not in envs.ENV_IDS:
            raise ValueError(f"--env must be a registered text env id, one of {sorted(envs.ENV_IDS)}; "
                             f"got {self.env!r}")
        self.spec()  # a missing or unreadable checkpoint, or one without this family, fails here
        levels = envs.make_family(self.family).levels
        if any(lv not in levels for lv in (*self.levels, *self.distill_levels)):
            raise ValueError(f"--levels/--distill-levels: {self.family} has levels {levels}")
        cli.check_at_least(self, n=1, steps=1, batch=1)
        if self.patience < 0:
            raise ValueError(f"--patience must be >= 0, got {self.patience}")
        if not 0.0 <= self.mastery <= 1.0 or self.minutes < 0:
            raise ValueError(f"--mastery must be in [0, 1] and --minutes >= 0, got {self.mastery}, {self.minutes}")
        if self.source not in SOURCES:
            raise ValueError(f"--source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        check_device(self.device)

    @property
    def family(self) -> str:
        return envs.ENV_IDS[self.env]

    def spec(self) -> TaskSpec:
        payload = read_checkpoint(self.checkpoint)
        specs = [TaskSpec.from_dict(d) for d in (payload.get("extra") or {}).get("specs", [])]
        spec = next((s for s in specs if s.family == self.family), None)
        if spec is None:
            trained = ", ".join(s.family for s in specs) or "no family it records"
            raise ValueError(f"--checkpoint {self.checkpoint} was trained on {trained}, not on {self.family} (the "
                             f"family of --env {self.env}): pass the --env of a family it was trained on, or a "
                             f"checkpoint trained on {self.family} (train/imitate.py --families {self.family})")
        return spec


def main(cfg: Config) -> dict:
    t0 = time.time()
    setup_logging()
    run = start_run(cfg, f"distill-{cfg.env}")
    spec = cfg.spec()
    model = model_from_checkpoint(cfg.checkpoint).to(run.device).eval()
    policy = Policy(model, spec, K=cfg.k or model.cfg.K)
    levels = tuple(cfg.levels) or tuple(spec.levels)

    def measure() -> dict:
        return tool_snapshot(policy, cfg.env, levels, cfg.eval_n, call_budget=cfg.call_budget, partial_credit=False,
                             tool_cost=cfg.tool_cost, malformed_cost=0.1, seed=stream_seed(cfg.seed, "eval_sampling"))

    before = measure()
    chosen = levels_to_distill(before, cfg.distill_levels)
    log.info(f"distilling levels {list(chosen)} of {cfg.family} into {cfg.checkpoint}")
    settings = Distillation(cfg.n, cfg.steps, cfg.lr, cfg.batch, cfg.replay_coef, cfg.replay_batch, cfg.call_budget,
                            cfg.source, cfg.mastery, cfg.minutes, cfg.patience)
    numbers, after = run_distillation(run, policy, spec, cfg.env, chosen, levels, before, settings, cfg.seed, measure,
                                      cfg.tool_fraction)
    metrics = {"env": cfg.env, "family": cfg.family, "config": jsonable(cfg), "device": str(run.device),
               "distill": numbers, "phases": {"before": before, "after": after}, "seconds": time.time() - t0}
    if after is None:
        table = f"distillation of levels {numbers['levels']}: {numbers['note']}"
    else:
        table = (f"distillation of levels {numbers['levels']} ({numbers['examples']} verified tool answers): "
                 f"tool-free accuracy {pct(numbers['before'])} -> {pct(numbers['after'])}, call rate "
                 f"{pct(numbers['calls_before'])} -> {pct(numbers['calls_after'])}; success with tools "
                 f"{pct(before['with_tools'])} -> {pct(after['with_tools'])}")
    return write_metrics(run.dir, metrics, table)


if __name__ == "__main__":
    cli.run(main, Config)
