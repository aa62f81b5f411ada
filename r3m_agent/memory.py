"""Episodic memory (slots in an explicit carry) and semantic memory (slow learned key-values).

Episodic: M slots of width d per sequence, FIFO. Once per call (one turn of an episode), after the
refinement, the turn's state s is written as W s into the next slot: every turn (the plan's
Stage 1), or where a gate g = sigmoid(w.s + b) on s decides a hard write (g > 0.5). Every token of
the next calls reads the slots by attention, with a learned null key whose value is zero (an
empty memory reads exactly zero); a slot's score is its content's match plus a learned bias per
head for its age (0 = newest), so recency is its own term, not mixed into the content key (the
newest fact about something can win, whatever the fact says).

The gate learns in both directions: a slot's validity is the hard decision in the forward pass
and carries the soft gate's gradient in the backward pass (straight-through, Bengio et al. 2013),
and reads weight each slot's attention by its validity. So a closed gate still gets gradient,
through how much reading the slot it did not write would have helped; an open gate gets it
through the written content. The slots live in a ``Carry`` that goes in and comes out of every
call, so the memory persists across the turns of an episode (and the task loss reaches a write
through the later turns that read it) and is reset between episodes.

Semantic: a few hundred learned key-value pairs read by attention and added residually, its
output projection zero-initialised so switching it on leaves a trained model unchanged
(the LoRA trick, Hu et al. 2021); it is trained alone in the consolidation stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.functional as F
from torch import nn

from r3m_agent.blocks import RMSNorm


@dataclass
class Carry:
    """Episodic-memory state of a batch: ``slots`` [B, M, d], ``valid`` [B, M] (1.0 for a written
    slot in the forward pass; float so it can carry the write gate's gradient), ``ptr`` [B].

    ``ptr`` is the next slot to write: the first empty one, or the oldest once full.
    """

    slots: torch.Tensor
    valid: torch.Tensor
    ptr: torch.Tensor

    @property
    def count(self) -> torch.Tensor:
        return (self.valid > 0.5).sum(dim=-1)

    def detach(self) -> Carry:
        """Cut the graph between turns (truncated backpropagation through time)."""
        return Carry(self.slots.detach(), self.valid.detach(), self.ptr)

    def to(self, device: torch.device | str) -> Carry:
        return Carry(self.slots.to(device), self.valid.to(device), self.ptr.to(device))

    def select(self, index: torch.Tensor) -> Carry:
        """Rows ``index`` of the batch (e.g. the episodes still running)."""
        return Carry(self.slots[index], self.valid[index], self.ptr[index])

    def put(self, index: torch.Tensor, rows: Carry) -> Carry:
        """A copy with rows ``index`` replaced by ``rows`` (the inverse of ``select``; differentiable)."""
        return Carry(self.slots.index_put((index,), rows.slots.to(self.slots.dtype)),
                     self.valid.index_put((index,), rows.valid.to(self.valid.dtype)),
                     self.ptr.index_put((index,), rows.ptr))

    @staticmethod
    def cat(carries: "list[Carry]") -> "Carry":
        return Carry(*(torch.cat([getattr(c, f) for c in carries]) for f in ("slots", "valid", "ptr")))

    def in_order(self, row: int) -> torch.Tensor:
        """Row ``row``'s valid slots, oldest first: [count, d]."""
        M = self.valid.shape[1]
        order = (torch.arange(M, device=self.ptr.device) + self.ptr[row]) % M
        return self.slots[row, order][self.valid[row, order] > 0.5]


def empty_carry(batch_size: int, mem_slots: int, d_model: int, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> Carry:
    return Carry(
        torch.zeros(batch_size, mem_slots, d_model, device=device, dtype=dtype),
        torch.zeros(batch_size, mem_slots, device=device, dtype=torch.float32),
        torch.zeros(batch_size, dtype=torch.long, device=device),
    )


def reset_carry(carry: Carry | None, done: torch.Tensor) -> Carry | None:
    """Empty the memory of the rows where ``done`` (finished episodes); keep the others."""
    if carry is None:
        return None
    done = done.to(carry.valid.device).bool()
    return Carry(
        torch.where(done[:, None, None], torch.zeros_like(carry.slots), carry.slots),
        torch.where(done[:, None], torch.zeros_like(carry.valid), carry.valid),
        torch.where(done, torch.zeros_like(carry.ptr), carry.ptr),
    )


class EpisodicMemory(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mem_slots: int, write_bias_init: float) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.mem_slots = d_model, n_heads, mem_slots
        self.gate = nn.Linear(d_model, 1)
        self.content = nn.Linear(d_model, d_model, bias=False)
        self.read_norm = RMSNorm(d_model)
        self.slot_norm = RMSNorm(d_model)
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)
        self.null_key = nn.Parameter(torch.zeros(d_model))
        self.age_bias = nn.Parameter(torch.zeros(n_heads, mem_slots))  # score bias by age (0 = newest), per head
        self.write_bias_init = write_bias_init
        self.record: list[torch.Tensor] | None = None  # a list: each read appends its weights (diagnostics)

    def reset_parameters(self) -> None:
        """Called after the model's generic init: the gate bias sets the initial write rate."""
        nn.init.normal_(self.gate.weight, 0.0, 0.02)
        nn.init.constant_(self.gate.bias, self.write_bias_init)
        nn.init.normal_(self.null_key, 0.0, 0.02)
        nn.init.zeros_(self.age_bias)

    def write(self, carry: Carry, state: torch.Tensor, threshold: float = 0.5,
              gate: bool = True) -> tuple[Carry, torch.Tensor, torch.Tensor]:
        """One FIFO write per row of ``state`` [B, d]: every row (``gate=False``), or a hard write
        where the gate exceeds ``threshold`` (raising it at evaluation tightens the write budget).
        Returns (new carry, hard writes [B], soft gate [B]; all ones without the gate)."""
        if gate:
            soft = torch.sigmoid(self.gate(state).float().squeeze(-1))
            hard = (soft > threshold).float()
            st = hard + soft - soft.detach()  # forward: the hard decision; backward: the soft gate's gradient
        else:
            soft = hard = st = torch.ones(state.shape[0], device=state.device)
        at = F.one_hot(carry.ptr, self.mem_slots).to(carry.valid.dtype)  # [B, M]
        value = self.content(state).to(carry.slots.dtype)[:, None, :]
        w = at * st[:, None]  # 1 at the written slot when the gate opens, 0 elsewhere (forward)
        # An empty slot at ptr takes the content even when the gate stays closed (invalid, so never
        # read): then "what if it had been written" has a value, and the closed gate a gradient.
        # A full memory's oldest slot keeps its content unless the gate opens.
        empty = (carry.valid * at).sum(1, keepdim=True) < 0.5
        fill = torch.where(empty, at, w)
        slots = carry.slots + fill[..., None].to(carry.slots.dtype) * (value - carry.slots)
        valid = carry.valid + w * (1.0 - carry.valid)
        ptr = (carry.ptr + hard.long()) % self.mem_slots
        return Carry(slots, valid, ptr), hard, soft

    def read(self, x: torch.Tensor, carry: Carry) -> torch.Tensor:
        """Attention from every token of ``x`` [B, T, d] to the slots (plus the null slot), each
        slot's weight scaled by its validity (0 or 1 forward; the write gate's gradient backward).
        While ``self.record`` is a list, each read appends its weights there (``read_support_mass``)."""
        B, T, D = x.shape
        H, Dh, M = self.n_heads, D // self.n_heads, self.mem_slots
        q = self.q(self.read_norm(x)).view(B, T, H, Dh).transpose(1, 2)  # [B, H, T, Dh]
        k, v = self.kv(self.slot_norm(carry.slots.to(x.dtype))).chunk(2, dim=-1)
        age = (carry.ptr[:, None] - 1 - torch.arange(M, device=x.device)[None, :]) % M  # 0 = newest slot
        k = torch.cat([self.null_key.to(k.dtype).expand(B, 1, D), k], dim=1).view(B, M + 1, H, Dh).transpose(1, 2)
        v = torch.cat([torch.zeros_like(v[:, :1]), v], dim=1).view(B, M + 1, H, Dh).transpose(1, 2)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(Dh)  # [B, H, T, M+1]
        recency = self.age_bias.float()[:, age].permute(1, 0, 2)  # [B, H, M]: each slot's bias by its age
        scores = scores + torch.cat([torch.zeros_like(recency[..., :1]), recency], dim=-1)[:, :, None, :]
        weight = torch.cat([torch.ones_like(carry.valid[:, :1]), carry.valid], dim=1).float()[:, None, None, :]
        top = scores.masked_fill(weight <= 0, float("-inf")).amax(dim=-1, keepdim=True).detach()  # null: finite
        p = weight * (scores - top).clamp(max=20.0).exp()  # an unwritten slot may score above the top
        p = p / p.sum(dim=-1, keepdim=True)
        if self.record is not None:  # [B, T, 1 + M]: each token's weights (null slot first), mean over heads
            self.record.append(p.detach().mean(1))
        y = (p.to(v.dtype) @ v).transpose(1, 2).reshape(B, T, D)
        return self.o(y)


class SemanticMemory(nn.Module):
    """Slow key-value memory shared by all sequences (Lample et al. 2019 style, without product keys)."""

    def __init__(self, d_model: int, n_heads: int, slots: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm = RMSNorm(d_model)
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.keys = nn.Parameter(torch.zeros(slots, d_model))
        self.values = nn.Parameter(torch.zeros(slots, d_model))
        self.o = nn.Linear(d_model, d_model, bias=False)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.keys, 0.0, 1.0)
        nn.init.normal_(self.values, 0.0, 0.02)
        nn.init.zeros_(self.o.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        H, Dh = self.n_heads, D // self.n_heads
        q = self.q(self.norm(x)).view(B, T, H, Dh).transpose(1, 2)
        k = self.keys.to(q.dtype).view(-1, H, Dh).transpose(0, 1).expand(B, H, -1, Dh)
        v = self.values.to(q.dtype).view(-1, H, Dh).transpose(0, 1).expand(B, H, -1, Dh)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(B, T, D))
