"""The research plan end to end: Stage 0 to Stage 4, each stage from the previous one's checkpoint.

    python train/run_plan.py --quick           # tiny budgets: every stage and figure, minutes on one CPU thread
    python train/run_plan.py                   # the CPU plan
    python train/run_plan.py --gpu             # the GPU plan (cpu-small, larger budgets, --device cuda)
    python train/run_plan.py --quick --out runs/p --resume      # continue a killed plan

Each stage is a script's ``main`` called in this process, in its own folder of the run directory:
``stage0/`` (``train/imitate.py --stage 0``: the dense LM), ``imitate/`` (``--stage 1,2``: R3M at
fixed K, then halting), ``rl/`` (``train/rl_verify.py --init imitate/ckpt/stage2.pt``: RL with
tools on the plan's RL env, distillation, RL again) and ``consolidate/`` (``train/consolidate.py
--checkpoint handoff/stage3.pt --rl-episodes rl/episodes.jsonl``: the RL model, decoded with Stage
1's specs, its verified rollouts in the replay buffer). The Stage-1 families include the RL env's
and the consolidation's, so the one model reads every task.

After each run, ``plan.json`` (written atomically) holds per stage the plan's exit criterion, the
numbers measured, ``passed`` (true, false, or null where not measurable, with the reason),
``measurable``, the seconds and the run folder (``r3m.learn.plan``). ``--resume`` skips finished
runs and resumes the interrupted one with its script's own ``--resume``. At the end: ``report.md``
(the table, each stage's figures copied beside it, the warnings the runs raised) and
``metrics.json`` (the table, the stages, the provenance) for ``bench/report.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # `python train/run_plan.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3m.learn.cli import require_train_extra

require_train_extra(__name__)  # without torch: one line naming the extra, not a traceback

from r3m import envs
from r3m.learn import cli, plan
from r3m.learn.cli import check_device
from r3m.learn.evaluation import majority_rate
from r3m.learn.plots import plot_loss_curves, plot_tool_use
from r3m.learn.reporting import log, provenance, setup_logging, write_metrics
from r3m.learn.run import jsonable, start_run
from r3m.train import consolidate, imitate, rl_verify
from r3m_agent import model_from_checkpoint, save_checkpoint
from r3m_agent.checkpoint import read_checkpoint


@dataclass(frozen=True)
class Budget:
    """What each stage may spend (steps, iterations, evaluation sizes)."""

    preset: str
    families: tuple[str, ...]  # Stage 1-2 and Stage 4 (the consolidation's order); must hold the RL env's family
    levels: tuple[int, ...]  # Stage 1-3 training levels
    lm_steps: int
    lm_corpus: int
    steps: int
    halt_steps: int
    k_train: int
    eval_ks: tuple[int, ...]
    eval_n: int
    rl_iterations: int
    rl_iterations_after: int
    rl_groups: int
    distill_steps: int
    distill_minutes: float
    task_steps: int  # Stage 4: imitation steps per task
    consolidate_steps: int
    consolidate_eval_n: int
    log_every: int  # logged steps of the loss curves (short phases need a short interval to draw one)


BUDGETS: dict[str, Budget] = {
    "quick": Budget("cpu-tiny", ("memory", "arithmetic"), (1, 2), lm_steps=40, lm_corpus=300, steps=120,
                    halt_steps=30, k_train=4, eval_ks=(1, 8, 16), eval_n=16, rl_iterations=3, rl_iterations_after=1,
                    rl_groups=4, distill_steps=20, distill_minutes=0.25, task_steps=40, consolidate_steps=15,
                    consolidate_eval_n=16, log_every=5),
    "cpu": Budget("cpu-tiny", ("memory", "listops", "arithmetic"), (1, 2), lm_steps=800, lm_corpus=5000, steps=1500,
                  halt_steps=300, k_train=8, eval_ks=(1, 2, 4, 8, 16, 32), eval_n=50, rl_iterations=20,
                  rl_iterations_after=5, rl_groups=8, distill_steps=800, distill_minutes=3.0, task_steps=400,
                  consolidate_steps=100, consolidate_eval_n=50, log_every=25),
    "gpu": Budget("cpu-small", ("memory", "listops", "arithmetic"), (1, 2, 3), lm_steps=1500, lm_corpus=20000,
                  steps=5000, halt_steps=600, k_train=8, eval_ks=(1, 2, 4, 8, 16, 32), eval_n=100, rl_iterations=40,
                  rl_iterations_after=10, rl_groups=16, distill_steps=4000, distill_minutes=6.0, task_steps=1000,
                  consolidate_steps=200, consolidate_eval_n=100, log_every=25),
}


@dataclass(frozen=True)
class Config:
    """Stage 0 to Stage 4 of the research plan, each from the previous stage's checkpoint, with a report."""

    quick: bool = False
    """Tiny budgets (BUDGETS["quick"]): every stage, figure and verdict in minutes, nothing learned to speak of."""
    gpu: bool = False
    """The GPU budgets (BUDGETS["gpu"]: cpu-small, longer stages); use with --device cuda."""
    rl_env: str = "arithmetic-v0"
    """Stage 3's env (its family must be one of the budget's families, so Stage 1 trains its decoding)."""
    seed: int = 0
    """Seeds every stage."""
    device: str = "cpu"
    """cpu, cuda, cuda:N or auto (every stage)."""
    threads: int = 1
    """torch CPU threads (every stage)."""
    out: str = ""
    """Run directory (empty: runs/plan-<time>)."""
    resume: bool = False
    """Continue the plan in --out: finished stages are kept, the interrupted one resumes."""
    tensorboard: bool = True
    """Write TensorBoard logs (every stage)."""
    progress: bool = True
    """Show progress bars."""
    stop_after: int = 0
    """Testing aid: each stage's script stops (as if killed) after this many steps or iterations."""

    def __post_init__(self) -> None:
        if self.quick and self.gpu:
            raise ValueError("--quick and --gpu are two budgets; choose one")
        if self.gpu and self.device == "cpu":
            raise ValueError("--gpu is the GPU budget: pass --device cuda (or cuda:N)")
        if self.rl_env not in envs.ENV_IDS:
            raise ValueError(f"--rl-env must be a registered text env id, one of {sorted(envs.ENV_IDS)}")
        if envs.ENV_IDS[self.rl_env] not in self.budget.families:
            raise ValueError(f"--rl-env {self.rl_env}: its family is not among the plan's {self.budget.families}")
        check_device(self.device)

    @property
    def budget(self) -> Budget:
        return BUDGETS["quick" if self.quick else "gpu" if self.gpu else "cpu"]


