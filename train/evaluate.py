"""Evaluate a checkpoint on registered text envs and on external evaluation sets.

    python train/evaluate.py --checkpoint runs/x/ckpt/stage1.pt --k 1 2 4 8
    python train/evaluate.py --checkpoint runs/x/ckpt/stage2.pt --envs sudoku-v0 --halt true \\
        --sets norvig_top95 royle17_1000 --set-limit 200 --tools true

Any checkpoint (R3M or the dense baseline; from imitation or RL) is played greedily through
the envs, so every answer is scored by the same verifier that gives the training reward:
- on each ``--envs`` id, ``--n`` test-split instances per level (seeded as in
  ``r3m.learn.evaluation.evaluate_family``, so every model sees the same instances);
- on each ``--sets`` name (a registered external evaluation set, ``r3m.envs.list_eval_sets()``,
  read from ``$R3M_EVAL_DIR`` or ``../shared/eval``), played through its family's text env with
  ``reset(options={"instance": ...})``, optionally a fixed-seed sample of ``--set-limit``
  instances. These files are evaluation-only data: nothing reads them for training or tuning,
  and this script never writes a checkpoint.
R3M runs at each ``--k`` (and, with ``--halt``, with learned halting capped at the largest K);
a dense model has no K and is evaluated once. Decoding (fill or causal, payload width,
alignment) comes from the checkpoint's ``extra["specs"]``; a family missing there gets a
default (the family's decode mode and payload width, ``r3m.learn.data.task_spec``), noted in the output.

``--out/metrics.json`` has imitate's shape: ``accuracy_vs_k`` (family -> K -> accuracy over the
evaluated levels; R3M), ``baseline_accuracy`` (family -> accuracy; dense), ``halting`` (with
``--halt``), ``writes_per_sample``, ``tools`` and ``tool_call_rate``, plus ``sets`` (set name ->
the same numbers), ``accuracy`` (family -> headline accuracy), ``specs`` and ``notes``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

if __package__ in (None, ""):  # `python train/evaluate.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3m.learn.cli import require_train_extra

require_train_extra(__name__)  # without torch: one line naming the extra, not a traceback

import gymnasium as gym
import torch

from r3m import envs
from r3m.learn import cli
from r3m.learn.cli import UsageError, check_device
from r3m.learn.data import TaskSpec, task_spec
from r3m.learn.evaluation import (
    FamilyEval,
    env_id_of,
    evaluate_family,
    evaluate_instances,
    halting_summary,
)
from r3m.learn.io import ViewIO
from r3m.learn.plots import plot_accuracy_vs_k
from r3m.learn.policy import HALT_RULES, Policy
from r3m.learn.reporting import Logger, eval_table, log, mean, pct, setup_logging, write_metrics
from r3m.learn.run import jsonable, resolve_device
from r3m_agent.checkpoint import model_from_checkpoint, read_checkpoint
from r3m_agent.r3m import R3M


@dataclass(frozen=True)
class Config:
    """Evaluate a checkpoint on text envs (test split) and external Sudoku CSVs."""

    checkpoint: str = cli.required(default="")
    """Checkpoint file (.pt) to evaluate."""
    envs: tuple[str, ...] = ()
    """Registered text env ids (empty: the envs of the families in the checkpoint's specs)."""
    levels: tuple[int, ...] = ()
    """Levels to evaluate (empty: the checkpoint's training levels plus the next harder one;
    every level for a family without a spec). Levels a family lacks are skipped."""
    n: int = 50
    """Test-split instances per level and env (0: skip the envs, e.g. for evaluation sets only)."""
    k: tuple[int, ...] = (1, 2, 4, 8)
    """Refinement steps to evaluate R3M at (ignored for a dense model)."""
    halt: bool = False
    """Also evaluate with per-row halting (--halt-rule), capped at the largest --k (R3M only)."""
    halt_rule: str = "learned"
    """How --halt stops a row: ``learned`` (the halting head stage 2 trains) or ``stable`` (no
    trained head: once the predicted answer has held for --halt-patience steps)."""
    halt_patience: int = 2
    """The stable rule: consecutive steps the predicted answer must hold before a row stops."""
    tools: bool = False
    """Let the policy call tools (the env runs them through the tool registry)."""
    sets: tuple[str, ...] = ()
    """Registered external evaluation sets (r3m.envs.list_eval_sets(), e.g. norvig_top95)."""
    set_limit: int = 0
    """Instances per set: a fixed sample drawn with --set-seed (0: the set's registered size)."""
    set_seed: int = 0
    """Seed of the --set-limit sample."""
    babi: tuple[str, ...] = ()
    """bAbI-format story files: every question played as an episode of the family that reads bAbI
    files (``TaskFamily.file_formats``), one sentence per turn where the checkpoint trained on
    streamed episodes; accuracy by bAbI task in metrics "babi"."""
    batch_size: int = 100
    """Episodes played at once."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    out: str = ""
    """Output directory (empty: runs/evaluate-<time>)."""
    tensorboard: bool = True
    """Write the results as TensorBoard scalars under --out/tb."""
    plugin: tuple[str, ...] = ()
    """User modules to import first (a module name importable from the current folder, or a .py
    path), which register task families and tools the other options can then name."""

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("--checkpoint is required")
        if not self.k or min(self.k) < 1:
            raise ValueError(f"--k needs one or more values >= 1, got {self.k}")
        cli.check_at_least(self, n=0, set_limit=0, batch_size=1, halt_patience=1)
        if self.halt_rule not in HALT_RULES:
            raise ValueError(f"--halt-rule must be one of {', '.join(HALT_RULES)}, got {self.halt_rule!r}")
        unknown = [s for s in self.sets if s not in envs.list_eval_sets()]
        if unknown:
            raise ValueError(f"--sets {' '.join(unknown)}: not registered; registered: "
                             f"{', '.join(envs.list_eval_sets())}")
        missing = [f for f in self.babi if not Path(f).is_file()]
        if missing:
            raise ValueError(f"--babi {' '.join(missing)}: no such file")
        check_device(self.device)


@dataclass
class Target:
    """One evaluation set: a text env's test split, an external set, or files of a published format."""

    name: str
    env_id: str
    spec: TaskSpec
    levels: tuple[int, ...] = ()
    instances: list | None = None
    env_kwargs: dict = field(default_factory=dict)  # e.g. a file's stories streamed as in training
    group: Callable | None = None  # instance -> the key results are reported by (files of a format)


# -- inputs ----------------------------------------------------------------------------------
def load_model(path: str, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model and payload of a checkpoint (``CheckpointError`` says what is wrong with a bad file)."""
    payload = read_checkpoint(path, map_location=device)
    return model_from_checkpoint(path, map_location=device).eval(), payload


def saved_specs(payload: dict[str, Any]) -> dict[str, TaskSpec]:
    extra = payload.get("extra") or {}
    return {d["family"]: TaskSpec.from_dict(d) for d in extra.get("specs", [])}


def spec_for(family: str, specs: dict[str, TaskSpec], notes: list[str], model_cfg: dict) -> TaskSpec:
    if family in specs:
        return specs[family]
    levels = envs.make_family(family).levels
    spec = task_spec(family, levels)
    if not readable(spec, model_cfg):  # a model built without the family's view reads its characters
        spec = task_spec(family, levels, view="chars")
    notes.append(f"{family}: no decoding spec in the checkpoint; using the default "
                 f"(view={spec.view}, mode={spec.mode}, width={spec.width})")
    specs[family] = spec  # derived (and noted) once per family
    return spec


def readable(spec: TaskSpec, model_cfg: dict) -> bool:
    """Whether a model of config ``model_cfg`` (a checkpoint's dict) can read ``spec``'s view."""
    try:
        ViewIO.of(spec, SimpleNamespace(**{"symbols": (), "coords": (), **model_cfg}))
    except ValueError:
        return False
    return True


def family_of(env_id: str) -> str:
    if env_id in envs.ENV_IDS:
        return envs.ENV_IDS[env_id]
    if env_id in gym.registry:
        raise UsageError(f"--envs {env_id}: not a text env (numeric envs such as sudoku-grid-v0 are evaluated "
                         f"by train/sb3_baseline.py); text envs: {', '.join(sorted(envs.ENV_IDS))}")
    raise UsageError(f"--envs {env_id}: unknown env id; registered text envs: {', '.join(sorted(envs.ENV_IDS))}")


def eval_levels(cfg: Config, family: str, spec: TaskSpec, from_checkpoint: bool) -> tuple[int, ...]:
    all_levels = envs.make_family(family).levels
    if cfg.levels:
        levels = tuple(lv for lv in cfg.levels if lv in all_levels)
        if not levels:
            raise UsageError(f"--levels {' '.join(map(str, cfg.levels))}: none is a level of {family} {all_levels}")
        return levels
    if not from_checkpoint:
        return tuple(all_levels)
    harder = [lv for lv in all_levels if lv > max(spec.levels)]
    return tuple(lv for lv in all_levels if lv in spec.levels) + tuple(harder[:1])


def targets(cfg: Config, payload: dict[str, Any], notes: list[str]) -> list[Target]:
    """Every evaluation set, validated before any evaluation runs. Env sets are named by family
    (by env id when one family is asked for under several ids), external sets by their name."""
    saved = saved_specs(payload)
    specs = dict(saved)
    env_ids = (cfg.envs or tuple(env_id_of(f) for f in saved)) if cfg.n else ()
    if not env_ids and not cfg.sets and not cfg.babi:
        raise UsageError("nothing to evaluate: the checkpoint names no families (or --n is 0); "
                         "pass --envs, --sets and/or --babi")
    families = [family_of(e) for e in env_ids]
    out = []
    for env_id, fam in zip(env_ids, families):
        spec = spec_for(fam, specs, notes, payload["config"])
        name = fam if families.count(fam) == 1 else env_id
        out.append(Target(name, env_id, spec, eval_levels(cfg, fam, spec, fam in saved)))
    for name in cfg.sets:
        family = envs.eval_set(name).family
        instances = envs.load_eval_set(name, limit=cfg.set_limit or None, seed=cfg.set_seed)
        if instances is None:  # as in every script: a missing set is skipped (load_eval_set warned)
            notes.append(f"--sets {name}: skipped, its file is missing ({envs.eval_set_path(name)}; the sets are "
                         "read from $R3M_EVAL_DIR or ../shared/eval beside the checkout)")
            continue
        out.append(Target(name, env_id_of(family), spec_for(family, specs, notes, payload["config"]),
                          instances=instances))
    if cfg.babi:
        out.append(file_target(cfg, "babi", cfg.babi, specs, notes, payload["config"]))
    if not out:
        raise UsageError("nothing to evaluate: every --sets file is missing and no env was asked for (--n 0); set "
                         "R3M_EVAL_DIR to the folder of the evaluation sets, or pass --envs")
    return out


def file_target(cfg: Config, fmt: str, paths: tuple[str, ...], specs: dict[str, TaskSpec], notes: list[str],
                model_cfg: dict) -> Target:
    """The instances of files in a published format (``TaskFamily.file_formats``), played as the
    checkpoint trained on the family (one step per sentence when it streamed)."""
    readers = [f for f in envs.list_families() if fmt in envs.make_family(f).file_formats()]
    if not readers:
        raise UsageError(f"--{fmt}: no registered family reads {fmt} files")
    family = readers[0]
    load, group = envs.make_family(family).file_formats()[fmt]
    instances = [inst for p in paths for inst in load(p)]
    if not instances:
        raise UsageError(f"--{fmt} {' '.join(paths)}: no questions in the files")
    spec = spec_for(family, specs, notes, model_cfg)
    env = {"stream": True} if spec.env.get("stream") else {}
    return Target(fmt, env_id_of(family), spec, instances=instances, env_kwargs=env, group=group)


# -- evaluation ------------------------------------------------------------------------------
def play(cfg: Config, model: torch.nn.Module, target: Target, K: int | None,
         halt: bool = False) -> FamilyEval:
    spec = target.spec
    policy = Policy(model, spec, K=K, halt=halt, halt_rule=cfg.halt_rule, patience=cfg.halt_patience)
    if target.instances is not None:
        return evaluate_instances(policy, target.env_id, target.instances, allow_tools=cfg.tools,
                                  batch_size=cfg.batch_size, env_kwargs=target.env_kwargs)
    return evaluate_family(policy, spec.family, n_per_level=cfg.n, levels=target.levels,
                           allow_tools=cfg.tools, batch_size=cfg.batch_size, env_id=target.env_id)


def evaluate_target(cfg: Config, model: torch.nn.Module, target: Target) -> dict[str, Any]:
    """accuracy per K (or the dense model's one), halting, writes and tool use on one set."""
    recurrent = isinstance(model, R3M)
    curve = {K: play(cfg, model, target, K) for K in (sorted(set(cfg.k)) if recurrent else [None])}
    top = curve[max(curve)] if recurrent else curve[None]
    res: dict[str, Any] = {"n": len(top.episodes), "levels": list(target.levels) or sorted(top.by_level)}
    if recurrent:
        res["accuracy_vs_k"] = {K: ev.accuracy for K, ev in curve.items()}
        res["accuracy_vs_k_by_level"] = {K: ev.by_level for K, ev in curve.items()}
    headline = top
    if recurrent and cfg.halt:
        halted = play(cfg, model, target, max(cfg.k), halt=True)
        res["halting"] = halting_summary(halted, top, max(cfg.k),
                                         lambda K: curve[K] if K in curve else play(cfg, model, target, K))
        res["halting"].update(rule=cfg.halt_rule, **({"patience": cfg.halt_patience}
                                                     if cfg.halt_rule == "stable" else {}))
        headline = halted
    res.update(accuracy=headline.accuracy, by_level=headline.by_level, avg_steps=headline.steps,
               writes_per_sample=headline.writes, tool_call_rate=headline.tool_call_rate,
               malformed_rate=headline.malformed_rate)
    if target.group is not None:  # episodes come back in the instances' order
        groups: dict[str, list[bool]] = {}
        for inst, ep in zip(target.instances, headline.episodes):
            groups.setdefault(str(target.group(inst)), []).append(ep.correct)
        res["groups"] = {g: {"accuracy": mean(c), "n": len(c)} for g, c in sorted(groups.items())}
    return res


def collect(cfg: Config, model: torch.nn.Module, results: dict[str, dict], external: dict[str, bool]) -> dict:
    """imitate's metrics.json shape from the per-set results."""
    fams = {n: r for n, r in results.items() if not external[n]}
    m: dict[str, Any] = {"accuracy": {n: r["accuracy"] for n, r in fams.items()}}
    if isinstance(model, R3M):
        m["accuracy_vs_k"] = {n: r["accuracy_vs_k"] for n, r in fams.items()}
        m["accuracy_vs_k_by_level"] = {n: r["accuracy_vs_k_by_level"] for n, r in fams.items()}
        if cfg.halt:
            m["halting"] = {n: r["halting"] for n, r in fams.items()}
    else:
        m["baseline_accuracy"] = dict(m["accuracy"])
    m["sets"] = {n: r for n, r in results.items() if external[n] and "groups" not in r}
    m.update({n: r["groups"] for n, r in results.items() if "groups" in r})  # e.g. babi.<task>
    m["writes_per_sample"] = mean(r["writes_per_sample"] for r in results.values())
    m["writes_per_sample_by_family"] = {n: r["writes_per_sample"] for n, r in fams.items()}
    m["tools"] = {n: {"enabled": cfg.tools, "call_rate": r["tool_call_rate"],
                      "malformed_rate": r["malformed_rate"]} for n, r in results.items()}
    m["tool_call_rate"] = mean(r["tool_call_rate"] for r in results.values())
    return m


# -- reporting -------------------------------------------------------------------------------
def halting_note(payload: dict[str, Any]) -> str | None:
    """Why the halting column may read an untrained head: imitation checkpoints record their phase, and
    only stage 2 trains halting; RL and distillation checkpoints record none."""
    phase = (payload.get("extra") or {}).get("phase")
    if phase == "stage2":
        return None
    if phase:
        return (f"--halt: this checkpoint is from phase {phase}, before stage 2 trained the halting head, so the "
                "halting column measures an untrained head (train/imitate.py --stage 1,2 trains it)")
    return ("--halt: this checkpoint records no training phase (RL and distillation checkpoints do not), so "
            "whether its halting head was trained is unknown")


def headline(cfg: Config, model: torch.nn.Module) -> str:
    """What the headline accuracy is: at the largest --k, with halting capped there, or the dense model's."""
    if not isinstance(model, R3M):
        return "dense"
    rule = "" if cfg.halt_rule == "learned" else f" ({cfg.halt_rule}, patience {cfg.halt_patience})"
    return f"halting{rule}, K<={max(cfg.k)}" if cfg.halt else f"K={max(cfg.k)}"


def log_scalars(cfg: Config, run_dir: Path, results: dict[str, dict]) -> None:
    values = {}
    for name, r in results.items():
        values.update({f"eval/accuracy/{name}/K{K:02d}": a for K, a in r.get("accuracy_vs_k", {}).items()})
        values[f"eval/accuracy/{name}"] = r["accuracy"]
        values[f"tools/call_rate/{name}"] = r["tool_call_rate"]
        values[f"memory/eval_writes_per_sample/{name}"] = r["writes_per_sample"]
        if "halting" in r:
            values.update({f"halt/accuracy/{name}": r["halting"]["accuracy"],
                           f"halt/avg_steps/{name}": r["halting"]["avg_steps"]})
    logger = Logger(str(run_dir), "evaluate", tensorboard=cfg.tensorboard)
    logger.scalars(0, values)
    logger.close()


def main(cfg: Config) -> dict:
    setup_logging()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model, payload = load_model(cfg.checkpoint, device)
    notes: list[str] = []
    if not isinstance(model, R3M):
        notes.append(f"{payload['model_class']} has no refinement steps: --k is ignored"
                     + ("; --halt does not apply" if cfg.halt else ""))
    elif cfg.halt and cfg.halt_rule == "learned" and halting_note(payload):
        notes.append(halting_note(payload))
    sets = targets(cfg, payload, notes)
    for note in notes:
        log.info(note)
    run_dir = Path(cfg.out or f"runs/evaluate-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    with torch.no_grad():
        for target in sets:
            res = results[target.name] = evaluate_target(cfg, model, target)
            log.info(f"{target.name}: accuracy {pct(res['accuracy'])} ({headline(cfg, model)}, n={res['n']})")
    metrics: dict[str, Any] = {
        "checkpoint": str(cfg.checkpoint), "model_class": payload["model_class"],
        "phase": (payload.get("extra") or {}).get("phase"), "step": payload.get("step"),
        "params": sum(p.numel() for p in model.parameters()), "device": str(device),
        "config": jsonable(cfg),
        **collect(cfg, model, results, {t.name: t.instances is not None for t in sets}),
        "specs": {t.name: t.spec.as_dict() for t in sets}, "notes": notes,
        "seconds": time.perf_counter() - t0}
    log_scalars(cfg, run_dir, results)
    if metrics.get("accuracy_vs_k"):
        plot_accuracy_vs_k(metrics["accuracy_vs_k"], {}, run_dir / "accuracy_vs_k.png")
    table = eval_table(results, headline(cfg, model)) + "".join(f"\nnote: {n}" for n in notes)
    metrics = write_metrics(run_dir, metrics, table)
    print(f"\nmetrics: {run_dir / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    cli.run(main, Config)
