"""R3M: a recurrent refinement core with episodic and semantic memory, halting and a tool head.

    x       = prelude(embed(tokens))                          input encoding, computed once
    h_0     = x (or a learned vector)
    h_{k+1} = (1 - eta) h_k + eta f(h_k + x + read(h_k + x))  one shared block stack f, K times
    logits_k = head(norm(h_k))                                a readout after every step

f ends in an RMSNorm and eta in (eta_min, eta_max) is per channel, so h is a convex mix of
bounded vectors and stays bounded for any K (K is chosen per call, also beyond training).
Re-injecting x at every step is the "input recall" of Deep Thinking (Bansal et al. 2022),
which keeps long iterations from forgetting the problem; ``grad_steps`` runs the earlier steps
without a graph, as TRM (Jolicoeur-Martineau 2025) and Deep Thinking do.

In causal mode a memory write pools the last token, which has seen the whole sequence, so
reads in a call see only the carry that came in: this call's writes become readable from
the next call (turn). In fill mode (bidirectional anyway) a write at step k is read at k+1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from r3m_agent.blocks import (
    Batch, Block, GroupedModule, ModelOutput, RMSNorm, answer_part, init_weights, pool, prepare, rotary,
)
from r3m_agent.config import ConfigBase
from r3m_agent.memory import Carry, EpisodicMemory, SemanticMemory, empty_carry
from r3m_agent.sampling import generate_tokens
from r3m_agent.tokenizer import EOS_ID, VOCAB_SIZE


# -- PonderNet halting (Banino, Balaguer & Blundell 2021, arXiv:2107.05407) -------------------------
class HaltingHead(nn.Module):
    def __init__(self, d_model: int, bias_init: float) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, 1)
        self.bias_init = bias_init

    def reset_parameters(self) -> None:
        # small weights: every row starts at sigmoid(bias_init), whatever its state
        nn.init.normal_(self.proj.weight, 0.0, 0.02)
        nn.init.constant_(self.proj.bias, self.bias_init)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """lambda_k [B] in float32 (products over many steps lose too much in bf16)."""
        return torch.sigmoid(self.proj(pooled).float().squeeze(-1))


def halting_distribution(lambdas: torch.Tensor) -> torch.Tensor:
    """p [B, S] from per-step halting probabilities [B, S]; the last step takes the remainder."""
    survive = torch.cumprod(1.0 - lambdas, dim=1)
    before = torch.cat([torch.ones_like(survive[:, :1]), survive[:, :-1]], dim=1)
    p = lambdas * before
    return torch.cat([p[:, :-1], before[:, -1:]], dim=1)


def threshold_steps(halt_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per row, the first step k (1-based) whose cumulative halting probability reaches ``threshold``."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    below = (halt_probs.cumsum(dim=1) < threshold).sum(dim=1)
    return (below + 1).clamp(max=halt_probs.shape[1])


@dataclass(frozen=True)
class R3MConfig(ConfigBase):
    vocab_size: int = VOCAB_SIZE
    """Token embeddings; at least the tokenizer's vocabulary."""
    d_model: int = 128
    """Residual width (also the width of memory slots)."""
    n_heads: int = 4
    """Attention heads; d_model / n_heads must be even (rotary)."""
    mlp_ratio: float = 4.0
    """MLP hidden width = round(mlp_ratio * d_model)."""
    prelude_layers: int = 1
    """Blocks run once on the embeddings to give x (0: x is the embedding)."""
    core_layers: int = 2
    """Blocks in the shared core f, iterated K times."""
    K: int = 8
    """Refinement steps when a call does not pass K."""
    eta_min: float = 0.05
    """Lower bound of the mixing rate eta."""
    eta_max: float = 0.95
    """Upper bound of the mixing rate eta."""
    eta_init: float = 0.5
    """Initial eta (every channel)."""
    learn_eta: bool = True
    """Learn eta per channel (bounded to (eta_min, eta_max)) or keep it at eta_init."""
    h_init: str = "input"
    """h_0: "input" (h_0 = x) or "learned" (one learned vector for every position)."""
    memory: bool = True
    """Episodic memory on/off (off: no memory parameters, carry is None)."""
    mem_slots: int = 16
    """Episodic slots per sequence (FIFO when full)."""
    write_bias_init: float = 0.0
    """Initial write-gate bias. A closed hard gate gets no gradient (an unwritten slot is never
    read), so the gate starts at its boundary, writing about half the time."""
    semantic_slots: int = 256
    """Learned key-value pairs of the semantic memory (0: none)."""
    semantic: bool = False
    """Read the semantic memory by default (``forward(semantic=...)`` overrides per call)."""
    halt_bias_init: float = -3.0
    """Initial halting bias; negative to avoid the halt-at-step-1 collapse."""
    halt_threshold: float = 0.5
    """Cumulative halting probability at which inference stops (halt=True)."""
    rope_base: float = 10000.0
    """Rotary embedding base."""
    tool_names: tuple[str, ...] = ()
    """Tool head classes after "answer", in this order (the scripts pass every registered tool)."""

    def __post_init__(self) -> None:
        self._check_types()
        self._check_trunk(self.d_model, self.n_heads, self.vocab_size, self.tool_names)
        problems = []
        if self.prelude_layers < 0 or self.core_layers < 1:
            problems.append("prelude_layers >= 0 and core_layers >= 1")
        if self.K < 1:
            problems.append("K >= 1")
        if not 0.0 < self.eta_min <= self.eta_init <= self.eta_max < 1.0 or self.eta_min == self.eta_max:
            problems.append("0 < eta_min <= eta_init <= eta_max < 1 with eta_min < eta_max")
        if self.h_init not in ("input", "learned"):
            problems.append("h_init in ('input', 'learned')")
        if self.memory and self.mem_slots < 1:
            problems.append("mem_slots >= 1 when memory is on")
        if self.semantic_slots < 0 or (self.semantic and not self.semantic_slots):
            problems.append("semantic_slots >= 0, and > 0 when semantic is on")
        if not 0.0 < self.halt_threshold <= 1.0 or self.mlp_ratio <= 0:
            problems.append("0 < halt_threshold <= 1 and mlp_ratio > 0")
        if problems:
            raise ValueError(f"R3MConfig needs {'; '.join(problems)}: got {self}")

    @property
    def mlp_hidden(self) -> int:
        return max(1, round(self.mlp_ratio * self.d_model))


