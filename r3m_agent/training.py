"""Pieces every training script shares: seeding, devices, optimisers, schedules, batches,
the imitation loss, and checkpoints that let a killed run resume to the same result.

Data are a pure function of (seed, step): the batch at step s is drawn from an rng seeded
with (seed, s), so a resumed run sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from dataclasses import dataclass
from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from r3m.envs.text_env import TextTaskEnv
from r3m_agent.data import IGNORE, CausalBatch, Example, FillBatch, collate_causal, collate_fill, episode_examples
from r3m_agent.checkpoint import unwrap
from r3m_agent.layers import ModelOutput
from r3m_agent.memory import Carry, write_budget_penalty
from r3m_agent.r3m import R3M


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but torch.cuda.is_available() is False")
    return device


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op on the CPU (where fp32 is both faster and exact)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on vectors (norms, biases, eta)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, step]))


@dataclass
class TaskSpec:
    """How one family is trained and decoded."""

    family: str
    mode: str  # "fill" or "causal"
    width: int  # fill slots / max payload tokens (incl. eos)
    levels: tuple[int, ...]
    align: str = "right"  # fill: where the payload sits in its slots

    def as_dict(self) -> dict:
        return {"family": self.family, "mode": self.mode, "width": self.width, "levels": list(self.levels),
                "align": self.align}

    @classmethod
    def from_dict(cls, d: Mapping) -> "TaskSpec":
        return cls(d["family"], d["mode"], int(d["width"]), tuple(d["levels"]), d.get("align", "right"))


class BatchSource:
    """Demonstration batches, one family per step (round robin), reproducible from (seed, step)."""

    def __init__(self, specs: Sequence[TaskSpec], tool_names: Sequence[str], batch_size: int, seed: int,
                 tool_fraction: float = 0.5):
        self.specs, self.tool_names = list(specs), tuple(tool_names)
        self.batch_size, self.seed, self.tool_fraction = batch_size, seed, tool_fraction
        self._envs = {s.family: TextTaskEnv(s.family) for s in self.specs}

    def episodes(self, step: int, spec: TaskSpec) -> list[list[Example]]:
        """Whole expert episodes (one example per turn) holding at least ``batch_size`` turns."""
        rng = step_rng(self.seed, step, stream=1)
        env = self._envs[spec.family]
        out: list[list[Example]] = []
        while sum(map(len, out)) < self.batch_size:
            use_tools = bool(env.family.tool) and rng.random() < self.tool_fraction
            level = int(rng.choice(spec.levels))
            out.append(episode_examples(env, int(rng.integers(2**62)), level, use_tools, self.tool_names))
        return out

    def get(self, step: int) -> tuple[TaskSpec, list[list[Example]]]:
        spec = self.specs[step % len(self.specs)]
        return spec, self.episodes(step, spec)


class LossOut(NamedTuple):
    loss: torch.Tensor
    token_loss: float
    tool_loss: float
    step_losses: list[float]  # mean loss at each supervised step (last entries = latest steps)
    writes: float  # hard writes per sample in this call
    write_rate: float  # fraction of refinement steps that wrote
    scalars: dict | None = None  # anything else to log (e.g. halt/...)


def model_kwargs(model: torch.nn.Module, K: int | None, grad_steps: int | None, halt: bool = False) -> dict:
    return dict(K=K, grad_steps=grad_steps, halt=halt) if isinstance(unwrap(model), R3M) else {}


def per_sample_token_loss(step_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy [S, B] of each step's readout, averaged over each sample's target tokens."""
    S, B = step_logits.shape[:2]
    ce = F.cross_entropy(step_logits.float().flatten(0, 2), targets.repeat(S, 1, 1).flatten(),
                         ignore_index=IGNORE, reduction="none").view(S, B, -1)
    live = (targets != IGNORE).float()
    return (ce * live).sum(-1) / live.sum(-1).clamp(min=1.0)


def imitation_forward(model: torch.nn.Module, spec: TaskSpec, batch: FillBatch | CausalBatch, *,
                      K: int | None = None, grad_steps: int | None = None, halt: bool = False,
                      carry: Carry | None = None):
    """(model output, token targets, tool logits at the decision point) for one turn."""
    kw = model_kwargs(model, K, grad_steps, halt)
    if carry is not None:
        kw["carry"] = carry
    if spec.mode == "fill":
        out = model(batch.ids, batch.mask, mode="fill", answer_len=batch.targets.shape[1], **kw)
        return out, batch.targets, out.tool_logits
    out = model(batch.ids, batch.mask, mode="causal", **kw)
    rows = torch.arange(batch.ids.shape[0], device=batch.ids.device)
    # Teacher forcing puts the payload after the decision point, so read the tool head at <sep>.
    return out, batch.targets, unwrap(model).tool_head(out.hidden[rows, batch.decision])


