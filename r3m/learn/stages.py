"""The imitation phases that several scripts run: Stage 1 (R3M at a fixed K with the progressive
schedule of Deep Thinking), the dense baseline on the same batches, and Stage 2 (PonderNet
halting). ``train/imitate.py`` runs them as the plan's stages; ``train/rl_verify.py`` runs them
as its warm start. Each is a resumable phase of a run (``loop.train_phase``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from r3m.learn.data import DemoSource, TaskSpec
from r3m.learn.loop import STAGE_GROUPS, FitSpec, FitState, train_phase
from r3m.learn.losses import LossOut, SegmentCarry, imitation_loss, ponder_imitation_loss, progressive_schedule
from r3m.learn.run import Run, autocast, stream_rng


@dataclass(frozen=True)
class Imitation:
    """How an imitation phase trains (the fields of the same names in ``train/imitate.py``)."""

    steps: int
    lr: float
    batch_size: int = 32
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    k_train: int = 8
    grad_steps: int = 2
    tool_fraction: float = 0.25
    write_penalty: float = 1.0
    write_budget: float = 8.0
    write_cost: float = 0.0
    drift_penalty: float = 1.0
    tbptt: int = 0  # 0: backpropagate through the whole episode
    per_episode: bool = False  # batch_size counts episodes (streams: many turns each), not turns
    both_demos: bool = False  # every instance of a family with a tool answered directly and through it
    curriculum: float = 0.0  # share of the steps over which the levels unlock, easiest first (0: off)
    segments: int = 1  # stage 1: optimiser steps per batch, each continuing the last one's state (SegmentCarry)
    ema: float = 0.0  # decay of the weights' moving average that the phase ends with (0: the last weights)
    ckpt_every: int = 200
    log_every: int = 25
    max_bad_steps: int = 20
    minutes: float = 0.0  # wall-clock budget of the phase's training (0: none): it ends at steps or here

    @classmethod
    def of(cls, cfg, **overrides) -> "Imitation":
        """The settings a script config holds under the same field names, with ``overrides``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{n: getattr(cfg, n) for n in names if hasattr(cfg, n)}, **overrides})

    def fit_spec(self, run: Run) -> FitSpec:
        return FitSpec(self.steps, self.lr, min(self.warmup, max(1, self.steps // 5)), self.grad_clip,
                       self.ckpt_every, self.log_every, self.batch_size * run.world, self.max_bad_steps, self.ema,
                       60.0 * self.minutes)


def _demos(specs: Sequence[TaskSpec], model: torch.nn.Module, s: Imitation, seed: int, run: Run,
           stream: str = "demos", steps_per_batch: int = 1) -> DemoSource:
    """Each torchrun process draws its own batches (the rank is part of the stream's key)."""
    size = {"episodes": s.batch_size} if s.per_episode else {"turns": s.batch_size}
    return DemoSource(specs, model.cfg.tool_names, seed, stream=stream, tool_fraction=s.tool_fraction,
                      rank=run.rank, both=s.both_demos,
                      curriculum_steps=round(s.curriculum * s.steps / steps_per_batch), **size)


def _extra(specs: Sequence[TaskSpec], phase: str) -> dict:
    return {"specs": [sp.as_dict() for sp in specs], "phase": phase}


def stage1_loss(run: Run, model: torch.nn.Module, specs: Sequence[TaskSpec], s: Imitation,
                seed: int) -> Callable[[int], LossOut]:
    """The loss of ``stage1`` at a step (this process's batch under torchrun). With ``s.segments`` > 1
    a batch is trained for that many steps in a row, each a segment of ``k_train`` steps that
    continues the previous one's state (``losses.SegmentCarry``); else Deep Thinking's progressive
    schedule draws K for each batch."""
    source = _demos(specs, model, s, seed, run, steps_per_batch=s.segments)
    chain = SegmentCarry(s.segments) if s.segments > 1 else None

    def loss_fn(step: int) -> LossOut:
        if chain is not None:
            spec, episodes = source.get(chain.at(step)[0])
            K, grad_steps, supervised = s.k_train, s.grad_steps, 1
        else:
            spec, episodes = source.get(step)
            K, grad_steps, supervised = progressive_schedule(stream_rng(seed, "schedule", step), s.k_train,
                                                             s.grad_steps)
        with autocast(run.device):
            return imitation_loss(model, spec, episodes, K=K, grad_steps=grad_steps, supervised_steps=supervised,
                                  write_penalty=s.write_penalty, write_budget=s.write_budget,
                                  write_cost=s.write_cost, drift_penalty=s.drift_penalty, tbptt=s.tbptt or None,
                                  segment=chain)

    return loss_fn


def stage1(run: Run, phase: str, model: torch.nn.Module, specs: Sequence[TaskSpec], s: Imitation,
           seed: int) -> FitState:
    """R3M imitation at K' <= k_train (``losses.progressive_schedule``), every turn of the expert
    episodes with the memory carried; under torchrun each process draws its own batches."""
    return train_phase(run, phase, model, s.fit_spec(run), stage1_loss(run, model, specs, s, seed),
                       groups=STAGE_GROUPS[1], weight_decay=s.weight_decay, extra=_extra(specs, phase))


def dense(run: Run, phase: str, model: torch.nn.Module, specs: Sequence[TaskSpec], s: Imitation,
          seed: int) -> FitState:
    """The dense baseline: imitation of the same demonstrations as ``stage1`` with the same seed."""
    source = _demos(specs, model, s, seed, run)

    def loss_fn(step: int) -> LossOut:
        spec, episodes = source.get(step)
        with autocast(run.device):
            return imitation_loss(model, spec, episodes, K=None, grad_steps=None)

    return train_phase(run, phase, model, s.fit_spec(run), loss_fn, groups=("prelude", "core", "readout", "tool"),
                       weight_decay=s.weight_decay, extra=_extra(specs, phase))


def stage2(run: Run, phase: str, model: torch.nn.Module, specs: Sequence[TaskSpec], s: Imitation, seed: int, *,
           lambda_p: float, beta: float) -> FitState:
    """PonderNet halting on top of a stage-1 model, at K = k_train (``losses.ponder_imitation_loss``)."""
    source = _demos(specs, model, s, seed, run, stream="halt_demos")

    def loss_fn(step: int) -> LossOut:
        spec, episodes = source.get(step)
        with autocast(run.device):
            return ponder_imitation_loss(model, spec, episodes, K=s.k_train, lambda_p=lambda_p, beta=beta,
                                         drift_penalty=s.drift_penalty)

    return train_phase(run, phase, model, s.fit_spec(run), loss_fn, groups=STAGE_GROUPS[2],
                       weight_decay=s.weight_decay, extra=_extra(specs, phase))
