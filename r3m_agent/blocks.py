"""The Transformer block both models use, the input layout (masks, positions, answer slots) and
the output both return.

Padding convention: ``attention_mask`` is True (or 1) on real tokens. Positions come from the
cumulative mask, so a row's real tokens get positions 0, 1, ... wherever its pads sit; with
rotary embeddings (Su et al. 2021) and pads removed from the keys, left and right padding give
the same numbers. Every query may attend to itself, so a pad row never softmaxes an empty set.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from r3m_agent.tokenizer import MASK_ID

MODES = ("causal", "fill")


class ModelOutput(NamedTuple):
    """What both models return. S = refinement steps run (1 for the dense model).

    logits: [B, T, V] (causal) or [B, answer_len, V] (fill: the answer slots only), from the step
    each row stopped at. step_logits: [S, B, T or answer_len, V], the readout after every step
    (deep supervision); only when every row ran all S steps (no halting), else ``logits[None]``.
    halt_probs: [B, S] the halting distribution (each row sums to 1) when every row ran all steps,
    else None. steps: LongTensor [B], the step each row stopped at (its refinement steps run).
    halt_logp: [B] log-probability of stopping at ``steps`` under the halting distribution.
    writes: [B] hard memory writes made in this call (0 or 1). write_probs: [B] soft write gate.
    tool_logits: [B, 1 + n_tools] at the decision point; index 0 = "answer", then cfg.tool_names.
    carry: the memory state after this call (R3M) or None. hidden: final hidden states [B, T', d].
    drift: [B] mean squared change of the state in the last refinement step (R3M; None for dense):
    zero at a fixed point, so penalising it discourages "overthinking" drift beyond training K.
    blocks: [B] block applications each row cost in this call (prelude once, core per step).
    """

    logits: torch.Tensor
    step_logits: torch.Tensor
    halt_probs: torch.Tensor | None
    steps: torch.Tensor
    writes: torch.Tensor
    write_probs: torch.Tensor | None
    tool_logits: torch.Tensor
    carry: Any
    hidden: torch.Tensor
    drift: torch.Tensor | None = None
    halt_logp: torch.Tensor | None = None
    blocks: torch.Tensor | None = None


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
    """Inputs after ``prepare``: the token ids the trunk sees, their mask, positions and layout.

    The decision point (where the tool choice, the halting decision and the memory write read the
    state) never sees the payload: in causal mode it is the ``<sep>`` that ends the observation
    (later positions hold the payload, ``payload`` marks them); in fill mode it is the last input
    position before the answer slots (the ``<sep>``), and the slots' inputs are mask tokens (the
    choice conditions their readout, not their input).
    """

    ids: torch.Tensor  # [B, T'] (fill: input then answer_len mask tokens)
    mask: torch.Tensor  # [B, T'] bool
    attn_mask: torch.Tensor  # [B, 1, T', T'] bool, True = may attend
    positions: torch.Tensor  # [B, T']
    causal: bool
    answer_len: int  # 0 in causal mode
    decision: torch.Tensor  # [B] index of the decision point
    payload: torch.Tensor  # [B, T'] bool: the positions that write the payload (causal) or the answer slots (fill)
    last: torch.Tensor  # [B] index of each row's last real token
    outputs: torch.Tensor | None = None  # [B, W] (fill) positions read out, in answer order; None: every position
    out_valid: torch.Tensor | None = None  # [B, W] bool: which of ``outputs`` are real (rows have fewer)
    coords: torch.Tensor | None = None  # [B, T', C] coordinate ids (0: none)

    def select(self, rows: torch.Tensor) -> "Batch":
        """The rows ``rows`` of the batch (e.g. those still refining)."""
        def pick(t):
            return None if t is None else t[rows]

        return Batch(self.ids[rows], self.mask[rows], self.attn_mask[rows], self.positions[rows], self.causal,
                     self.answer_len, self.decision[rows], self.payload[rows], self.last[rows], pick(self.outputs),
                     pick(self.out_valid), pick(self.coords))


def prepare(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, mode: str,
            answer_len: int | None, decision_index: torch.Tensor | None = None,
            input_sees_slots: bool = True, *, slots: torch.Tensor | None = None,
            outputs: torch.Tensor | None = None, out_valid: torch.Tensor | None = None,
            coords: torch.Tensor | None = None, window: tuple[int, int] | None = None,
            peers: bool = False) -> Batch:
    """Build masks and positions.

    Fill mode takes its answer slots either appended here (``answer_len`` mask tokens after the
    input, read out in order) or laid out by the caller (a task view, ``r3m.learn.io``): ``slots``
    [B, T] marks the positions whose input is a mask token and ``outputs`` [B, W] the positions
    read out (slots or input positions), ``out_valid`` which of them are real. Every position
    attends to every other, unless ``input_sees_slots`` is False: then the input attends only to
    itself and the slots read it. ``window=(left, right)`` limits the input positions' attention to
    that band (a local rule); the decision point and the slots still read the whole input (so
    halting and the tool choice can see every position, as a summary token does). ``peers`` limits
    each input position with coordinates to the positions that share one of its coordinate values
    (a Sudoku cell sees its row, column and box: the constraint graph a recurrent relational network
    passes messages over, Palm et al. 2018); the decision point and the slots still read everything.

    ``decision_index``: where the observation ends in each row (causal: teacher forcing puts the
    payload after it; fill: the last input position before the slots); default: the last real
    token that is not a slot.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} != input_ids shape {tuple(input_ids.shape)}")
    causal = mode == "causal"
    B, device = input_ids.shape[0], input_ids.device
    n_answer = 0
    if causal and (slots is not None or outputs is not None):
        raise ValueError("slots and outputs are fill-mode layouts")
    if not causal and slots is None:
        if answer_len is None or answer_len < 0:
            raise ValueError(f"fill mode needs answer_len >= 0 (0: the observation alone) or a slot layout, "
                             f"got {answer_len}")
        n_answer = answer_len
        pad = torch.full((B, n_answer), MASK_ID, dtype=input_ids.dtype, device=device)
        T0 = input_ids.shape[1]
        input_ids = torch.cat([input_ids, pad], dim=1)
        mask = torch.cat([mask, torch.ones_like(pad, dtype=torch.bool)], dim=1)
        if coords is not None:
            coords = torch.cat([coords, coords.new_zeros(B, n_answer, coords.shape[-1])], dim=1)
        slots = (torch.arange(T0 + n_answer, device=device) >= T0).expand(B, -1)
        if outputs is None and n_answer:
            outputs = torch.arange(T0, T0 + n_answer, device=device).expand(B, -1)
    elif not causal:
        if slots.shape != input_ids.shape:
            raise ValueError(f"slots shape {tuple(slots.shape)} != input_ids shape {tuple(input_ids.shape)}")
        slots = slots.to(device=device, dtype=torch.bool)
        n_answer = int(slots.sum(1).max()) if slots.numel() else 0
    if outputs is not None:
        outputs = outputs.to(device=device, dtype=torch.long)
        out_valid = torch.ones_like(outputs, dtype=torch.bool) if out_valid is None else out_valid.to(device).bool()
    T = input_ids.shape[1]
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    last = (mask.long() * torch.arange(1, T + 1, device=device)).argmax(dim=1)
    allowed = mask[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=device).tril()
        decision = last if decision_index is None else decision_index.to(device=device, dtype=torch.long)
        payload = torch.arange(T, device=device)[None, :] > decision[:, None]
    else:
        if decision_index is None:
            inputs = mask & ~slots
            decision = (inputs.long() * torch.arange(1, T + 1, device=device)).argmax(dim=1)
        else:
            decision = decision_index.to(device=device, dtype=torch.long)
        payload = slots
        if not input_sees_slots:
            allowed = allowed & (slots[:, None, :, None] | ~slots[:, None, None, :])
    if window is not None:  # the input's positions see their band; the decision point and slots read everything
        left, right = window
        i = torch.arange(T, device=device)
        offset = i[None, :] - i[:, None]  # key - query
        band = (offset >= -left) & (offset <= right)
        reader = payload.clone() if not causal else torch.zeros_like(mask)
        reader[torch.arange(B, device=device), decision] = True
        allowed = allowed & (band[None, None] | reader[:, None, :, None])
    if peers:
        if coords is None:
            raise ValueError("peers=True needs coordinates (a task view with coordinate channels)")
        coords = coords.to(device)
        placed = coords > 0
        share = ((coords[:, :, None, :] == coords[:, None, :, :]) & placed[:, :, None, :]).any(-1)  # [B, Tq, Tk]
        reader = ~placed.any(-1)  # positions without coordinates (the decision point, slots) read everything
        allowed = allowed & (share | reader[:, :, None])[:, None]
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=device)
    return Batch(input_ids, mask, allowed, positions, causal, n_answer, decision, payload, last, outputs,
                 out_valid, coords)