class TurnOut(NamedTuple):
    out: ModelOutput
    targets: torch.Tensor
    tool_logits: torch.Tensor
    tool: torch.Tensor


def imitation_turns(model: torch.nn.Module, spec: TaskSpec,
                    episodes: Sequence[Sequence[Example]] | FillBatch | CausalBatch, *,
                    K: int | None = None, grad_steps: int | None = None, halt: bool = False) -> Iterator[TurnOut]:
    """Run the turns of expert episodes in order, each read with the memory the model wrote on
    the episode's earlier turns (detached between turns), exactly as ``run_episodes`` threads it
    when the policy acts: a model trained turn by turn on an empty memory meets, at its second
    turn, a memory it has never seen (measured on Sudoku with the solver: the answer-copy slots
    fell from 100% to 56% correct). An already collated batch is one turn on an empty memory."""
    device = next(model.parameters()).device
    if isinstance(episodes, (FillBatch, CausalBatch)):
        batch = type(episodes)(*(t.to(device) for t in episodes))
        yield TurnOut(*imitation_forward(model, spec, batch, K=K, grad_steps=grad_steps, halt=halt), batch.tool)
        return
    base = unwrap(model)
    carry = base.initial_carry(len(episodes), device) if isinstance(base, R3M) else None
    for j in range(max(map(len, episodes))):
        rows = [i for i, e in enumerate(episodes) if len(e) > j]
        ex = [episodes[i][j] for i in rows]
        batch = collate_fill(ex, spec.width, spec.align) if spec.mode == "fill" else collate_causal(ex, spec.width)
        batch = type(batch)(*(t.to(device) for t in batch))
        index = torch.tensor(rows, device=device)
        row_carry = carry.select(index) if carry is not None else None
        out, targets, tool_logits = imitation_forward(model, spec, batch, K=K, grad_steps=grad_steps, halt=halt,
                                                      carry=row_carry)
        yield TurnOut(out, targets, tool_logits, batch.tool)
        if carry is not None and out.carry is not None:
            carry = carry.put(index, out.carry.detach())


def imitation_loss(model: torch.nn.Module, spec: TaskSpec,
                   episodes: Sequence[Sequence[Example]] | FillBatch | CausalBatch, *,
                   K: int | None, grad_steps: int | None, supervised_steps: int | None = None,
                   tool_weight: float = 1.0, write_penalty: float = 0.0, write_budget: float = 0.0,
                   drift_penalty: float = 0.0) -> LossOut:
    """Imitation of whole expert episodes (``imitation_turns``), averaged over turns.

    Per turn: the token loss averaged over the last ``supervised_steps`` readouts (default: every
    step that keeps a graph), plus the tool loss, plus (when ``write_penalty`` > 0) the episodic
    memory's write-budget penalty, plus (when ``drift_penalty`` > 0) the state's change in the
    last step. ``step_losses`` are the first turn's, for logging.
    """
    last = supervised_steps if supervised_steps is not None else grad_steps
    total, token_sum, tool_sum, writes, write_rate, n = 0.0, 0.0, 0.0, 0.0, 0.0, 0
    step_losses: list[float] = []
    for turn in imitation_turns(model, spec, episodes, K=K, grad_steps=grad_steps):
        out, rows = turn.out, len(turn.tool)
        per_step = per_sample_token_loss(out.step_logits, turn.targets).mean(1)  # [S]
        token = (per_step if last is None else per_step[-last:]).mean()
        tool = F.cross_entropy(turn.tool_logits.float(), turn.tool)
        loss = token + tool_weight * tool
        if write_penalty and out.write_probs is not None:
            loss = loss + write_penalty * write_budget_penalty(out.write_probs, write_budget)
        if drift_penalty and out.drift is not None:
            loss = loss + drift_penalty * out.drift.mean()
        total = total + rows * loss
        token_sum += rows * float(token.detach())
        tool_sum += rows * float(tool.detach())
        writes += float(out.writes.float().sum())
        if out.write_probs is not None:
            write_rate += rows * float(out.write_probs.gt(0.5).float().mean())
        step_losses = step_losses or [float(x) for x in per_step.detach()]
        n += rows
    return LossOut(total / n, token_sum / n, tool_sum / n, step_losses, writes / max(1, len(episodes)), write_rate / n)


def ddp_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (0, 0, 1 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