@dataclass
class _Trace:
    """What the refinement loop records at every step."""

    logits: list[torch.Tensor] = field(default_factory=list)
    lambdas: list[torch.Tensor] = field(default_factory=list)
    tools: list[torch.Tensor] = field(default_factory=list)
    hard: list[torch.Tensor] = field(default_factory=list)
    soft: list[torch.Tensor] = field(default_factory=list)
    carries: list[Carry] = field(default_factory=list)
    drift: torch.Tensor | None = None


class R3M(GroupedModule):
    def __init__(self, cfg: R3MConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or R3MConfig()
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.prelude = nn.ModuleList(Block(d, cfg.n_heads, cfg.mlp_hidden) for _ in range(cfg.prelude_layers))
        self.input_norm = RMSNorm(d)
        self.core = nn.ModuleList(Block(d, cfg.n_heads, cfg.mlp_hidden) for _ in range(cfg.core_layers))
        self.core_norm = RMSNorm(d)
        frac = (cfg.eta_init - cfg.eta_min) / (cfg.eta_max - cfg.eta_min)
        eta_logit = torch.full((d,), math.log(max(frac, 1e-6) / max(1.0 - frac, 1e-6)))
        if cfg.learn_eta:
            self.eta_logit = nn.Parameter(eta_logit)
        else:
            self.register_buffer("eta_logit", eta_logit)
        self.h_init = nn.Parameter(torch.randn(d)) if cfg.h_init == "learned" else None
        self.readout_norm = RMSNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.memory = EpisodicMemory(d, cfg.n_heads, cfg.mem_slots, cfg.write_bias_init) if cfg.memory else None
        self.semantic = SemanticMemory(d, cfg.n_heads, cfg.semantic_slots) if cfg.semantic_slots else None
        self.halting = HaltingHead(d, cfg.halt_bias_init)
        self.tool_head = nn.Linear(d, 1 + len(cfg.tool_names))
        # x, h and every block input are RMS-normalised (unit scale), unlike a GPT's 0.02-scale
        # residual stream, so linear layers get LeCun-normal weights (std 1/sqrt(fan_in), as TRM):
        # with nanoGPT's fixed 0.02 the block updates start ~100x smaller than the stream and the
        # core barely learns (measured: a copy task stuck at chance for 300 steps; 100% with this).
        init_weights(self)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.in_features))
        for blk in [*self.prelude, *self.core]:  # GPT-2's residual scaling
            for proj in (blk.attn.proj, blk.mlp.down):
                proj.weight.data /= math.sqrt(2 * (cfg.prelude_layers + cfg.core_layers))
        for part in (self.memory, self.semantic, self.halting):
            if part is not None:
                part.reset_parameters()

    def _group_modules(self) -> dict[str, list]:
        core = [self.core, self.core_norm, self.h_init]
        if isinstance(self.eta_logit, nn.Parameter):
            core.append(self.eta_logit)
        return {"prelude": [self.embed, self.prelude, self.input_norm], "core": core,
                "readout": [self.readout_norm, self.head], "memory": [self.memory],
                "semantic": [self.semantic], "halt": [self.halting], "tool": [self.tool_head]}

    def eta(self) -> torch.Tensor:
        return self.cfg.eta_min + (self.cfg.eta_max - self.cfg.eta_min) * torch.sigmoid(self.eta_logit)

    def initial_carry(self, batch_size: int, device: torch.device | str | None = None) -> Carry | None:
        """An empty memory for ``batch_size`` new episodes (None when memory is off)."""
        if self.memory is None:
            return None
        device = device if device is not None else self.embed.weight.device
        return empty_carry(batch_size, self.cfg.mem_slots, self.cfg.d_model, device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                mode: str = "causal", answer_len: int | None = None, K: int | None = None,
                carry: Carry | None = None, grad_steps: int | None = None, halt: bool = False,
                halt_threshold: float | None = None, early_exit: bool = False,
                semantic: bool | None = None) -> ModelOutput:
        """Run K refinement steps (default cfg.K). See ``ModelOutput`` for the fields.

        grad_steps: only the last ``grad_steps`` steps keep the autograd graph (None: all).
        halt: per row, ``logits`` (and tool logits, writes, carry) come from the first step whose
        cumulative halting probability reaches ``halt_threshold`` (default cfg.halt_threshold);
        otherwise from step K. early_exit (with halt): stop once every row has halted.
        semantic: read the semantic memory (default cfg.semantic).
        """
        K = self.cfg.K if K is None else K
        if K < 1 or (grad_steps is not None and grad_steps < 0):
            raise ValueError(f"need K >= 1 and grad_steps >= 0 or None, got K={K}, grad_steps={grad_steps}")
        threshold = self.cfg.halt_threshold if halt_threshold is None else halt_threshold
        use_semantic = self.cfg.semantic if semantic is None else semantic
        if use_semantic and self.semantic is None:
            raise ValueError("semantic=True but this config has semantic_slots=0")
        b = prepare(input_ids, attention_mask, mode, answer_len)
        rope = rotary(b.positions, self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_base)
        x = self.embed(b.ids)
        for blk in self.prelude:
            x = blk(x, b.attn_mask, rope)
        x = self.input_norm(x)
        carry = self._carry_in(carry, x)
        trace, h = self._refine(x, b, rope, carry, K, grad_steps, early_exit and halt, threshold, use_semantic)
        return self._finish(trace, h, halt, threshold)

    def _carry_in(self, carry: Carry | None, x: torch.Tensor) -> Carry | None:
        if self.memory is None:
            if carry is not None:
                raise ValueError("this config has memory=False: pass carry=None")
            return None
        if carry is None:
            return self.initial_carry(x.shape[0], x.device)
        want = (x.shape[0], self.cfg.mem_slots, self.cfg.d_model)
        if tuple(carry.slots.shape) != want:
            raise ValueError(f"carry slots have shape {tuple(carry.slots.shape)}, expected {want}")
        return carry

    def _step(self, h: torch.Tensor, x: torch.Tensor, b: Batch, rope: tuple[torch.Tensor, torch.Tensor],
              readable: Carry | None, use_semantic: bool) -> torch.Tensor:
        z = h + x
        if readable is not None:
            z = z + self.memory.read(z, readable)
        if use_semantic:
            z = z + self.semantic(z)
        for blk in self.core:
            z = blk(z, b.attn_mask, rope)
        eta = self.eta().to(z.dtype)
        return (1.0 - eta) * h + eta * self.core_norm(z)

    def _refine(self, x: torch.Tensor, b: Batch, rope: tuple[torch.Tensor, torch.Tensor], carry: Carry | None,
                K: int, grad_steps: int | None, early_exit: bool, threshold: float,
                use_semantic: bool) -> tuple[_Trace, torch.Tensor]:
        h = x if self.h_init is None else self.h_init.to(x.dtype).expand_as(x)
        trace, current = _Trace(), carry
        survive = torch.ones(x.shape[0], device=x.device)
        for k in range(K):
            keep_graph = grad_steps is None or k >= K - grad_steps
            with torch.set_grad_enabled(torch.is_grad_enabled() and keep_graph):
                prev, h = h, self._step(h, x, b, rope, carry if b.causal else current, use_semantic)
                pooled = pool(h, b)
                trace.logits.append(self.head(self.readout_norm(answer_part(h, b))))
                lam = self.halting(pooled)
                trace.lambdas.append(lam)
                trace.tools.append(self.tool_head(pooled))
                if current is not None:
                    current, hard, soft = self.memory.write(current, pooled)
                    trace.hard.append(hard)
                    trace.soft.append(soft)
                    trace.carries.append(current)
            if early_exit:
                survive = survive * (1.0 - lam.detach())
                if bool((1.0 - survive >= threshold).all()):
                    break
        w = b.mask.to(h.dtype)
        trace.drift = (((h - prev).float() ** 2).mean(-1) * w).sum(1) / w.sum(1).clamp(min=1.0)
        return trace, h

    def _finish(self, trace: _Trace, h: torch.Tensor, halt: bool, threshold: float) -> ModelOutput:
        S, B = len(trace.logits), h.shape[0]
        rows = torch.arange(B, device=h.device)
        step_logits = torch.stack(trace.logits)
        halt_probs = halting_distribution(torch.stack(trace.lambdas, dim=1))
        steps = threshold_steps(halt_probs, threshold) if halt else torch.full((B,), S, device=h.device)
        idx = steps - 1
        writes, write_probs, carry = torch.zeros(B, dtype=torch.long, device=h.device), None, None
        if trace.carries:
            taken = torch.arange(S, device=h.device)[None, :] < steps[:, None]
            writes = (torch.stack(trace.hard, dim=1) & taken).sum(dim=1)
            write_probs = torch.stack(trace.soft, dim=1)
            carry = trace.carries[-1]
            if halt:  # the memory as it was when each row halted
                carry = Carry(*(torch.stack([getattr(c, f) for c in trace.carries])[idx, rows]
                                for f in ("slots", "valid", "ptr")))
        return ModelOutput(
            logits=step_logits[idx, rows], step_logits=step_logits, halt_probs=halt_probs, steps=steps,
            writes=writes, write_probs=write_probs, tool_logits=torch.stack(trace.tools)[idx, rows],
            carry=carry, hidden=h, drift=trace.drift,
        )

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 64, temperature: float = 1.0, top_k: int | None = None,
                 eos_id: int | None = EOS_ID, *, K: int | None = None, carry: Carry | None = None,
                 halt: bool = False, halt_threshold: float | None = None, semantic: bool | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, Carry | None]:
        """(new tokens [B, N] with PAD after each row's EOS, carry after the turn).

        Every token is predicted with the carry that came in (this turn's writes are not
        readable within the turn); the returned carry is that of one call over prompt + output,
        exactly what a training pass over the same transcript computes.
        """
        kw = dict(K=K, carry=carry, halt=halt, halt_threshold=halt_threshold, semantic=semantic)

        def step(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self(ids, mask, early_exit=halt, **kw).logits[:, -1]

        new, ids, mask = generate_tokens(step, input_ids, attention_mask, max_new_tokens, temperature, top_k,
                                         eos_id, generator)
        return new, self(ids, mask, **kw).carry