def embed_inputs(embed: nn.Embedding, coord_embed: nn.Embedding | None, b: Batch,
                 summary: bool = False) -> torch.Tensor:
    """Token embeddings plus the sum of the coordinate embeddings (a task view's structure).

    ``summary`` (fill mode): each answer slot also gets the observation's summary, the RMS-normalised
    mean of its positions' embeddings, as memory networks' question embedding: the slot's first
    memory read then already knows what is asked. Measured (``bench/memory_read_path.py``): with it,
    a slot's read on gold writes learns bAbI task 1; without, the reads settle on the newest
    sentence, whatever the depth, width or where the read sits in a step."""
    tokens = x = embed(b.ids)
    if b.coords is not None:
        if coord_embed is None:
            raise ValueError("coords given but this config has no coordinate channels (cfg.coords)")
        x = x + coord_embed(b.coords).sum(dim=-2)
    if summary and not b.causal:
        # what the observation says: its tokens' embeddings (not their coordinates, which a short
        # observation shares, nor the <sep> or the slots, which every observation has)
        seen = b.mask & ~b.payload
        seen = seen.scatter(1, b.decision[:, None], False).to(x.dtype)[..., None]
        mean = (tokens * seen).sum(1) / seen.sum(1).clamp(min=1.0)
        mean = mean * torch.rsqrt(mean.pow(2).mean(-1, keepdim=True) + 1e-6)
        x = x + b.payload.to(x.dtype)[..., None] * mean[:, None, :]
    return x


