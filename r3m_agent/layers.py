"""Blocks shared by the dense baseline and R3M, and the helpers both forward passes use.

Padding convention: ``attention_mask`` is True (or 1) on real tokens. Positions come from the
cumulative mask, so a row's real tokens get positions 0, 1, ... wherever its pads sit; with
rotary embeddings (Su et al. 2021) and pads removed from the keys, left and right padding give
the same numbers. Every query may attend to itself, so a pad row never softmaxes an empty set.
"""

from __future__ import annotations

import re
from dataclasses import asdict, fields
from typing import Any, Callable, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from r3m_agent.tokenizer import EOS_ID, MASK_ID, PAD_ID, VOCAB_SIZE

MODES = ("causal", "fill")
_TOOL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")  # as in tools.syntax


class ModelOutput(NamedTuple):
    """What both models return. S = refinement steps run (1 for the dense model).

    logits: [B, T, V] (causal) or [B, answer_len, V] (fill: the answer slots only).
    step_logits: [S, B, T or answer_len, V], the readout after every step (deep supervision).
    halt_probs: [B, S], each row sums to 1. steps: LongTensor [B], the step ``logits`` came from.
    writes: [B] hard memory writes made in this call. write_probs: [B, S] soft write gates or None.
    tool_logits: [B, 1 + n_tools] at the decision point; index 0 = "answer", then cfg.tool_names.
    carry: the memory state after this call (R3M) or None. hidden: final hidden states [B, T', d].
    drift: [B] mean squared change of the state in the last refinement step (R3M; None for dense):
    zero at a fixed point, so penalising it discourages "overthinking" drift beyond training K.
    """

    logits: torch.Tensor
    step_logits: torch.Tensor
    halt_probs: torch.Tensor
    steps: torch.Tensor
    writes: torch.Tensor
    write_probs: torch.Tensor | None
    tool_logits: torch.Tensor
    carry: Any
    hidden: torch.Tensor
    drift: torch.Tensor | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotary(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [B, 1, T, head_dim/2] for integer positions [B, T]."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """Pre-norm Transformer block (GPT-2 / nanoGPT layout, RMSNorm, GELU MLP)."""

    def __init__(self, d_model: int, n_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.norm2 = RMSNorm(d_model)
        self.mlp = MLP(d_model, mlp_hidden)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask, rope)
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """nanoGPT's initialisation: normal(0, 0.02) for linear and embedding weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)


class Batch(NamedTuple):
    """Inputs after ``prepare``: the token ids the trunk sees, their mask, positions and layout."""

    ids: torch.Tensor  # [B, T'] (fill: input then answer_len mask tokens)
    mask: torch.Tensor  # [B, T'] bool
    attn_mask: torch.Tensor  # [B, 1, T', T'] bool, True = may attend
    positions: torch.Tensor  # [B, T']
    causal: bool
    answer_len: int  # 0 in causal mode


def prepare(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, mode: str,
            answer_len: int | None, fill_anchor: int = 0) -> Batch:
    """Build masks and positions; in fill mode append ``answer_len`` mask tokens after the input.

    ``fill_anchor`` > 0 gives the answer slots the fixed positions ``fill_anchor, fill_anchor+1, ...``
    instead of continuing after the prompt, so with rotary attention the offset between answer
    slot i and prompt position p no longer depends on the prompt's length: content anchored at
    the prompt's start (a grid, a list) lines up with the slots whatever follows it.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} != input_ids shape {tuple(input_ids.shape)}")
    causal = mode == "causal"
    n_answer = 0
    if not causal:
        if answer_len is None or answer_len < 1:
            raise ValueError(f"fill mode needs answer_len >= 1, got {answer_len}")
        n_answer = answer_len
        slots = torch.full((input_ids.shape[0], n_answer), MASK_ID, dtype=input_ids.dtype, device=input_ids.device)
        input_ids = torch.cat([input_ids, slots], dim=1)
        mask = torch.cat([mask, torch.ones_like(slots, dtype=torch.bool)], dim=1)
    T = input_ids.shape[1]
    allowed = mask[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=mask.device)
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    if n_answer and fill_anchor:
        slots_at = torch.arange(fill_anchor, fill_anchor + n_answer, device=positions.device)
        positions = torch.cat([positions[:, :-n_answer], slots_at.expand(positions.shape[0], -1)], dim=1)
    return Batch(input_ids, mask, allowed, positions, causal, n_answer)


def pool(h: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The decision-point state [B, d]: the last real token (causal) or the masked mean (fill)."""
    if batch.causal:
        idx = (batch.mask.long() * torch.arange(1, h.shape[1] + 1, device=h.device)).argmax(dim=1)
        return h[torch.arange(h.shape[0], device=h.device), idx]
    w = batch.mask.to(h.dtype)[..., None]
    return (h * w).sum(1) / w.sum(1).clamp(min=1.0)


def answer_part(t: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Keep the answer slots along the token dim (dim -2 of [.., T', V]) in fill mode."""
    return t[..., -batch.answer_len :, :] if batch.answer_len else t


def left_align(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every row's pads to the left, keeping the real tokens' order (any padding layout)."""
    order = torch.argsort(mask.long(), dim=1, stable=True)
    return ids.gather(1, order), mask.gather(1, order)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from [B, V] logits; temperature <= 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_tokens(step_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, eos_id: int | None = EOS_ID,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample up to ``max_new_tokens`` per row, recomputing the whole prefix each step (no cache).

    ``step_fn(ids, mask)`` returns next-token logits [B, V] at the last position. The batch is
    left-aligned first so new tokens go at the end of every row. Returns ``(new [B, N], ids,
    mask)``: new tokens, PAD after a row's EOS (N < max_new_tokens when every row stopped
    early), plus the full left-aligned sequences with their mask.
    """
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    ids, mask = left_align(input_ids, mask)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    new = []
    for _ in range(max_new_tokens):
        tok = sample_next(step_fn(ids, mask), temperature, top_k, generator)
        tok = torch.where(done, torch.full_like(tok, PAD_ID), tok)
        new.append(tok)
        ids = torch.cat([ids, tok[:, None]], dim=1)
        mask = torch.cat([mask, ~done[:, None]], dim=1)
        if eos_id is not None:
            done = done | (tok == eos_id)
            if bool(done.all()):
                break
    out = torch.stack(new, dim=1) if new else ids.new_zeros((ids.shape[0], 0))
    return out, ids, mask


GROUP_NAMES = ("prelude", "core", "readout", "memory", "semantic", "halt", "tool")


class GroupedModule(nn.Module):
    """Named parameter groups, so a training stage can freeze everything but some of them."""

    def _group_modules(self) -> dict[str, list[nn.Module | nn.Parameter | None]]:
        raise NotImplementedError

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter in exactly one of ``GROUP_NAMES`` (groups a model lacks are empty)."""
        groups: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
        for name, parts in self._group_modules().items():
            for part in parts:
                if isinstance(part, nn.Parameter):
                    groups[name].append(part)
                elif part is not None:
                    groups[name].extend(part.parameters())
        return groups

    def set_trainable(self, groups: tuple[str, ...] | list[str] | set[str]) -> None:
        """Make exactly the parameters of ``groups`` trainable; freeze all others."""
        unknown = sorted(set(groups) - set(GROUP_NAMES))
        if unknown:
            raise ValueError(f"unknown parameter group(s) {unknown}; known: {list(GROUP_NAMES)}")
        for name, params in self.param_groups().items():
            for p in params:
                p.requires_grad_(name in groups)


DEFAULT_TOOLS = ("calculator", "csp_solver", "dsl_search", "list_eval", "sudoku_solver")


class ConfigBase:
    """Shared by the frozen model configs: type checks against each field's default, dict I/O."""

    def _check_types(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value, default = getattr(self, f.name), f.default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if ok:
                    object.__setattr__(self, f.name, float(value))
            elif isinstance(default, str):
                ok = isinstance(value, str)
            elif isinstance(default, tuple):
                if isinstance(value, list):
                    value = tuple(value)
                    object.__setattr__(self, f.name, value)
                ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
            else:
                ok = True
            if not ok:
                raise TypeError(f"{type(self).__name__}.{f.name} must be like {default!r}, got {value!r}")

    def _check_trunk(self, d_model: int, n_heads: int, vocab_size: int, tool_names: tuple[str, ...]) -> None:
        name = type(self).__name__
        if n_heads < 1 or d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"{name}: d_model ({d_model}) must split into n_heads ({n_heads}) even-sized heads")
        if vocab_size < VOCAB_SIZE:
            raise ValueError(f"{name}: vocab_size {vocab_size} < tokenizer's {VOCAB_SIZE}")
        if len(set(tool_names)) != len(tool_names) or not all(_TOOL_NAME.fullmatch(t) for t in tool_names):
            raise ValueError(f"{name}: tool_names must be distinct tool names, got {tool_names}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build from a dict (e.g. a checkpoint's); unknown keys are rejected, lists become tuples."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]