# -- the stages' configs --------------------------------------------------------------------------
def _common(cfg: Config, out: Path, resume: bool) -> dict:
    return {"seed": cfg.seed, "device": cfg.device, "threads": cfg.threads, "out": str(out), "resume": resume,
            "tensorboard": cfg.tensorboard, "progress": cfg.progress, "stop_after": cfg.stop_after}


def stage0_config(cfg: Config, out: Path, resume: bool) -> imitate.Config:
    b = cfg.budget
    return imitate.Config(stage="0", lm_steps=b.lm_steps, lm_corpus=b.lm_corpus, lm_preset=b.preset, eval_n=b.eval_n,
                          log_every=b.log_every, **_common(cfg, out, resume))


def imitate_config(cfg: Config, out: Path, resume: bool) -> imitate.Config:
    b = cfg.budget
    return imitate.Config(stage="1,2", families=b.families, levels=b.levels, preset=b.preset, steps=b.steps,
                          halt_steps=b.halt_steps, k_train=b.k_train, eval_ks=b.eval_ks, eval_n=b.eval_n,
                          baseline=False, ckpt_every=max(50, b.steps // 5), log_every=b.log_every,
                          **_common(cfg, out, resume))


def rl_config(cfg: Config, out: Path, resume: bool, init: Path) -> rl_verify.Config:
    b = cfg.budget
    return rl_verify.Config(env=cfg.rl_env, init=str(init), k=0, levels=b.levels, iterations=b.rl_iterations,
                            iterations_after=b.rl_iterations_after, groups=b.rl_groups, eval_n=b.eval_n,
                            guard_n=max(4, b.eval_n // 2), distill_steps=b.distill_steps,
                            distill_minutes=b.distill_minutes, baselines=False, external=False,
                            **_common(cfg, out, resume))


def consolidate_config(cfg: Config, out: Path, resume: bool, checkpoint: Path, episodes: Path) -> consolidate.Config:
    b = cfg.budget
    return consolidate.Config(families=b.families, checkpoint=str(checkpoint), rl_episodes=str(episodes),
                              k_train=b.k_train, steps=b.task_steps, consolidate_steps=b.consolidate_steps,
                              eval_n=b.consolidate_eval_n, ckpt_every=max(25, b.task_steps // 2), log_every=b.log_every,
                              **_common(cfg, out, resume))


def handoff(rl_dir: Path, imitate_ckpt: Path, path: Path) -> Path:
    """Stage 3's final model (after RL again, else distillation, else RL) saved with every Stage-1
    decoding spec (the RL checkpoints list only their own family's), for Stage 4's ``--checkpoint``."""
    final = next(p for p in (rl_dir / "ckpt" / f"{n}.pt" for n in ("rl2", "distill", "rl")) if p.exists())
    specs = {d["family"]: d for d in (read_checkpoint(imitate_ckpt).get("extra") or {}).get("specs", [])}
    specs.update({d["family"]: d for d in (read_checkpoint(final).get("extra") or {}).get("specs", [])})
    save_checkpoint(path, model_from_checkpoint(final), extra={"specs": list(specs.values()), "from": str(final)})
    return path


# -- running and judging --------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One script run of the plan: its folder, how to run it, and the stages it judges."""

    name: str
    run: Callable[[Config, Path, bool], dict]
    judge: Callable[[Config, dict], dict[str, dict]]


def _chance(cfg: Config, out: Path) -> dict[str, float]:
    """Each Stage-1 family's majority-answer rate on the test instances its halting numbers read."""
    specs = imitate.task_specs(imitate_config(cfg, out, True))
    return {s.family: majority_rate(s.family, s.levels, cfg.budget.eval_n, dict(s.env)) for s in specs}


def steps_of(root: Path) -> list[Step]:
    def imitate_stages(c: Config, m: dict) -> dict:
        return {"1": plan.judge_stage1(m), "2": plan.judge_stage2(m, _chance(c, root / "imitate"))}

    def run_rl(c: Config, out: Path, resume: bool) -> dict:
        return rl_verify.main(rl_config(c, out, resume, root / "imitate" / "ckpt" / "stage2.pt"))

    def run_consolidate(c: Config, out: Path, resume: bool) -> dict:
        ckpt = root / "handoff" / "stage3.pt"
        if not ckpt.exists():
            handoff(root / "rl", root / "imitate" / "ckpt" / "stage2.pt", ckpt)
        return consolidate.main(consolidate_config(c, out, resume, ckpt, root / "rl" / "episodes.jsonl"))

    return [Step("stage0", lambda c, o, r: imitate.main(stage0_config(c, o, r)), lambda c, m: {"0": plan.judge_stage0(m)}),
            Step("imitate", lambda c, o, r: imitate.main(imitate_config(c, o, r)), imitate_stages),
            Step("rl", run_rl, lambda c, m: {"3": plan.judge_stage3(m)}),
            Step("consolidate", run_consolidate, lambda c, m: {"4": plan.judge_stage4(m)})]


def save_plan(root: Path, state: dict) -> None:
    path = root / "plan.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    os.replace(tmp, path)


# -- figures --------------------------------------------------------------------------------------
FIGURES = {"0": [("stage0", None, "loss", "Stage 0: dense LM training loss")],
           "1": [("imitate", ("stage1",), "loss", "Stage 1: R3M imitation loss"),
                 ("imitate", "accuracy_vs_k.png", "copy", "Stage 1: accuracy against K")],
           "2": [("imitate", ("stage2",), "loss", "Stage 2: halting (PonderNet) loss"),
                 ("imitate", "halting_steps.png", "copy", "Stage 2: halting steps by difficulty")],
           "3": [("rl", None, "loss", "Stage 3: RL and distillation loss"),
                 ("rl", "reward_curve.png", "copy", "Stage 3: reward and pass@1 per RL iteration"),
                 ("rl", None, "tools", "Stage 3: success with and without tools; tool precision and recall")],
           "4": [("consolidate", None, "loss", "Stage 4: loss of every task and replay phase"),
                 ("consolidate", "accuracy_vs_writes.png", "copy", "Stage 4: accuracy against episodic writes"),
                 ("consolidate", "accuracy_matrix.png", "copy", "Stage 4: accuracy matrix (forgetting) per arm")]}


def figures(root: Path, results: dict[str, dict]) -> dict[str, list[tuple[str, str]]]:
    """Each stage's figures as PNGs beside ``report.md`` (copied from its run, or drawn from its logs)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for stage, specs in FIGURES.items():
        for run, what, how, caption in specs:
            name = f"stage{stage}_" + {"copy": str(what), "loss": "loss.png", "tools": "tool_use.png"}[how]
            if how == "copy":
                if not (root / run / what).exists():
                    continue
                shutil.copyfile(root / run / what, root / name)
            elif how == "loss":
                plot_loss_curves(plan.loss_curves(root / run, what), root / name, caption)
            else:
                m = results[run]
                plot_tool_use({"start": m["success_start"], "end": m["success"]},
                              {"precision": m.get("tool_precision"), "recall": m.get("tool_recall")}, root / name)
            out.setdefault(stage, []).append((name, caption))
    return out


def main(cfg: Config) -> dict:
    t0 = time.time()
    setup_logging()
    run = start_run(cfg, "plan")
    root = run.dir
    state = json.loads((root / "plan.json").read_text()) if (root / "plan.json").exists() else {}
    state = {"config": jsonable(cfg), "budget": dataclasses.asdict(cfg.budget), "runs": state.get("runs", {}),
             "stages": state.get("stages", {}), "seconds": state.get("seconds", 0.0)}
    results = {}
    for step in steps_of(root):
        out = root / step.name
        done = state["runs"].get(step.name, {}).get("done", False)
        if done:
            results[step.name] = json.loads((out / "metrics.json").read_text())
            continue
        log.info(f"plan: {step.name} in {out}")
        t = time.time()
        m = step.run(cfg, out, (out / "config.json").exists())
        seconds = state["runs"].get(step.name, {}).get("seconds", 0.0) + time.time() - t
        state["runs"][step.name] = {"dir": str(out), "done": not m.get("interrupted"), "seconds": seconds}
        if m.get("interrupted"):
            save_plan(root, state)
            return {"interrupted": True, "run_dir": str(root), "stage": step.name}
        results[step.name] = m = {**m, "run_dir": str(out)}
        for key, verdict in step.judge(cfg, m).items():
            state["stages"][key] = {**verdict, "seconds": seconds, "run_dir": str(out)}
        save_plan(root, state)
    state["stages"] = dict(sorted(state["stages"].items()))
    state["seconds"] = sum(r["seconds"] for r in state["runs"].values())
    save_plan(root, state)
    warnings = {name: m.get("warnings") or [] for name, m in results.items()}
    figs = figures(root, results)
    (root / "report.md").write_text(plan.report_markdown(state, figs, warnings, provenance()))
    metrics = {"config": jsonable(cfg), "stages": state["stages"], "runs": state["runs"], "figures": figs,
               "warnings": warnings, "wall_seconds": state["seconds"], "seconds_this_process": time.time() - t0}
    public = write_metrics(root, metrics, plan.table(state["stages"]))
    print(f"\nreport: {root / 'report.md'}   plan: {root / 'plan.json'}")
    return public


if __name__ == "__main__":
    cli.run(main, Config)
