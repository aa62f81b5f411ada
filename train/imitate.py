"""Staged imitation training and evaluation of R3M (the research plan's Stages 0-2).

    python train/imitate.py                    # stage 1 then 2 + the dense baseline, ~10 CPU-minutes
    python train/imitate.py --stage 0          # dense character LM: non-degenerate generation
    python train/imitate.py --preset gpu-sudoku --families sudoku --device cuda

Stage 1 trains R3M at a fixed K on expert demonstrations (with and without tool calls) with
the progressive loss of Deep Thinking (Bansal et al. 2022): each batch runs a random number of
refinement steps K' <= k_train and supervises the readouts of the last ``grad_steps`` of them,
so every exit is trained and later steps learn to improve (or keep) earlier answers. It then
measures accuracy against K on each family's test split, through the envs' verifiers.
Stage 2 switches on the PonderNet halting head (Banino et al. 2021) and its compute penalty
and compares accuracy with halting against fixed K. Every run also trains a dense Transformer
with the same parameter count on the same batches and reports it on the same test sets.
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

import torch

if __package__ in (None, ""):  # `python train/imitate.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3m import tools
from r3m.envs import make_family
from r3m_agent import PRESETS, DenseTransformer, R3M, STAGE_GROUPS, dense_config_like, ponder_loss
from r3m_agent import signals
from r3m_agent.config import parse_config
from r3m_agent.data import payload_width
from r3m_agent.evaluation import evaluate_family
from r3m_agent.fit import FitSpec, Interrupted, Run, fit
from r3m_agent.logger import log
from r3m_agent.plots import plot_accuracy_vs_k, plot_halting_steps
from r3m_agent.policy import Policy
from r3m_agent.training import (
    BatchSource, LossOut, TaskSpec, imitation_loss, imitation_turns, make_optimizer, per_sample_token_loss,
    autocast, ddp_info, resolve_device, seed_everything, step_rng,
)


@dataclass(frozen=True)
class Config:
    """Staged imitation training of R3M (Stages 0-2)."""

    stage: str = "1,2"
    """Stages to run, comma separated: 0 (dense LM sanity), 1 (R3M, fixed K), 2 (adaptive halting)."""
    families: tuple[str, ...] = ("prefix",)
    """Task families to train and evaluate on (registered names)."""
    levels: tuple[int, ...] = (1, 2, 3)
    """Training levels; the test split is evaluated on these and on the next, harder level."""
    preset: str = "cpu-tiny"
    """R3M size (r3m_agent.PRESETS); the dense baseline is matched to its parameter count."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto. On CUDA the forward runs under bf16 autocast."""
    seed: int = 0
    """Seeds the model init and every batch (batches are a pure function of seed and step)."""
    steps: int = 3000
    """Stage-1 optimiser steps (the dense baseline gets the same number on the same batches)."""
    halt_steps: int = 300
    """Stage-2 optimiser steps (continuing from stage 1)."""
    batch_size: int = 32
    """Demonstrations per step (one family per step, round robin)."""
    lr: float = 4e-3
    """Peak AdamW learning rate (warmup then cosine to 10%)."""
    warmup: int = 100
    """Warmup steps."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices."""
    grad_clip: float = 1.0
    """Gradient-norm clipping."""
    k_train: int = 8
    """Largest number of refinement steps used in training."""
    grad_steps: int = 2
    """Most refinement steps per batch that keep gradients (the earlier ones run without)."""
    loss: str = "progressive"
    """progressive (Deep Thinking: random steps without, then with gradients; the last readout
    supervised) or all (k_train steps, every readout supervised)."""
    tool_fraction: float = 0.25
    """Fraction of demonstrations that use the family's tool (where one applies)."""
    write_penalty: float = 0.0
    """Weight of the episodic-memory write-budget penalty (0: off)."""
    drift_penalty: float = 1.0
    """Weight of the state's mean squared change in the last supervised step (0: off): pushes the
    refinement toward a fixed point once the answer is found. Measured on prefix (seed 0): without
    it accuracy fell from 65% at K=8 to 51% at K=16 and 44% at K=32; with 1.0, 100% at 8, 16 and 32,
    and the one-pass-to-iteration transition came at ~600 steps instead of ~1700."""
    write_budget: float = 4.0
    """Expected writes per call allowed before the penalty applies."""
    lambda_p: float = 0.3
    """Stage 2: PonderNet geometric prior parameter (expected steps 1/lambda_p)."""
    beta: float = 0.05
    """Stage 2: weight of KL(p || Geometric(lambda_p)), the compute penalty (on prefix, 0.01 kept
    fixed-K accuracy with 69% of the steps, 0.05 with 57%)."""
    halt_threshold: float = 0.5
    """Stage 2: cumulative halting probability at which inference stops."""
    eval_n: int = 100
    """Test instances per level and family."""
    eval_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """K values for the accuracy-vs-K curve."""
    baseline: bool = True
    """Train and evaluate the parameter-matched dense baseline."""
    baseline_lr: float = 2e-3
    """The dense baseline's peak learning rate (same batches and steps as R3M). Each model gets a
    rate it trains stably at: in the default prefix run the dense model reached 99% at 2e-3 but
    stalled at 9% with R3M's 4e-3, so sharing R3M's rate would understate the baseline."""
    lm_steps: int = 1500
    """Stage-0 optimiser steps."""
    lm_preset: str = "cpu-tiny"
    """Stage 0: the dense LM is matched to this R3M preset's parameter count."""
    lm_corpus: int = 20000
    """Stage 0: instruct dialogues and generated sentences in the corpus (each), beside stdlib docstrings."""
    out: str = ""
    """Run directory (default runs/imitate-<time>)."""
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
    about as fast as two, and two threads on a busy 2-core machine were measured 40x slower."""
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
        if self.loss not in ("progressive", "all"):
            raise ValueError(f"--loss must be progressive or all, got {self.loss!r}")
        if self.k_train < 1 or not 1 <= self.grad_steps:
            raise ValueError("need k_train >= 1 and grad_steps >= 1")

    @property
    def stages(self) -> tuple[int, ...]:
        try:
            return tuple(sorted({int(s) for s in self.stage.split(",") if s.strip()}))
        except ValueError:
            return ()


# -- set-up ----------------------------------------------------------------------------------
def make_run(cfg: Config) -> Run:
    """The run folder and device; under torchrun, also the process group (one process per GPU)."""
    rank, local_rank, world = ddp_info()
    device = resolve_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    stamp = time.strftime('%Y%m%d-%H%M%S')
    if world > 1 and not cfg.out:
        raise ValueError("under torchrun pass --out (every process must write to the same run folder)")
    out = Path(cfg.out or f"runs/imitate-{stamp}")
    saved = out / "config.json"
    if saved.exists() and not cfg.resume:
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if cfg.resume and saved.exists():
        old = json.loads(saved.read_text())
        changed = {k: (old.get(k), v) for k, v in _jsonable(cfg).items()
                   if k not in ("resume", "stop_after", "progress", "threads") and old.get(k) != v}
        if changed:
            raise ValueError(f"--resume with a different config than {saved}: {changed}")
    _barrier()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(_jsonable(cfg), indent=2))
    _barrier()
    return Run(out, device, cfg.tensorboard, cfg.progress, cfg.stop_after, rank=rank, world=world)


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _jsonable(cfg: Config) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def task_specs(cfg: Config) -> list[TaskSpec]:
    specs = []
    for fam in cfg.families:
        levels = _train_levels(cfg, fam)
        mode = "causal" if fam == "instruct" else "fill"
        width = payload_width(fam, tuple(sorted(set(levels) | set(_eval_levels(cfg, fam)))), cfg.tool_fraction > 0)
        specs.append(TaskSpec(fam, mode, width, levels))
    return specs


def _train_levels(cfg: Config, family: str) -> tuple[int, ...]:
    levels = tuple(lv for lv in cfg.levels if lv in make_family(family).levels)
    return levels or make_family(family).levels[:1]


def _eval_levels(cfg: Config, family: str) -> tuple[int, ...]:
    """The training levels plus the next harder one (extrapolation), where the family has one."""
    all_levels, train = make_family(family).levels, _train_levels(cfg, family)
    harder = [lv for lv in all_levels if lv > max(train)]
    return train + tuple(harder[:1])


def _autocast(run: Run):
    return autocast(run.device, enabled=True)


# -- losses ----------------------------------------------------------------------------------
def stage1_loss(cfg: Config, run: Run, model: R3M, source: BatchSource):
    def loss_fn(step: int) -> LossOut:
        spec, episodes = source.get(step)
        K, grad_steps, supervised = progressive_schedule(cfg, step)
        with _autocast(run):
            return imitation_loss(model, spec, episodes, K=K, grad_steps=grad_steps, supervised_steps=supervised,
                                  write_penalty=cfg.write_penalty, write_budget=cfg.write_budget,
                                  drift_penalty=cfg.drift_penalty)

    return loss_fn


def progressive_schedule(cfg: Config, step: int) -> tuple[int, int | None, int | None]:
    """(K, steps with gradients, supervised readouts) for one batch.

    progressive (Bansal et al. 2022): n ~ U{0..k_train-1} steps without gradients from the
    start, then m ~ U{1..k_train-n} steps with gradients (at most ``grad_steps``), and only the
    last readout is supervised. The network learns to improve *any* state it produced itself,
    and early exits are supervised rarely (exit 1 in 1/k_train^2 of batches), so it is not
    pushed toward a one-pass shortcut whose later steps drift ("overthinking").
    all: k_train steps, every readout supervised (deep supervision).
    """
    if cfg.loss == "all":
        return cfg.k_train, None, None
    rng = step_rng(cfg.seed, step, stream=2)
    n = int(rng.integers(0, cfg.k_train))
    m = int(rng.integers(1, cfg.k_train - n + 1))
    return n + m, min(m, cfg.grad_steps), 1


def dense_loss(run: Run, model: DenseTransformer, source: BatchSource):
    def loss_fn(step: int) -> LossOut:
        spec, episodes = source.get(step)
        with _autocast(run):
            return imitation_loss(model, spec, episodes, K=None, grad_steps=None)

    return loss_fn


def stage2_loss(cfg: Config, run: Run, model: R3M, source: BatchSource):
    """PonderNet: sum_k p_k L_k + beta KL(p || Geometric(lambda_p)), plus the tool loss, per turn."""
    def loss_fn(step: int) -> LossOut:
        spec, episodes = source.get(step)
        loss, n, halt, recon, tool_sum, writes = 0.0, 0, {"halt/expected_steps": 0.0, "halt/kl": 0.0}, 0.0, 0.0, 0.0
        step_losses: list[float] = []
        with _autocast(run):
            for turn in imitation_turns(model, spec, episodes, K=cfg.k_train, grad_steps=None):
                rows, out = len(turn.tool), turn.out
                per_sample = per_sample_token_loss(out.step_logits, turn.targets)  # [S, B]
                ponder = ponder_loss(per_sample, out.halt_probs, cfg.lambda_p, cfg.beta)
                tool_loss = torch.nn.functional.cross_entropy(turn.tool_logits.float(), turn.tool)
                loss = loss + rows * (ponder.loss + tool_loss)
                p = out.halt_probs.detach()
                k = torch.arange(1, p.shape[1] + 1, device=p.device)
                halt["halt/expected_steps"] += rows * float((p * k).sum(1).mean())
                halt["halt/kl"] += rows * float(ponder.kl.detach())
                recon += rows * float(ponder.reconstruction.detach())
                tool_sum += rows * float(tool_loss.detach())
                writes += float(out.writes.float().sum())
                step_losses = step_losses or [float(x) for x in per_sample.detach().mean(1)]
                n += rows
        halt = {k: v / n for k, v in halt.items()}
        return LossOut(loss / n, recon / n, tool_sum / n, step_losses, writes / len(episodes), 0.0, halt)

    return loss_fn


# -- phases ----------------------------------------------------------------------------------
def train_model(cfg: Config, run: Run, phase: str, model: torch.nn.Module, groups: tuple[str, ...],
                steps: int, make_loss, specs: list[TaskSpec] | None = None, lr: float | None = None):
    """Train ``groups`` of ``model`` for ``steps`` on the loss ``make_loss(model)`` builds
    (under torchrun every process trains on its own batches and ``fit`` averages gradients)."""
    model.set_trainable(groups)
    lr = cfg.lr if lr is None else lr
    optimizer = make_optimizer(model, lr, cfg.weight_decay)
    spec = FitSpec(steps, lr, min(cfg.warmup, max(1, steps // 5)), cfg.grad_clip, cfg.ckpt_every,
                   cfg.log_every, cfg.batch_size * run.world)
    extra = {"specs": [s.as_dict() for s in specs or []], "phase": phase}
    state = fit(run, phase, model, optimizer, spec, make_loss(model), extra=extra)
    model.eval()
    return state


def evaluate_models(cfg: Config, specs: list[TaskSpec], model: torch.nn.Module, *, Ks, halt: bool = False,
                    allow_tools: bool = False) -> dict:
    """family -> K -> FamilyEval (K = None for the dense model)."""
    results: dict[str, dict] = {}
    for spec in specs:
        results[spec.family] = {}
        for K in Ks:
            policy = Policy(model, spec.mode, spec.width, K=K, halt=halt, align=spec.align)
            results[spec.family][K] = evaluate_family(policy, spec.family, n_per_level=cfg.eval_n,
                                                      levels=_eval_levels(cfg, spec.family),
                                                      allow_tools=allow_tools)
    return results


def accuracy_on(ev, levels) -> float:
    """Mean accuracy over ``levels`` (equal counts per level)."""
    vals = [ev.by_level[lv] for lv in levels if lv in ev.by_level]
    return sum(vals) / len(vals) if vals else 0.0


def r3m_config(cfg: Config):
    """The preset at ``k_train``, with a tool-head class for every registered tool (user tools too)."""
    return dataclasses.replace(PRESETS[cfg.preset], K=cfg.k_train, tool_names=tuple(tools.list_tools()))


def run_stage1(cfg: Config, run: Run, specs: list[TaskSpec], metrics: dict) -> R3M:
    seed_everything(cfg.seed)
    model = R3M(r3m_config(cfg)).to(run.device)
    source = BatchSource(specs, model.cfg.tool_names, cfg.batch_size, cfg.seed + 7919 * run.rank, cfg.tool_fraction)
    state = train_model(cfg, run, "stage1", model, STAGE_GROUPS[1], cfg.steps,
                        lambda net: stage1_loss(cfg, run, net, source), specs=specs)
    _record_fit(metrics, "stage1", state)
    if not run.main:  # under torchrun, rank 0 evaluates and writes
        return model
    with torch.no_grad():
        curve = evaluate_models(cfg, specs, model, Ks=cfg.eval_ks)
        with_tools = evaluate_models(cfg, specs, model, Ks=(cfg.k_train,), allow_tools=True)
    metrics["accuracy_vs_k"] = {f: {K: accuracy_on(ev, _train_levels(cfg, f)) for K, ev in c.items()}
                                for f, c in curve.items()}
    metrics["accuracy_vs_k_harder"] = {
        f: {K: accuracy_on(ev, [lv for lv in _eval_levels(cfg, f) if lv not in _train_levels(cfg, f)])
            for K, ev in c.items()} for f, c in curve.items() if len(_eval_levels(cfg, f)) > len(_train_levels(cfg, f))}
    metrics["accuracy_vs_k_by_level"] = {f: {K: ev.by_level for K, ev in c.items()} for f, c in curve.items()}
    at_k = {f: c[cfg.k_train] if cfg.k_train in c else c[max(c)] for f, c in curve.items()}
    metrics["writes_per_sample"] = _mean([ev.writes for ev in at_k.values()])
    metrics["writes_per_sample_by_family"] = {f: ev.writes for f, ev in at_k.items()}
    metrics["tools"] = {f: {"accuracy_with_tools": accuracy_on(c[cfg.k_train], _train_levels(cfg, f)),
                            "accuracy_without_tools": metrics["accuracy_vs_k"][f].get(cfg.k_train),
                            "call_rate": c[cfg.k_train].tool_call_rate,
                            "malformed_rate": c[cfg.k_train].malformed_rate}
                        for f, c in with_tools.items()}
    metrics["_write_rate"] = state_write_rate(run, "stage1")
    _log_eval(run, "stage1", metrics)
    return model


def run_baseline(cfg: Config, run: Run, specs: list[TaskSpec], r3m_cfg, metrics: dict) -> None:
    seed_everything(cfg.seed)
    dense_cfg = dense_config_like(r3m_cfg, 1.0)
    model = DenseTransformer(dense_cfg).to(run.device)
    source = BatchSource(specs, dense_cfg.tool_names, cfg.batch_size, cfg.seed + 7919 * run.rank, cfg.tool_fraction)
    state = train_model(cfg, run, "dense", model, ("prelude", "core", "readout", "tool"), cfg.steps,
                        lambda net: dense_loss(run, net, source), specs=specs, lr=cfg.baseline_lr)
    _record_fit(metrics, "dense", state)
    if not run.main:
        return
    with torch.no_grad():
        res = evaluate_models(cfg, specs, model, Ks=(None,))
    metrics["baseline_accuracy"] = {f: accuracy_on(r[None], _train_levels(cfg, f)) for f, r in res.items()}
    metrics["baseline_accuracy_harder"] = {
        f: accuracy_on(r[None], [lv for lv in _eval_levels(cfg, f) if lv not in _train_levels(cfg, f)])
        for f, r in res.items()}
    metrics["baseline"] = {"params": sum(p.numel() for p in model.parameters()),
                           "config": dense_cfg.to_dict()}


def run_stage2(cfg: Config, run: Run, specs: list[TaskSpec], model: R3M, metrics: dict) -> None:
    source = BatchSource(specs, model.cfg.tool_names, cfg.batch_size, cfg.seed + 1 + 7919 * run.rank,
                         cfg.tool_fraction)
    state = train_model(cfg, run, "stage2", model, STAGE_GROUPS[2], cfg.halt_steps,
                        lambda net: stage2_loss(cfg, run, net, source), specs=specs)
    _record_fit(metrics, "stage2", state)
    if not run.main:
        return
    halting, steps_by_level = {}, {}
    with torch.no_grad():
        for spec in specs:
            levels = _train_levels(cfg, spec.family)
            kw = dict(n_per_level=cfg.eval_n, levels=_eval_levels(cfg, spec.family))
            halted = evaluate_family(Policy(model, spec.mode, spec.width, K=cfg.k_train, halt=True, align=spec.align), spec.family, **kw)
            fixed = evaluate_family(Policy(model, spec.mode, spec.width, K=cfg.k_train, align=spec.align), spec.family, **kw)
            train_eps = [e for e in halted.episodes if e.difficulty in levels]
            avg = _mean([e.steps for e in train_eps])
            at_avg = evaluate_family(Policy(model, spec.mode, spec.width, K=max(1, round(avg)), align=spec.align), spec.family, **kw)
            halting[spec.family] = {
                "accuracy": accuracy_on(halted, levels), "avg_steps": avg, "fixed_k": cfg.k_train,
                "fixed_k_accuracy": accuracy_on(fixed, levels), "steps_fraction": avg / cfg.k_train,
                "fixed_at_avg_steps": max(1, round(avg)), "fixed_at_avg_steps_accuracy": accuracy_on(at_avg, levels),
                "steps_by_level": halted.steps_by_level, "accuracy_by_level": halted.by_level,
            }
            steps_by_level[spec.family] = {lv: [e.steps for e in halted.episodes if e.difficulty == lv]
                                           for lv in halted.by_level}
    metrics["halting"] = halting
    metrics["_halt_steps"] = steps_by_level
    _log_eval(run, "stage2", metrics)


def run_stage0(cfg: Config, run: Run, metrics: dict) -> None:
    from r3m_agent import lm
    from r3m_agent.data import IGNORE

    seed_everything(cfg.seed)
    dense_cfg = dense_config_like(PRESETS[cfg.lm_preset], 1.0)
    model = DenseTransformer(dense_cfg).to(run.device)
    batches = lm.LMBatches(lm.corpus(cfg.seed, cfg.lm_corpus, cfg.lm_corpus), block=128, batch_size=cfg.batch_size,
                           seed=cfg.seed + 7919 * run.rank)

    def make_loss(net):
        def loss_fn(step: int) -> LossOut:
            x, y = (t.to(run.device) for t in batches.get(step))
            with _autocast(run):
                logits = net(x).logits
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)
            return LossOut(loss, float(loss.detach()), 0.0, [], 0.0, 0.0)
        return loss_fn

    state = train_model(cfg, run, "stage0", model, ("prelude", "core", "readout"), cfg.lm_steps, make_loss)
    _record_fit(metrics, "stage0", state)
    if not run.main:
        return
    completions = lm.sample_completions(model, lm.PROMPTS * 5, max_new_tokens=80, temperature=0.8, top_k=20,
                                        seed=cfg.seed)
    stats = lm.generation_stats(completions)
    instruct = evaluate_family(Policy(model, "causal", 64), "instruct", n_per_level=cfg.eval_n, levels=(1, 2))
    metrics["stage0"] = {
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": _mean(state.losses[-50:]), "loss_curve": state.losses[:: max(1, len(state.losses) // 50)],
        "generation": stats, "non_degenerate": lm.non_degenerate(stats),
        "instruct_accuracy": instruct.accuracy,
        "samples": [{"prompt": p, "completion": lm.TOK.decode(c)} for p, c in zip(lm.PROMPTS, completions)],
    }


# -- reporting -------------------------------------------------------------------------------
def _record_fit(metrics: dict, phase: str, state) -> None:
    finite = [g for g in state.grad_norms if math.isfinite(g)]
    metrics.setdefault("fit", {})[phase] = {
        "steps": state.step, "seconds": state.seconds, "final_loss": _mean(state.losses[-50:]),
        "grad_norm": {"mean": _mean(finite), "max": max(finite, default=0.0)}, "nan_steps": state.nan_steps,
    }
    metrics.setdefault("_grad_norms", []).extend(state.grad_norms)
    metrics["nan_steps"] = metrics.get("nan_steps", 0) + state.nan_steps


def state_write_rate(run: Run, phase: str) -> float:
    """Mean write-gate rate over the phase's logged steps (from its scalars file)."""
    path = run.dir / f"scalars_{phase}.jsonl"
    if not path.exists():
        return 0.0
    rates = [json.loads(line).get("memory/write_rate") for line in path.read_text().splitlines()]
    rates = [r for r in rates if r is not None]
    return _mean(rates[len(rates) // 2 :])


def _log_eval(run: Run, phase: str, metrics: dict) -> None:
    if not run.main:
        return
    logger = run.logger(phase + "_eval")
    values = {}
    for fam, curve in metrics.get("accuracy_vs_k", {}).items():
        values.update({f"eval/accuracy/{fam}/K{K:02d}": acc for K, acc in curve.items()})
    for fam, h in metrics.get("halting", {}).items():
        values.update({f"halt/accuracy/{fam}": h["accuracy"], f"halt/avg_steps/{fam}": h["avg_steps"]})
    for fam, t in metrics.get("tools", {}).items():
        values[f"tools/call_rate/{fam}"] = t["call_rate"]
    if "writes_per_sample" in metrics:
        values["memory/eval_writes_per_sample"] = metrics["writes_per_sample"]
    logger.scalars(0, values)
    logger.close()


def warnings_for(cfg: Config, metrics: dict) -> list[dict]:
    found = []
    if "accuracy_vs_k" in metrics:
        found += signals.k_curve(metrics["accuracy_vs_k"], 1, cfg.k_train)
        found += signals.write_spam(metrics.get("_write_rate", 0.0))
    for fam, by_level in metrics.get("_halt_steps", {}).items():
        found += signals.halting_collapse([s for steps in by_level.values() for s in steps])
    found += signals.instability(metrics.get("_grad_norms", []), metrics.get("nan_steps", 0))
    for s in found:
        log.warning(f"WARNING [{s.name}] {s.message}. Remedy: {s.remedy}")
    return [s.as_dict() for s in found]


def results_table(cfg: Config, metrics: dict) -> str:
    lines = []
    if "accuracy_vs_k" in metrics:
        ks = list(cfg.eval_ks)
        lines += ["| family | " + " | ".join(f"K={k}" for k in ks) + " | dense (same params) |",
                  "|---" * (len(ks) + 2) + "|"]
        for fam, curve in metrics["accuracy_vs_k"].items():
            base = metrics.get("baseline_accuracy", {}).get(fam)
            lines.append(f"| {fam} | " + " | ".join(f"{curve[k]:.3f}" for k in ks)
                         + f" | {'-' if base is None else f'{base:.3f}'} |")
        for fam, curve in metrics.get("accuracy_vs_k_harder", {}).items():
            base = metrics.get("baseline_accuracy_harder", {}).get(fam)
            lines.append(f"| {fam} (harder, untrained level) | " + " | ".join(f"{curve[k]:.3f}" for k in ks)
                         + f" | {'-' if base is None else f'{base:.3f}'} |")
    if "halting" in metrics:
        lines += ["", "| family | halting accuracy | avg steps | fixed K | fixed-K accuracy | steps by level |",
                  "|---|---|---|---|---|---|"]
        for fam, h in metrics["halting"].items():
            by = ", ".join(f"L{lv}: {s:.2f}" for lv, s in h["steps_by_level"].items())
            lines.append(f"| {fam} | {h['accuracy']:.3f} | {h['avg_steps']:.2f} | {h['fixed_k']} | "
                         f"{h['fixed_k_accuracy']:.3f} | {by} |")
    if "stage0" in metrics:
        g = metrics["stage0"]["generation"]
        lines += ["", "| stage 0 | immediate EOS | distinct-1 | distinct-2 | longest repeat run | non-degenerate |",
                  "|---|---|---|---|---|---|",
                  f"| dense LM | {g['immediate_eos_rate']:.3f} | {g['distinct_1']:.3f} | {g['distinct_2']:.3f} | "
                  f"{g['longest_repeat_run']} | {metrics['stage0']['non_degenerate']} |"]
    return "\n".join(lines)


def _mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else 0.0


def main(cfg: Config) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = make_run(cfg)
    log.info(f"run directory {run.dir} on {run.device}")
    metrics: dict = {"config": _jsonable(cfg), "device": str(run.device)}
    try:
        if 0 in cfg.stages:
            run_stage0(cfg, run, metrics)
        if 1 in cfg.stages:
            specs = task_specs(cfg)
            model = run_stage1(cfg, run, specs, metrics)
            metrics["params"] = sum(p.numel() for p in model.parameters())
            if cfg.baseline:
                run_baseline(cfg, run, specs, model.cfg, metrics)
            if 2 in cfg.stages:
                run_stage2(cfg, run, specs, model, metrics)
            _barrier()
    except Interrupted as exc:
        log.info(str(exc))
        return {"interrupted": True, "run_dir": str(run.dir)}
    if not run.main:
        return {"rank": run.rank}
    metrics["warnings"] = warnings_for(cfg, metrics)
    norms = [g for g in metrics.pop("_grad_norms", []) if math.isfinite(g)]
    metrics["grad_norm"] = {"mean": _mean(norms), "max": max(norms, default=0.0)}
    return finish(cfg, run, metrics)


def finish(cfg: Config, run: Run, metrics: dict) -> dict:
    if "accuracy_vs_k" in metrics:
        plot_accuracy_vs_k(metrics["accuracy_vs_k"], metrics.get("baseline_accuracy", {}),
                           run.dir / "accuracy_vs_k.png", harder=metrics.get("accuracy_vs_k_harder"))
    if "_halt_steps" in metrics:
        plot_halting_steps(metrics["_halt_steps"], run.dir / "halting_steps.png")
    table = results_table(cfg, metrics)
    public = {k: v for k, v in metrics.items() if not k.startswith("_")}
    public["results_table"] = table
    (run.dir / "metrics.json").write_text(json.dumps(public, indent=2, default=str))
    print(table)
    print(f"\nmetrics: {run.dir / 'metrics.json'}   tensorboard --logdir {run.dir / 'tb'}")
    return public


if __name__ == "__main__":
    main(parse_config(Config))
