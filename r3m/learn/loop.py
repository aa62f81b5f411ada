"""The optimisation loop every phase of every script shares, and its optimiser and schedule.

``fit`` runs ``steps`` optimiser steps of a loss closure with warmup + cosine learning rate,
gradient clipping, NaN/inf skipping, TensorBoard scalars, a progress bar with loss and
throughput, and atomic checkpoints every ``ckpt_every`` steps. Re-entering ``fit`` for a phase
whose checkpoint exists resumes it (or returns at once when it finished); because batches are
a pure function of (seed, step), a resumed phase ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from r3m.learn.cli import RunStopped
from r3m.learn.losses import LossOut
from r3m.learn.reporting import log
from r3m.learn.run import Run
from r3m_agent.checkpoint import load_checkpoint, save_checkpoint

# Parameter groups each training stage trains (1 imitation, 2 + halting, 3 RL, 4 consolidation).
STAGE_GROUPS: dict[int, tuple[str, ...]] = {
    1: ("prelude", "core", "readout", "memory", "tool"),
    2: ("prelude", "core", "readout", "memory", "tool", "halt"),
    3: ("prelude", "core", "readout", "memory", "tool", "halt"),
    4: ("semantic",),
}


class Interrupted(Exception):
    """Raised when a run's ``stop_after`` step budget is spent (tests simulate a killed run with it)."""


class Diverged(RunStopped):
    """Raised after ``FitSpec.max_bad_steps`` steps in a row had a NaN/inf loss or gradient; the
    phase's last checkpoint (written before them) is left as it was."""


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on vectors (norms, biases, eta)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


def lr_at(step: int, total: int, base: float, warmup: int, time_frac: float = 0.0) -> float:
    """Linear warmup then cosine decay to 10% of ``base``, over the steps or, when further along
    (a phase with a time budget), over ``time_frac`` of the budget spent."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = min(1.0, max((step - warmup) / max(1, total - warmup), time_frac))
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


@dataclass
class FitState:
    step: int = 0
    done: bool = False
    nan_steps: int = 0
    bad_in_a_row: int = 0
    grad_norms: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class FitSpec:
    steps: int
    lr: float
    warmup: int = 100
    grad_clip: float = 1.0
    ckpt_every: int = 200
    log_every: int = 25
    samples_per_step: int = 1
    max_bad_steps: int = 20  # consecutive NaN/inf steps (each skipped) before the phase gives up
    ema: float = 0.0  # decay of the moving average of the weights the phase ends with (0: none)
    time_budget: float = 0.0  # seconds of training after which the phase ends early (0: none; the LR decays to it)
    stop_when: Callable[[int], bool] | None = None  # ends the phase before step s when stop_when(s) (e.g. a plateau)


class WeightAverage:
    """An exponential moving average of the trainable weights, which the phase ends with (TRM and its
    successors evaluate the EMA: late in training the last weights are one noisy step of many).
    The decay warms up as min(decay, (1 + t) / (10 + t)), so a short phase is not dominated by its
    initial weights; the average is kept in float32 and saved in the phase's checkpoints."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for avg, p in zip(self.shadow, self.params):
            avg.lerp_(p.detach().float(), 1.0 - d)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for avg, p in zip(self.shadow, self.params):
            p.copy_(avg.to(p.dtype))

    def load(self, tensors: list[torch.Tensor]) -> None:
        if len(tensors) != len(self.shadow):
            raise ValueError(f"the checkpoint's weight average has {len(tensors)} tensors, this model {len(self.shadow)}")
        self.shadow = [t.to(avg.device, torch.float32).clone() for t, avg in zip(tensors, self.shadow)]


