"""Staged imitation training and evaluation of R3M (the research plan's Stages 0-2).

    python train/imitate.py                    # prefix parity: stage 1, the dense baselines, stage 2
    python train/imitate.py --stage 1 --baseline false              # R3M alone
    python train/imitate.py --families arithmetic --levels 1 2 --preset cpu-small --steps 5000
    python train/imitate.py --stage 0          # dense character LM: non-degenerate generation
    python train/imitate.py --preset gpu-sudoku --families sudoku --device cuda

Each family is read through the view it declares (``r3m.envs.views``; ``--char-view`` for the
character view). Stage 1 trains R3M at a fixed K on expert demonstrations (with and without tool calls) with
the progressive loss of Deep Thinking (Bansal et al. 2022): each batch runs a random number of
refinement steps K' <= k_train and supervises the readouts of the last ``grad_steps`` of them,
so every exit is trained and later steps learn to improve (or keep) earlier answers. It then
measures accuracy against K on each family's test split, through the envs' verifiers, on
the trained levels, the next harder one, and where the family has them the levels 2x and 4x the
size of the largest trained (length generalisation, judged at a K that grows with the size).
Stage 2 switches on the PonderNet halting head (Banino et al. 2021) and its compute penalty
and compares accuracy with halting against fixed K, also on a mix of trained and 2x sizes
where a fixed K sized for the largest wastes steps. Every run also trains dense Transformers,
matched in parameters and in compute, on the same batches and the same view, and reports them
on the same test sets.
Everything lands in ``--out``: checkpoints (``--resume`` continues a killed run to the same
result), TensorBoard logs, ``metrics.json``, plots, and the warnings the plan asks for.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python train/imitate.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3m.learn.cli import require_train_extra

require_train_extra(__name__)  # without torch: one line naming the extra, not a traceback

import torch

from r3m import envs, tools
from r3m.learn import cli, lm, signals, stages
from r3m.learn.cli import check_device
from r3m.learn.data import IGNORE, TaskSpec, task_spec
from r3m.learn.io import ViewIO, with_views
from r3m.learn.evaluation import (
    accuracy_on,
    answer_set_rate,
    best_fixed_k,
    eval_levels,
    evaluate_family,
    gold_answers,
    halting_summary,
    majority_rate,
    read_support_mass,
    spearman,
    write_stats,
)
from r3m.learn.loop import Interrupted, train_phase
from r3m.learn.losses import LossOut
from r3m.learn.plots import plot_accuracy_vs_k, plot_accuracy_vs_writes, plot_halting_steps
from r3m.learn.policy import HALT_RULES, Policy
from r3m.learn.reporting import imitation_table, log, mean, setup_logging, write_metrics
from r3m.learn.run import Run, autocast, barrier, jsonable, seed_everything, start_run
from r3m_agent import PRESETS, R3M, DenseTransformer, dense_compute_like, dense_config_like


@dataclass(frozen=True)
class Config:
    """Staged imitation training of R3M (Stages 0-2)."""

    stage: str = "1,2"
    """Stages to run, comma separated: 0 (dense LM sanity), 1 (R3M, fixed K), 2 (adaptive halting)."""
    families: tuple[str, ...] = ("prefix",)
    """Task families to train and evaluate on (registered names)."""
    levels: tuple[int, ...] = ()
    """Training levels, each a level of every family (empty: each family's first three); the test
    split is evaluated on these and on the next, harder level."""
    preset: str = "cpu-micro"
    """R3M size (r3m_agent.PRESETS); the dense baselines are matched to it (parameters, compute)."""
    mem_slots: int = 0
    """Episodic memory slots (0: the preset's); set --write-budget beside it."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto. On CUDA the forward runs under bf16 autocast."""
    seed: int = 0
    """Seeds the model init and every batch (batches are a pure function of seed and step)."""
    steps: int = 1500
    """Stage-1 optimiser steps (the dense baselines get the same number on the same batches)."""
    halt_steps: int = 300
    """Stage-2 optimiser steps (continuing from stage 1)."""
    batch_size: int = 32
    """Demonstrations per step, in turns (one family per step, round robin); with --stream, in
    episodes (a streamed episode has a turn per sentence or chunk)."""
    lr: float = 2e-3
    """Peak AdamW learning rate (warmup then cosine to 10%)."""
    warmup: int = 100
    """Warmup steps."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices."""
    grad_clip: float = 1.0
    """Gradient-norm clipping."""
    max_bad_steps: int = 20
    """Stop the run after this many optimiser steps in a row with a NaN/inf loss or gradient (each
    such step is skipped; the last checkpoint stays as it was)."""
    k_train: int = 8
    """Largest number of refinement steps used in stage-1 training."""
    grad_steps: int = 2
    """Most refinement steps per batch that keep gradients (the earlier ones run without)."""
    segments: int = 1
    """Deep supervision (TRM): each batch is trained for this many optimiser steps in a row, each a
    segment of --k-train steps continuing the last one's state, detached (1: Deep Thinking's
    progressive schedule, a random K per batch). Evaluate at K up to segments x k-train."""
    ema: float = 0.0
    """Decay of the exponential moving average of the weights each phase ends with and is evaluated
    with (TRM uses 0.999; 0: the last weights)."""
    augment: bool = True
    """Train on the families' on-the-fly validity-preserving augmentation where they declare one
    (sudoku's grid symmetries and digit relabelling); false: their stored instances as they are
    (the ablation; evaluation is unchanged)."""
    curriculum: float = 0.5
    """Level curriculum: the share of stage-1 steps over which the levels unlock, easiest first
    (0: every level from the start). The dense baselines get the same batches."""
    tool_fraction: float = 0.25
    """Fraction of demonstrations that use the family's tool (where one applies)."""
    write_penalty: float = 1.0
    """Weight of the episodic memory's write budget: mean over episodes of max(0, soft writes -
    --write-budget) (writing more than the memory holds only evicts earlier writes)."""
    drift_penalty: float = 1.0
    """Weight of the state's mean squared change in the last supervised step (0: off): pushes the
    refinement toward a fixed point once the answer is found, so accuracy holds beyond the trained K
    instead of falling ("overthinking")."""
    write_budget: float = 8.0
    """Writes per episode before the write-budget penalty applies (the cpu-tiny memory's 8 slots)."""
    write_cost: float = 0.0
    """Price of each (soft) memory write, so a write must lower the task loss to stay open (with the
    learned gate only; off by default: on the memory family it shut the gate before reads learned)."""
    tbptt: int = 0
    """Backpropagation through the memory across an episode's turns, in windows of this many turns
    (0: the whole episode; the carry is detached between windows)."""
    lambda_p: float = 0.3
    """Stage 2: PonderNet geometric prior parameter (expected steps 1/lambda_p)."""
    beta: float = 0.05
    """Stage 2: weight of KL(p || Geometric(lambda_p)), the compute penalty (larger: fewer steps, at
    the risk of stopping before the answer is found)."""
    halt_threshold: float = 0.5
    """Stage 2: cumulative halting probability at which inference stops."""
    halt_rule: str = "learned"
    """How halting stops a row at evaluation: ``learned`` (the halting head stage 2 trains, at
    --halt-threshold) or ``stable`` (no trained head: once its predicted answer has held for
    --halt-patience steps). With ``stable`` and no stage 2, the halting evaluation runs after stage 1."""
    halt_patience: int = 2
    """The stable rule: consecutive steps the predicted answer must hold before a row stops."""
    halt_k: int = 0
    """Stage 2: refinement steps the halting distribution spans in training (0: 2 x --k-train, room
    for the longest trained instances); at evaluation halting may run up to the largest --eval-ks."""
    char_view: bool = False
    """Read every family through its character view (the task-view ablation: characters in, answer
    slots out), instead of the view the family declares first."""
    view: str = ""
    """Read every family through this view of its declared ones (an ablation, e.g. sudoku's
    ``cells-all``: the cells without the peer attention); empty: each family's first."""
    eval_n: int = 100
    """Test instances per level and family."""
    eval_levels: tuple[int, ...] = ()
    """Levels to evaluate (empty: the training levels plus the next harder one); a family's missing
    levels are skipped."""
    stream: bool = False
    """Streamed episodes for the families that stream (memory: one sentence per turn, then the
    question; prefix: the bits in chunks, the running parity after each): the past is only in the
    memory. Adds the memory measurements (metrics.json "memory")."""
    distractors: float = 0.0
    """With --stream: sentences that carry no world information per story sentence (memory stories)."""
    memory_ablations: bool = True
    """With --stream: also evaluate the trained model with memory reads off, and train a model without
    memory on the same batches."""
    write_thresholds: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
    """With --stream: write-gate thresholds swept at evaluation (accuracy against writes per sample)."""
    eval_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """K values for the accuracy-vs-K curve. Instances 2x and 4x the longest trained are judged at
    2x and 4x K=16 (a K that grows with the length)."""
    baseline: bool = True
    """Train and evaluate the parameter-matched dense baseline."""
    baseline_lrs: tuple[float, ...] = (1e-3,)
    """Peak learning rates tried for each dense baseline (same batches and steps as R3M); the one with
    the best accuracy on held-out train-split instances is reported on the test split. Default: the
    rate a sweep of 1e-3, 2e-3 and 4e-3 chose for both baselines of the default run
    (results/imitate-baseline-lrs-cpu; ``python bench/reproduce.py --only imitate-baseline-lrs-cpu``)."""
    baseline_compute: bool = True
    """Also train the compute-matched dense baseline (as many layers as R3M applies blocks at k_train)
    beside the parameter-matched one."""
    baseline_steps: int = 0
    """Optimiser steps of each dense baseline, on the first of R3M's batches (0: --steps). A
    compute-matched baseline backpropagates through every layer and R3M through --grad-steps steps,
    so equal steps are not equal time; the run records each phase's seconds beside its accuracy."""
    minutes: float = 0.0
    """Wall-clock budget of each training phase in minutes (0: none): stage 1 and each dense baseline
    end at their steps or when their training time reaches this, whichever comes first, and the
    learning rate decays over whichever is nearer (a fixed-time comparison, e.g. the GPU script's
    9 minutes; set --steps above what the budget allows). Evaluation is not counted."""
    lm_steps: int = 1500
    """Stage-0 optimiser steps."""
    lm_preset: str = "cpu-tiny"
    """Stage 0: the dense LM is matched to this R3M preset's parameter count."""
    lm_corpus: int = 20000
    """Stage 0: instruct dialogues and generated sentences in the corpus (each), beside stdlib docstrings."""
    out: str = ""
    """Run directory (empty: runs/imitate-<time>)."""
    resume: bool = False
    """Continue the run in --out from its checkpoints."""
    ckpt_every: int = 200
    """Checkpoint interval (steps)."""
    log_every: int = 25
    """TensorBoard interval (steps)."""
    tensorboard: bool = True
    """Write TensorBoard logs."""
    progress: bool = True
    """Show progress bars."""
    threads: int = 1
    """torch CPU threads (0: torch's default). The CPU presets are small enough that one thread is
    about as fast as two, and two threads on a busy small machine fight each other and run far slower."""
    plugin: tuple[str, ...] = ()
    """User modules to import first (a module name importable from the current folder, or a .py
    path), which register task families and tools the other options can then name."""
    stop_after: int = 0
    """Testing aid: stop (as if killed) after this many optimiser steps in this process."""

    def __post_init__(self) -> None:
        stages = self.stages
        if not stages or not set(stages) <= {0, 1, 2}:
            raise ValueError(f"--stage takes 0, 1, 2 or a list like 1,2; got {self.stage!r}")
        if 2 in stages and 1 not in stages and not self.resume:
            raise ValueError("stage 2 continues a stage-1 model: run --stage 1,2 (or --resume a stage-1 run)")
        if self.preset not in PRESETS or self.lm_preset not in PRESETS:
            raise ValueError(f"unknown preset; choose from {sorted(PRESETS)}")
        cli.check_at_least(self, k_train=1, grad_steps=1, segments=1, baseline_steps=0, minutes=0)
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"--ema must be in [0, 1), got {self.ema}")
        if self.segments > 1 and self.stream:
            raise ValueError("--segments continues single-turn episodes; a --stream episode carries memory instead")
        for name, value, stage in (("steps", self.steps, 1), ("halt-steps", self.halt_steps, 2),
                                   ("lm-steps", self.lm_steps, 0)):
            if stage in stages and value < 1:
                raise ValueError(f"--{name} must be >= 1 when stage {stage} runs, got {value}")
        if self.mem_slots < 0:
            raise ValueError(f"--mem-slots must be >= 0 (0: the preset's), got {self.mem_slots}")
        if not 0.0 <= self.curriculum < 1.0:
            raise ValueError(f"--curriculum is a share of the stage-1 steps in [0, 1), got {self.curriculum}")
        cli.check_at_least(self, batch_size=1, eval_n=1, halt_k=0, halt_patience=1)
        if self.halt_rule not in HALT_RULES:
            raise ValueError(f"--halt-rule must be one of {', '.join(HALT_RULES)}, got {self.halt_rule!r}")
        if not self.eval_ks or min(self.eval_ks) < 1:
            raise ValueError(f"--eval-ks needs one or more values >= 1, got {' '.join(map(str, self.eval_ks)) or 'none'}")
        check_families(self.families, self.levels)
        unknown = [lv for lv in self.eval_levels
                   if not any(lv in envs.make_family(f).levels for f in self.families)]
        if unknown:
            raise ValueError(f"--eval-levels {' '.join(map(str, unknown))}: not a level of any of {', '.join(self.families)}")
        check_device(self.device)

    @property
    def stages(self) -> tuple[int, ...]:
        try:
            return tuple(sorted({int(s) for s in self.stage.split(",") if s.strip()}))
        except ValueError:
            return ()


# -- set-up ----------------------------------------------------------------------------------
def check_families(families: tuple[str, ...], levels: tuple[int, ...]) -> None:
    known = envs.list_families()
    unknown = [f for f in families if f not in known]
    if unknown or not families:
        raise ValueError(f"--families {' '.join(unknown) or '(none)'}: not registered; registered: {', '.join(known)}")
    for fam in families:
        bad = [lv for lv in levels if lv not in envs.make_family(fam).levels]
        if bad:
            raise ValueError(f"--levels {' '.join(map(str, bad))}: not levels of {fam} "
                             f"{envs.make_family(fam).levels}")


def task_specs(cfg: Config) -> list[TaskSpec]:
    specs = []
    for fam in cfg.families:
        levels = tuple(lv for lv in cfg.levels if lv in envs.make_family(fam).levels) or envs.make_family(fam).levels[:3]
        env = {"stream": True, **({"distractors": cfg.distractors} if envs.make_family(fam).max_distractor_rate else {})} \
            if cfg.stream else {}
        extra = tuple(lv for lv in cfg.eval_levels if lv in envs.make_family(fam).levels)
        view = "chars" if cfg.char_view else (cfg.view or None)
        spec = task_spec(fam, levels, eval_levels(fam, levels) + scaled_levels(fam, levels) + extra, view, **env)
        if not cfg.augment and envs.make_family(fam).augmentation:
            spec = dataclasses.replace(spec, train_env={"augment": False})
        specs.append(spec)
    return specs


def scaled_levels(family: str, levels: tuple[int, ...]) -> tuple[int, ...]:
    """The family's levels 2x and 4x the size of the largest trained (length generalisation)."""
    fam = envs.make_family(family)
    return tuple(lv for lv in (fam.scaled_level(levels, 2), fam.scaled_level(levels, 4)) if lv is not None)


# -- phases ----------------------------------------------------------------------------------
def evaluate_models(cfg: Config, specs: list[TaskSpec], model: torch.nn.Module, *, Ks, halt: bool = False,
                    allow_tools: bool = False, split: str = "test") -> dict:
    """family -> K -> FamilyEval (K = None for the dense model); ``split="train"``: held-out instances
    of the train split (a validation set: other seeds than any training draw)."""
    results: dict[str, dict] = {}
    for spec in specs:
        results[spec.family] = {}
        for K in Ks:
            policy = Policy(model, spec, K=K, halt=halt, threshold=cfg.halt_threshold)
            results[spec.family][K] = evaluate_family(policy, spec.family, n_per_level=cfg.eval_n,
                                                      levels=spec_eval_levels(cfg, spec),
                                                      allow_tools=allow_tools, split=split, env_kwargs=spec.env)
    return results


def imitation(cfg: Config, **overrides) -> stages.Imitation:
    """How the imitation phases train (streamed episodes are batched by episode, not by turn)."""
    return stages.Imitation.of(cfg, per_episode=cfg.stream, **overrides)


def r3m_config(cfg: Config, specs: list[TaskSpec]):
    """The preset at ``k_train``, with a tool-head class for every registered tool (user tools too),
    able to read every spec's view."""
    slots = {"mem_slots": cfg.mem_slots} if cfg.mem_slots else {}
    base = dataclasses.replace(PRESETS[cfg.preset], K=cfg.k_train, tool_names=tuple(tools.list_tools()), **slots)
    return with_views(base, specs)


def spec_eval_levels(cfg: Config, spec: TaskSpec) -> tuple[int, ...]:
    """--eval-levels the family has, else the training levels, the next harder one and the levels
    2x and 4x the largest trained (where the family has them)."""
    levels = envs.make_family(spec.family).levels
    chosen = tuple(lv for lv in cfg.eval_levels if lv in levels)
    default = eval_levels(spec.family, spec.levels) + scaled_levels(spec.family, spec.levels)
    return chosen or tuple(dict.fromkeys(default))


def harder_levels(cfg: Config, spec: TaskSpec) -> list[int]:
    """The next harder level than any trained (extrapolation), where it is evaluated."""
    nxt = [lv for lv in eval_levels(spec.family, spec.levels) if lv not in spec.levels]
    return [lv for lv in nxt if lv in spec_eval_levels(cfg, spec)]


K_JUDGED = 16  # the K at which Stage 1's exit criterion judges trained instances (2x instances: 2 x K_JUDGED)


def length_generalization(cfg: Config, spec: TaskSpec, curve: dict) -> dict | None:
    """Accuracy on the levels 2x and 4x the size of the largest trained, at K = 2x and 4x
    ``K_JUDGED`` (a K that grows with the length; the largest evaluated K where that is missing)."""
    fam = envs.make_family(spec.family)
    out = {"train_levels": list(spec.levels), "train_max_len": fam.size(spec.levels)}
    for factor in (2, 4):
        level = fam.scaled_level(spec.levels, factor)
        if level is None or level not in spec_eval_levels(cfg, spec):
            return None if factor == 2 else out
        k = factor * K_JUDGED if factor * K_JUDGED in curve else max(curve)
        out.update({f"level_{factor}x": level, f"k_{factor}x": k, f"acc_{factor}x": curve[k].by_level.get(level),
                    f"curve_{factor}x": {K: ev.by_level.get(level) for K, ev in curve.items()}})
    return out


def run_stage1(cfg: Config, run: Run, specs: list[TaskSpec], metrics: dict) -> R3M:
    seed_everything(cfg.seed)
    model = R3M(r3m_config(cfg, specs)).to(run.device)
    state = stages.stage1(run, "stage1", model, specs, imitation(cfg), cfg.seed)
    _record_fit(metrics, "stage1", state)
    if not run.main:  # under torchrun, rank 0 evaluates and writes
        return model
    with torch.no_grad():
        curve = evaluate_models(cfg, specs, model, Ks=cfg.eval_ks)
        with_tools = evaluate_models(cfg, specs, model, Ks=(cfg.k_train,), allow_tools=True)
    by_family = {s.family: s for s in specs}
    metrics["accuracy_vs_k"] = {f: {K: accuracy_on(ev, by_family[f].levels) for K, ev in c.items()}
                                for f, c in curve.items()}
    metrics["accuracy_vs_k_harder"] = {f: {K: accuracy_on(ev, harder_levels(cfg, by_family[f])) for K, ev in c.items()}
                                       for f, c in curve.items() if harder_levels(cfg, by_family[f])}
    metrics["accuracy_vs_k_by_level"] = {f: {K: ev.by_level for K, ev in c.items()} for f, c in curve.items()}
    metrics["views"] = {s.family: ViewIO.of(s, model.cfg).describe() for s in specs}
    metrics["length_generalization"] = {s.family: lg for s in specs
                                        if (lg := length_generalization(cfg, s, curve[s.family])) is not None}
    metrics["exit_criterion"] = {}
    for f, c in metrics["accuracy_vs_k"].items():
        lg = metrics["length_generalization"].get(f)
        longer = lg["curve_2x"] if lg else metrics["accuracy_vs_k_harder"].get(f)
        metrics["exit_criterion"][f] = signals.exit_criterion(
            c, longer, k_high=K_JUDGED, longer_k=lg["k_2x"] if lg else K_JUDGED, longer_name="2x" if lg else "longer")
    at_k = {f: c[cfg.k_train] if cfg.k_train in c else c[max(c)] for f, c in curve.items()}
    metrics["writes_per_sample"] = mean(ev.writes for ev in at_k.values())
    metrics["writes_per_sample_by_family"] = {f: ev.writes for f, ev in at_k.items()}
    metrics["tools"] = {f: {"accuracy_with_tools": accuracy_on(c[cfg.k_train], by_family[f].levels),
                            "accuracy_without_tools": metrics["accuracy_vs_k"][f].get(cfg.k_train),
                            "call_rate": c[cfg.k_train].tool_call_rate,
                            "malformed_rate": c[cfg.k_train].malformed_rate}
                        for f, c in with_tools.items()}
    metrics["_write_rate"] = state_write_rate(run, "stage1")
    metrics["_write_gate"] = model.cfg.write_gate
    _log_eval(run, "stage1", metrics, cfg.steps)
    return model


def run_baselines(cfg: Config, run: Run, specs: list[TaskSpec], r3m_cfg, metrics: dict) -> None:
    """The dense baselines on the same batches and steps: parameter-matched, and compute-matched
    (as many block applications per sample as R3M at k_train), each at every --baseline-lrs rate."""
    kinds = {"param_matched": dense_config_like(r3m_cfg, 1.0)}
    if cfg.baseline_compute:
        kinds["compute_matched"] = dense_compute_like(r3m_cfg, cfg.k_train)
    report: dict = {}
    for kind, dense_cfg in kinds.items():
        tried = {}
        for lr in cfg.baseline_lrs:
            seed_everything(cfg.seed)
            model = DenseTransformer(dense_cfg).to(run.device)
            phase = f"dense_{kind}_lr{lr:g}"
            state = stages.dense(run, phase, model, specs, imitation(cfg, lr=lr, steps=cfg.baseline_steps or cfg.steps),
                                 cfg.seed)
            _record_fit(metrics, phase, state)
            if not run.main:
                continue
            with torch.no_grad():
                val = evaluate_models(cfg, specs, model, Ks=(None,), split="train")
                test = evaluate_models(cfg, specs, model, Ks=(None,))
            tried[lr] = {"validation": mean(accuracy_on(val[s.family][None], s.levels) for s in specs),
                         "test": {s.family: accuracy_on(test[s.family][None], s.levels) for s in specs},
                         "test_harder": {s.family: accuracy_on(test[s.family][None], harder_levels(cfg, s))
                                         for s in specs},
                         "by_level": {s.family: test[s.family][None].by_level for s in specs}}
        if run.main:
            best = max(tried, key=lambda lr: (tried[lr]["validation"], -lr))
            report[kind] = {"params": sum(p.numel() for p in model.parameters()), "layers": dense_cfg.n_layers,
                            "views": {s.family: s.view for s in specs},
                            "block_applications": dense_cfg.n_layers, "best_lr": best,
                            "accuracy": tried[best]["test"], "accuracy_harder": tried[best]["test_harder"],
                            "accuracy_by_level": tried[best]["by_level"],
                            "lrs": {f"{lr:g}": t for lr, t in tried.items()}, "config": dense_cfg.to_dict()}
    if run.main:
        metrics["baseline"] = report
        metrics["baseline_accuracy"] = report["param_matched"]["accuracy"]
        metrics["baseline_accuracy_harder"] = report["param_matched"]["accuracy_harder"]


ANSWER_SET_N = 256  # instances per level whose answers make the family's answer set
READ_MASS_N = 50  # streamed episodes per level played one at a time for the read-attention diagnostic


def run_memory(cfg: Config, run: Run, specs: list[TaskSpec], model: R3M, metrics: dict) -> None:
    """The episodic memory on streamed episodes: accuracy by level and on longer streams than any
    trained; the ablations (reads off; a model trained without memory on the same batches); where
    the writes go (fact and distractor sentences, and the supporting facts the answer rests on);
    where the question's reads look (``read_support_mass``: the read weight on the supporting
    facts' slots against an even spread); accuracy against writes per sample as the write
    threshold rises."""
    streamed = [s for s in specs if s.env.get("stream")]
    blind = None
    if cfg.memory_ablations:
        seed_everything(cfg.seed)
        blind = R3M(dataclasses.replace(r3m_config(cfg, specs), memory=False)).to(run.device)
        state = stages.stage1(run, "stage1_no_memory", blind, specs, imitation(cfg), cfg.seed)
        _record_fit(metrics, "stage1_no_memory", state)
    if not run.main or not streamed:
        return
    report, sweeps = {}, {}
    with torch.no_grad():
        for spec in streamed:
            levels = spec_eval_levels(cfg, spec)

            def play(net=model, **kw):
                policy = Policy(net, spec, K=cfg.k_train, **kw)
                return evaluate_family(policy, spec.family, n_per_level=cfg.eval_n, levels=levels,
                                       env_kwargs=spec.env)

            ev = play()
            stats = write_stats(ev.episodes)
            res = {"accuracy": accuracy_on(ev, spec.levels), "accuracy_by_level": ev.by_level,
                   "accuracy_longer": accuracy_on(ev, harder_levels(cfg, spec)),
                   "chance": majority_rate(spec.family, spec.levels, cfg.eval_n, spec.env), **stats,
                   "write_rate_fact": stats["write_rate_by_kind"].get("fact"),
                   "write_rate_distractor": stats["write_rate_by_kind"].get("distractor")}
            # the answers the family gives (on many training instances of these levels, so a small
            # evaluation set does not leave out an answer the model may rightly give)
            answers = gold_answers(spec.family, levels, ANSWER_SET_N, spec.env, split="train")
            res["read_support_mass"] = read_support_mass(Policy(model, spec, K=cfg.k_train), spec.family, levels,
                                                         min(cfg.eval_n, READ_MASS_N), spec.env)
            res["valid_answers"] = answer_set_rate(ev.episodes, answers)
            if blind is not None:
                off = play(read_memory=False)
                res["no_memory"] = accuracy_on(off, spec.levels)
                res["no_memory_valid_answers"] = answer_set_rate(off.episodes, answers)
                res["no_memory_trained"] = accuracy_on(play(blind), spec.levels)
            sweep = []
            for threshold in cfg.write_thresholds:
                swept = play(write_threshold=threshold)
                sweep.append({"threshold": threshold, "writes_per_sample": write_stats(swept.episodes)["writes_per_sample"],
                              "accuracy": accuracy_on(swept, spec.levels)})
            res["write_sweep"] = sweeps[spec.family] = sweep
            report[spec.family] = res
    metrics["memory"] = report
    plot_accuracy_vs_writes(sweeps, run.dir / "accuracy_vs_writes.png")


def halt_k(cfg: Config) -> int:
    return cfg.halt_k or 2 * cfg.k_train


def halting_on_mix(cfg: Config, spec: TaskSpec, halted, play_fixed) -> dict:
    """Halting where a fixed K wastes steps: a test mix of the trained levels and the level 2x the
    largest trained (the trained levels alone where the family has none), against the best fixed K
    that spends at least as many steps per turn as halting (``evaluation.best_fixed_k``)."""
    fam = envs.make_family(spec.family)
    mix = tuple(spec.levels) + tuple(lv for lv in (fam.scaled_level(spec.levels, 2),) if lv is not None)
    episodes = [e for e in halted.episodes if e.difficulty in mix]
    acc, steps = mean(e.correct for e in episodes), mean(e.steps for e in episodes)
    curve = {K: accuracy_on(play_fixed(K, mix), mix) for K in cfg.eval_ks}
    best_k, best_acc = best_fixed_k(curve, steps)
    return {"mix_levels": list(mix), "mix_accuracy": acc, "mix_avg_steps": steps, "mix_fixed_curve": curve,
            "best_fixed_k": best_k, "best_fixed_acc": best_acc,
            "mix_spearman_steps_level": spearman([e.steps for e in episodes], [e.difficulty for e in episodes]),
            "earns_its_place": best_acc is not None and acc >= best_acc - 0.01}


def run_stage2(cfg: Config, run: Run, specs: list[TaskSpec], model: R3M, metrics: dict) -> None:
    state = stages.stage2(run, "stage2", model, specs,
                          imitation(cfg, steps=cfg.halt_steps, curriculum=0.0, k_train=halt_k(cfg)), cfg.seed,
                          lambda_p=cfg.lambda_p, beta=cfg.beta)
    _record_fit(metrics, "stage2", state)
    if run.main:
        evaluate_halting(cfg, run, specs, model, metrics, "stage2", cfg.steps + cfg.halt_steps)


def evaluate_halting(cfg: Config, run: Run, specs: list[TaskSpec], model: R3M, metrics: dict, phase: str,
                     step: int) -> None:
    """Per-row halting (``--halt-rule``) against the same model at a fixed K on the same test
    instances: accuracy, steps spent (by level) and wall time, also on a mix of sizes."""
    halting, steps_by_level = {}, {}
    k_max = max(max(cfg.eval_ks), halt_k(cfg))  # halting may run as long as any fixed K evaluated
    with torch.no_grad():
        for spec in specs:
            def play(K: int, halt: bool = False, spec: TaskSpec = spec, levels=None):
                policy = Policy(model, spec, K=K, halt=halt, threshold=cfg.halt_threshold, halt_rule=cfg.halt_rule,
                                patience=cfg.halt_patience)
                return evaluate_family(policy, spec.family, n_per_level=cfg.eval_n,
                                       levels=levels or spec_eval_levels(cfg, spec), env_kwargs=spec.env)

            t0 = time.perf_counter()  # the same instances, batch size and process: wall time with and without
            halted = play(k_max, halt=True)
            t1 = time.perf_counter()
            fixed = play(k_max)
            t2 = time.perf_counter()
            summary = halting_summary(halted, fixed, k_max, play, levels=spec.levels)
            summary.update(wall_halt_s=t1 - t0, wall_fixed_s=t2 - t1, speedup=(t2 - t1) / max(t1 - t0, 1e-9))
            summary.update(halting_on_mix(cfg, spec, halted, lambda K, lv, p=play: p(K, levels=lv)))
            summary.update(rule=cfg.halt_rule, **({"patience": cfg.halt_patience} if cfg.halt_rule == "stable" else {}))
            halting[spec.family] = summary
            steps_by_level[spec.family] = {lv: [e.steps for e in halted.episodes if e.difficulty == lv]
                                           for lv in halted.by_level}
    metrics["halting"] = halting
    metrics["_halt_steps"] = steps_by_level
    _log_eval(run, phase, metrics, step)


def run_stage0(cfg: Config, run: Run, metrics: dict) -> None:
    seed_everything(cfg.seed)
    dense_cfg = dense_config_like(PRESETS[cfg.lm_preset], 1.0)
    model = DenseTransformer(dense_cfg).to(run.device)
    batches = lm.LMBatches(lm.corpus(cfg.seed, cfg.lm_corpus, cfg.lm_corpus), block=128, batch_size=cfg.batch_size,
                           seed=cfg.seed, rank=run.rank)

    def loss_fn(step: int) -> LossOut:
        x, y = (t.to(run.device) for t in batches.get(step))
        with autocast(run.device):
            logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        return LossOut(loss, float(loss.detach()), 0.0, [], None, None)

    settings = stages.Imitation.of(cfg, steps=cfg.lm_steps)
    state = train_phase(run, "stage0", model, settings.fit_spec(run), loss_fn, groups=("prelude", "core", "readout"),
                        weight_decay=cfg.weight_decay, extra={"specs": [], "phase": "stage0"})
    _record_fit(metrics, "stage0", state)
    if not run.main:
        return
    completions = lm.sample_completions(model, lm.PROMPTS * 5, max_new_tokens=80, temperature=0.8, top_k=20,
                                        seed=cfg.seed)
    stats = lm.generation_stats(completions)
    instruct = evaluate_family(Policy(model, task_spec("instruct", (1, 2))), "instruct", n_per_level=cfg.eval_n,
                               levels=(1, 2))
    metrics["stage0"] = {
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": mean(state.losses[-50:]), "loss_curve": state.losses[:: max(1, len(state.losses) // 50)],
        "generation": stats, "non_degenerate": lm.non_degenerate(stats),
        "instruct_accuracy": instruct.accuracy,
        "samples": [{"prompt": p, "completion": lm.TOK.decode(c)} for p, c in zip(lm.PROMPTS, completions)],
    }


# -- reporting -------------------------------------------------------------------------------
def _record_fit(metrics: dict, phase: str, state) -> None:
    finite = [g for g in state.grad_norms if math.isfinite(g)]
    metrics.setdefault("fit", {})[phase] = {
        "steps": state.step, "seconds": state.seconds, "final_loss": mean(state.losses[-50:]),
        "grad_norm": {"mean": mean(finite), "max": max(finite, default=0.0), **signals.spike_stats(finite)},
        "nan_steps": state.nan_steps,
    }
    metrics.setdefault("_grad_norms", {})[phase] = list(state.grad_norms)
    metrics.setdefault("_losses", {})[phase] = list(state.losses)
    metrics["nan_steps"] = metrics.get("nan_steps", 0) + state.nan_steps


def state_write_rate(run: Run, phase: str) -> float:
    """Mean write-gate rate over the phase's logged steps (from its scalars file)."""
    path = run.dir / f"scalars_{phase}.jsonl"
    if not path.exists():
        return 0.0
    rates = [json.loads(line).get("memory/write_rate") for line in path.read_text().splitlines()]
    rates = [r for r in rates if r is not None]
    return mean(rates[len(rates) // 2 :])


def _log_eval(run: Run, phase: str, metrics: dict, step: int) -> None:
    """The evaluation's scalars, at the last training step of the phase (so curves line up)."""
    if not run.main:
        return
    logger = run.logger(phase + "_eval", purge_step=step)
    values = {}
    for fam, curve in metrics.get("accuracy_vs_k", {}).items():
        values.update({f"eval/accuracy/{fam}/K{K:02d}": acc for K, acc in curve.items()})
    for fam, h in metrics.get("halting", {}).items():
        values.update({f"halt/accuracy/{fam}": h["accuracy"], f"halt/avg_steps/{fam}": h["avg_steps"]})
    for fam, t in metrics.get("tools", {}).items():
        values[f"tools/call_rate/{fam}"] = t["call_rate"]
    if "writes_per_sample" in metrics:
        values["memory/eval_writes_per_sample"] = metrics["writes_per_sample"]
    logger.scalars(step, values)
    logger.close()


def curriculum_unlocks(cfg: Config) -> tuple[int, ...]:
    """The stage-1 steps at which the level curriculum unlocks a level (``DemoSource.levels_at``)."""
    span = round(cfg.curriculum * cfg.steps)
    n = max((len(s.levels) for s in task_specs(cfg)), default=1)
    return tuple(math.ceil(i * span / n) for i in range(1, n)) if span else ()


def warnings_for(cfg: Config, metrics: dict) -> list[dict]:
    found = []
    if "accuracy_vs_k" in metrics:
        found += signals.k_curve(metrics["accuracy_vs_k"], 1, cfg.k_train)
        if metrics.get("_write_gate"):  # FIFO (Stage 1) writes every turn by design
            found += signals.write_spam(metrics.get("_write_rate", 0.0))
    for fam, by_level in metrics.get("_halt_steps", {}).items():
        found += signals.halting_collapse([s for steps in by_level.values() for s in steps])
    for phase, norms in metrics.get("_grad_norms", {}).items():  # each model against its own scale
        restarts = () if phase.startswith(("stage0", "stage2")) else curriculum_unlocks(cfg)
        found += signals.instability(norms, metrics["fit"][phase]["nan_steps"], losses=metrics["_losses"][phase],
                                     grad_clip=cfg.grad_clip, phase=phase, restarts=restarts)
    for s in found:
        log.warning(f"WARNING [{s.name}] {s.message}. Remedy: {s.remedy}")
    return [s.as_dict() for s in found]


def main(cfg: Config) -> dict:
    t0 = time.perf_counter()
    setup_logging()
    run = start_run(cfg, "imitate", stop_after=cfg.stop_after)
    log.info(f"run directory {run.dir} on {run.device}")
    metrics: dict = {"config": jsonable(cfg), "device": str(run.device)}
    try:
        if 0 in cfg.stages:
            run_stage0(cfg, run, metrics)
        if 1 in cfg.stages:
            specs = task_specs(cfg)
            model = run_stage1(cfg, run, specs, metrics)
            metrics["params"] = sum(p.numel() for p in model.parameters())
            if cfg.stream:
                run_memory(cfg, run, specs, model, metrics)
            if cfg.baseline:
                run_baselines(cfg, run, specs, model.cfg, metrics)
            if 2 in cfg.stages:
                run_stage2(cfg, run, specs, model, metrics)
            elif cfg.halt_rule == "stable" and run.main:  # a rule that needs no trained head
                evaluate_halting(cfg, run, specs, model, metrics, "stage1", cfg.steps)
            barrier()
    except Interrupted as exc:
        log.info(str(exc))
        return {"interrupted": True, "run_dir": str(run.dir)}
    if not run.main:
        return {"rank": run.rank}
    metrics["warnings"] = warnings_for(cfg, metrics)
    norms = [g for phase in metrics.pop("_grad_norms", {}).values() for g in phase if math.isfinite(g)]
    metrics["grad_norm"] = {"mean": mean(norms), "max": max(norms, default=0.0)}
    metrics["wall_seconds"] = time.perf_counter() - t0  # this process, start to finish (a resumed run: its part)
    return finish(cfg, run, metrics)


def finish(cfg: Config, run: Run, metrics: dict) -> dict:
    if "accuracy_vs_k" in metrics:
        plot_accuracy_vs_k(metrics["accuracy_vs_k"], metrics.get("baseline_accuracy", {}),
                           run.dir / "accuracy_vs_k.png", harder=metrics.get("accuracy_vs_k_harder"))
    if "_halt_steps" in metrics:
        plot_halting_steps(metrics["_halt_steps"], run.dir / "halting_steps.png")
    public = write_metrics(run.dir, metrics, imitation_table(metrics, cfg.eval_ks))
    print(f"\nmetrics: {run.dir / 'metrics.json'}   tensorboard --logdir {run.dir / 'tb'}")
    return public


if __name__ == "__main__":
    cli.run(main, Config)