def decision_state(h: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The state [B, d] the tool choice and the halting decision read: the decision point (the
    ``<sep>`` after the observation; it never depends on the payload)."""
    return h[torch.arange(h.shape[0], device=h.device), batch.decision]


WRITE_FROM = ("decision", "mean")


def turn_state(h: torch.Tensor, batch: Batch, how: str = "decision") -> torch.Tensor:
    """The state [B, d] that a memory write stores of the turn. "decision": the last real token
    (causal: it has seen the whole turn) or the decision point (fill: the ``<sep>``, which attends
    to the whole observation and never to the answer slots' mask tokens). "mean": the mean of the
    observation's token states (never the payload or answer slots), as a memory network stores a
    sentence as a bag of its words: on streamed bAbI-style stories the ``<sep>`` state carried too
    little of the sentence to be read back (task 1 at chance after 800 steps), the mean all of it
    (100%, the same run; ``results/memory-write-*``)."""
    if how == "mean":
        w = (batch.mask & ~batch.payload).to(h.dtype)
        return (h * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1.0)
    index = batch.last if batch.causal else batch.decision
    return h[torch.arange(h.shape[0], device=h.device), index]


def answer_part(t: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The read-out positions along the token dim (dim -2 of [.., T', V]) in fill mode."""
    if batch.outputs is None:
        return t if batch.causal or not batch.answer_len else t[..., -batch.answer_len:, :]
    index = batch.outputs
    while index.dim() < t.dim() - 1:
        index = index[None]
    index = index.expand(*t.shape[:-2], index.shape[-1])
    return t.gather(-2, index[..., None].expand(*index.shape, t.shape[-1]))


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