def fit(run: Run, phase: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, spec: FitSpec,
        loss_fn: Callable[[int], LossOut], scalars_fn: Callable[[int, LossOut], dict] | None = None,
        save_model: torch.nn.Module | None = None, extra: dict | None = None) -> FitState:
    """Train ``phase`` to ``spec.steps`` steps (resuming from its checkpoint if one exists).

    ``extra`` (plain data, e.g. how each family is decoded) is stored in every checkpoint.
    """
    state = FitState()
    path = run.ckpt(phase)
    target = save_model if save_model is not None else model
    average = WeightAverage(model, spec.ema) if spec.ema else None
    if path.exists():
        payload = load_checkpoint(path, target, optimizer, map_location=run.device)
        state = FitState(**payload["extra"]["fit"])
        if state.done:
            return state
        if average is not None and "ema" in payload["extra"]:
            average.load(payload["extra"]["ema"])
        log.info(f"{phase}: resuming at step {state.step} from {path}")
    if average is not None:
        extra = {**(extra or {}), "ema": average.shadow}  # the same tensors, updated in place
    logger = run.logger(phase, purge_step=state.step + 1)
    bar = progress_bar(run, spec.steps, state.step, phase)
    model.train()
    t0, last_t, last_step = time.time(), time.time(), state.step

    def spent() -> float:  # the share of the time budget used, this process and any earlier part of the phase
        return (state.seconds + time.time() - t0) / spec.time_budget if spec.time_budget else 0.0

    def ended(step: int) -> bool:  # the time budget spent, or the phase's own stop rule
        if not (spec.time_budget or spec.stop_when):
            return False
        stop = spec.stop_when is not None and spec.stop_when(step)
        return out_of_time(1.0 if stop else spent())

    try:
        while state.step < spec.steps and not ended(state.step):
            if run.stop_after and run.steps_taken >= run.stop_after:
                _save(path, target, optimizer, state, extra)
                raise Interrupted(f"{phase}: stopped after {run.steps_taken} steps (stop_after)")
            lr = lr_at(state.step, spec.steps, spec.lr, spec.warmup, spent())
            for group in optimizer.param_groups:
                group["lr"] = lr
            out = loss_fn(state.step)
            optimizer.zero_grad(set_to_none=True)
            norm = float("nan")
            if all_finite(out.loss.detach()):  # every process agrees, or a lone skip would hang the others
                out.loss.backward()
                average_gradients(model)
                norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip))
            if math.isfinite(norm):
                optimizer.step()
                state.bad_in_a_row = 0
                if average is not None:
                    average.update(state.step)
            else:  # skip the update: one bad batch must not poison the weights
                state.nan_steps += 1
                state.bad_in_a_row += 1
                optimizer.zero_grad(set_to_none=True)
                if state.bad_in_a_row >= spec.max_bad_steps:
                    raise Diverged(f"{phase}: {state.bad_in_a_row} steps in a row up to step {state.step + 1} had a "
                                   f"NaN/inf loss or gradient; stopped. The last checkpoint ({path}, if one was "
                                   "written) is untouched; lower the learning rate or tighten the clipping")
            state.grad_norms.append(norm)
            state.losses.append(float(out.loss.detach()))
            state.step += 1
            run.steps_taken += 1
            bar.update(1)
            if state.step % spec.log_every == 0 or state.step == spec.steps:
                now = time.time()
                rate = (state.step - last_step) * spec.samples_per_step / max(now - last_t, 1e-9)
                last_t, last_step = now, state.step
                bar.set_postfix(loss=f"{state.losses[-1]:.3f}", samples_s=f"{rate:.0f}")
                if run.progress and run.main and bar.disable:  # no terminal: a plain line per log interval
                    log.info(f"{phase}: step {state.step}/{spec.steps} loss {state.losses[-1]:.4f} "
                             f"{rate:.0f} samples/s")
                if run.main:
                    logger.scalars(state.step, _scalars(out, lr, norm, state, rate, scalars_fn))
            if state.step % spec.ckpt_every == 0 and state.step < spec.steps and run.main and not state.bad_in_a_row:
                _save(path, target, optimizer, state, extra)  # never in the middle of a run of bad steps
        state.done = True
        state.seconds += time.time() - t0
        if average is not None:
            average.copy_to_model()  # the phase ends with (and its checkpoint holds) the averaged weights
        if run.main:
            _save(path, target, optimizer, state, extra)
    finally:
        bar.close()
        logger.close()
    return state


def out_of_time(spent: float) -> bool:
    """Whether a phase's time budget is used up, agreed by every process (a lone stop would hang the
    others' all-reduce)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return spent >= 1.0
    over = torch.tensor(float(spent >= 1.0), device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(over, op=dist.ReduceOp.MAX)
    return bool(over.item() > 0)


def progress_bar(run: Run, total: int, initial: int, desc: str) -> tqdm:
    """A progress bar on a terminal; disabled (the loop logs plain lines instead) when stderr is a
    file or pipe, where carriage-return redraws would fill the log."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, disable=not (run.progress and run.main and interactive),
                dynamic_ncols=True, leave=False)


def all_finite(loss: torch.Tensor) -> bool:
    """Whether ``loss`` is finite on every process (on this one without torchrun)."""
    ok = torch.tensor(float(math.isfinite(float(loss))), device=loss.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


def average_gradients(model: torch.nn.Module) -> None:
    """Under torchrun, average the gradients over processes: one flat all-reduce of the gradients
    and one of a has-gradient flag per parameter (a parameter no process used keeps ``grad=None``,
    as it would in one process, so AdamW still skips it).

    Not DistributedDataParallel: a training step here calls the model several times before one
    backward (each turn of an episode with the memory carried, replayed demonstrations, re-scored
    actions), with a random number of refinement steps, and calls heads outside ``forward``.
    Measured with two gloo processes on the multi-turn imitation loss (torch 2.13): plain DDP and
    ``static_graph=True`` raise "Expected to have finished reduction in the prior iteration";
    ``find_unused_parameters=True`` matched these gradients there, but DDP does not promise it for
    several forward calls per backward, while this all-reduce is exact for any number of calls.
    ``tests/test_ddp.py`` checks that two processes give the one-process gradients.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    used = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    dist.all_reduce(used, op=dist.ReduceOp.MAX)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g, u in zip(params, grads, used.tolist()):
        p.grad = flat[offset : offset + g.numel()].view_as(p).clone() if u else None
        offset += g.numel()


def _scalars(out: LossOut, lr: float, norm: float, state: FitState, rate: float,
             scalars_fn: Callable[[int, LossOut], dict] | None) -> dict:
    values = {"train/loss": float(out.loss.detach()), "train/token_loss": out.token_loss, "train/lr": lr,
              "train/grad_norm": norm, "train/nan_steps": state.nan_steps, "train/samples_per_s": rate,
              "tools/tool_loss": out.tool_loss}
    if out.writes is not None:  # a model without memory logs no memory scalars
        values["memory/writes_per_sample"] = out.writes
    if out.write_rate is not None:
        values["memory/write_rate"] = out.write_rate
    for k, loss in enumerate(out.step_losses, start=1):
        values[f"train/step_loss/{k:02d}"] = loss
    values.update(out.scalars or {})
    if scalars_fn is not None:
        values.update(scalars_fn(state.step, out))
    return values


def _save(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: FitState,
          extra: dict | None) -> None:
    save_checkpoint(path, model, optimizer, step=state.step, extra={**(extra or {}), "fit": asdict(state)})


def train_phase(run: Run, phase: str, model: torch.nn.Module, spec: FitSpec, loss_fn: Callable[[int], LossOut], *,
                groups: tuple[str, ...] | None = None, weight_decay: float = 0.0,
                extra: dict | None = None) -> FitState:
    """Train ``groups`` of ``model`` (all trainable ones when None) with AdamW for one phase of a run,
    resuming it from its checkpoint; the model is left in eval mode."""
    if groups is not None:
        model.set_trainable(groups)
    state = fit(run, phase, model, make_optimizer(model, spec.lr, weight_decay), spec, loss_fn, extra=extra)
    model.eval()
    return state
