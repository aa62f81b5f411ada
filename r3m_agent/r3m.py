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

A call (one turn of an episode) writes the memory once, after the refinement: the state of
its last token (causal) or of its decision point (fill: the ``<sep>`` that ends the input), so
reads in a call see only the carry that came in and this call's write is readable from the
next call (turn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from r3m_agent.blocks import (
    Batch, Block, GroupedModule, ModelOutput, RMSNorm, answer_part, decision_state, embed_inputs, init_weights,
    WRITE_FROM, prepare, rotary, turn_state,
)
from r3m_agent.config import ConfigBase, choice_count, coord_table_size
from r3m_agent.memory import Carry, EpisodicMemory, SemanticMemory, empty_carry
from r3m_agent.sampling import generate_tokens
from r3m_agent.tokenizer import EOS_ID, VOCAB_SIZE


# -- PonderNet halting (Banino, Balaguer & Blundell 2021, arXiv:2107.05407) -------------------------
class HaltingHead(nn.Module):
    """lambda_k from the decision state and how much the state still moved in step k.

    The second input, log of the largest per-position change of the state in the step, says
    whether any position is still being revised, whatever the input's length (FPRM halts when the
    latent state stops changing); read from the decision state alone, a halting head trained on
    short strings stopped 2x strings at the steps of the trained ones (prefix parity: 7% at 2x).
    Its weight starts at -1 around a change of ``CHANGE_REF`` (states are unit-scale), so the head
    starts from FPRM's rule, "stop some steps after the state settles", and learns from there: at
    0 the weight had too far to go in a stage of a few hundred steps (measured: -0.05 after 150)."""

    CHANGE_REF = 1e-2

    def __init__(self, d_model: int, bias_init: float) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, 1)
        self.change = nn.Parameter(torch.zeros(1))
        self.bias_init = bias_init

    def reset_parameters(self) -> None:
        # small weights: every row starts at sigmoid(bias_init), whatever its state
        nn.init.normal_(self.proj.weight, 0.0, 0.02)
        nn.init.constant_(self.proj.bias, self.bias_init)
        nn.init.constant_(self.change, -1.0)

    def forward(self, pooled: torch.Tensor, change: torch.Tensor | None = None) -> torch.Tensor:
        """lambda_k [B] in float32 (products over many steps lose too much in bf16); ``change`` [B]:
        the largest mean-square change of a real position's state in the step."""
        logit = self.proj(pooled).float().squeeze(-1)
        if change is not None:
            logit = logit + self.change * (torch.log(change.float() + 1e-6) - math.log(self.CHANGE_REF))
        return torch.sigmoid(logit)


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
    input_sees_slots: bool = False
    """Fill mode: the input positions also attend to the answer slots. Off (default): the input
    refines on its own and the slots read it; on prefix parity, the input-blind layout escaped the
    loss plateau on seeds where full attention stayed on it (``bench/reproduce.py`` runs)."""
    memory: bool = True
    """Episodic memory on/off (off: no memory parameters, carry is None)."""
    mem_slots: int = 16
    """Episodic slots per sequence (FIFO when full)."""
    write_gate: bool = False
    """Episodic writes through the learned gate (``forward(write_gate=...)`` overrides per call).
    Off (the plan's Stage 1): FIFO, every turn written; the gate is learned once reads work."""
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
    """Tool head classes after "answer", in this order (the scripts pass every registered tool);
    one more class after them answers with the last verified tool result."""
    symbols: tuple[str, ...] = ()
    """Symbols beyond the tokenizer's that task views read or write (``view:symbol``), ids
    VOCAB_SIZE + i in this order (``r3m.learn.io.model_tables``)."""
    coords: tuple[str, ...] = ()
    """Coordinate channels of task views (``view#channel=size``), embedded and added to the input."""
    feedback: bool = False
    """Each refinement step sees the previous step's predictions at the read-out positions (when a
    call asks for it: ``forward(feedback=True)``, a task view's choice)."""

    def __post_init__(self) -> None:
        self._check_types()
        self._check_trunk(self.d_model, self.n_heads, self.vocab_size, self.tool_names, self.symbols, self.coords)
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


HALT_MODES = ("threshold", "sample", "stable")


class RefineState(NamedTuple):
    """Where a refinement left off, to continue it in a later call (TRM's deep supervision: each
    segment starts from the previous segment's state, detached). ``hidden`` [B, T', d] as
    ``ModelOutput.hidden``; ``logits`` the last readout, fed back when the call asks for feedback."""

    hidden: torch.Tensor
    logits: torch.Tensor | None = None

    @classmethod
    def of(cls, out: "ModelOutput") -> "RefineState":
        """The detached state an output ends in: a later segment continues it without a gradient path
        into this call."""
        return cls(out.hidden.detach(), out.logits.detach())


class _Stopped(NamedTuple):
    """What the rows that stopped at one step produced (indices into the full batch)."""

    rows: torch.Tensor
    logits: torch.Tensor
    tool_logits: torch.Tensor
    hidden: torch.Tensor
    drift: torch.Tensor
    halt_logp: torch.Tensor
    carry: Carry | None
    writes: torch.Tensor
    write_probs: torch.Tensor


class R3M(GroupedModule):
    def __init__(self, cfg: R3MConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or R3MConfig()
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.coord_embed = nn.Embedding(coord_table_size(cfg.coords), d, padding_idx=0) if cfg.coords else None
        self.feedback = nn.Linear(cfg.vocab_size, d, bias=False) if cfg.feedback else None
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
        n_choices = choice_count(cfg.tool_names)
        self.tool_head = nn.Linear(d, n_choices)
        # the choice (answer or a tool) conditions the payload: causal, an embedding added to the
        # payload positions' input; fill, a scale and shift of the answer slots' readout (FiLM), so
        # the slots refine once and the choice, read at the same step, picks what they say
        self.choice_embed = nn.Embedding(n_choices, d)
        self.choice_film = nn.Embedding(n_choices, 2 * d)
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
        nn.init.zeros_(self.choice_film.weight)  # no conditioning until trained
        if self.coord_embed is not None:
            # the token embeddings' scale: at 1.0 (50x them) a coordinate that a whole observation
            # shares drowned what its tokens say (every word of a memory sentence had one state, and
            # every write was the same vector: cosine 1.000 between sentences)
            nn.init.normal_(self.coord_embed.weight, 0.0, 0.02)
            with torch.no_grad():
                self.coord_embed.weight[0].zero_()  # "no coordinate" adds nothing
        if self.feedback is not None:
            nn.init.zeros_(self.feedback.weight)  # no feedback until trained

    def _group_modules(self) -> dict[str, list]:
        core = [self.core, self.core_norm, self.h_init]
        if isinstance(self.eta_logit, nn.Parameter):
            core.append(self.eta_logit)
        return {"prelude": [self.embed, self.coord_embed, self.prelude, self.input_norm],
                "core": [*core, self.feedback],
                "readout": [self.readout_norm, self.head], "memory": [self.memory],
                "semantic": [self.semantic], "halt": [self.halting],
                "tool": [self.tool_head, self.choice_embed, self.choice_film]}

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
                carry: Carry | None = None, grad_steps: int | None = None, halt: str | None = None,
                halt_steps: torch.Tensor | None = None, halt_threshold: float | None = None,
                halt_patience: int = 2, generator: torch.Generator | None = None, choice: torch.Tensor | None = None,
                decision_index: torch.Tensor | None = None, read_memory: bool = True,
                write_threshold: float = 0.5, semantic: bool | None = None, write_gate: bool | None = None,
                slots: torch.Tensor | None = None,
                outputs: torch.Tensor | None = None, out_valid: torch.Tensor | None = None,
                coords: torch.Tensor | None = None, window: tuple[int, int] | None = None, peers: bool = False,
                feedback: bool = False, summary: bool = False, write_from: str = "decision",
                state: RefineState | None = None) -> ModelOutput:
        """Refine for up to K steps (default cfg.K). See ``ModelOutput`` for the fields.

        Halting, per row: ``halt=None`` runs every row K steps (the training forward: every step's
        readout and the halting distribution come back); ``halt="threshold"`` stops a row at the
        first step whose cumulative halting probability reaches ``halt_threshold`` (default
        cfg.halt_threshold), ``halt="sample"`` samples its step from the halting distribution
        (with ``generator``), ``halt_steps`` [B] stops each row at a given step (re-scoring a
        sampled step); ``halt="stable"`` needs no trained head: a row stops once its predicted
        answer (the argmax at every read-out position) has stayed the same for ``halt_patience``
        consecutive steps (FPRM's "stop when the state stops changing", read at the answer; a
        deterministic rule, so its ``halt_logp`` is 0). A stopped row leaves the batch: it costs no
        more block applications.
        choice [B]: the decision (0 = answer, i = tool i) that conditions the payload (causal: an
        embedding of the payload positions' input; fill: the answer slots' readout, see ``readout``;
        None in fill mode: the readout of "answer").
        decision_index [B]: where the observation ends (see ``blocks.prepare``).
        slots, outputs, out_valid, coords, window: a task view's layout (``blocks.prepare``;
        ``r3m.learn.io`` builds them); coords [B, T, C] are ids into the coordinate table.
        feedback: each step sees the previous step's predictions at ``outputs`` (cfg.feedback).
        summary: the answer slots' inputs get the observation's summary (``blocks.embed_inputs``).
        write_from: what a memory write keeps of the turn (``blocks.turn_state``): "decision" (the
        decision point's state) or "mean" (the mean of the observation's token states).
        state: continue a refinement from ``RefineState`` (h_0 = its hidden; with feedback, its logits
        are the first step's fed-back predictions) instead of from the input.
        grad_steps: only the last ``grad_steps`` steps keep the autograd graph (None: all).
        read_memory: False reads nothing from the memory (the no-memory ablation; writes happen).
        write_threshold: the write gate's value above which the turn is written (0.5; higher at
        evaluation: a tighter write budget).
        write_gate: write through the learned gate (default cfg.write_gate); off: every turn.
        semantic: read the semantic memory (default cfg.semantic).
        """
        K = self.cfg.K if K is None else K
        if K < 1 or (grad_steps is not None and grad_steps < 0):
            raise ValueError(f"need K >= 1 and grad_steps >= 0 or None, got K={K}, grad_steps={grad_steps}")
        if halt is not None and halt not in HALT_MODES:
            raise ValueError(f"halt must be None or one of {HALT_MODES}, got {halt!r}")
        if halt_steps is not None and (halt is not None or int(halt_steps.min()) < 1 or int(halt_steps.max()) > K):
            raise ValueError(f"halt_steps must be in 1..K={K} and excludes halt=, got {halt_steps.tolist()}")
        if write_from not in WRITE_FROM:
            raise ValueError(f"write_from must be one of {WRITE_FROM}, got {write_from!r}")
        if halt == "stable" and halt_patience < 1:
            raise ValueError(f"halt_patience must be >= 1, got {halt_patience}")
        threshold = self.cfg.halt_threshold if halt_threshold is None else halt_threshold
        use_semantic = self.cfg.semantic if semantic is None else semantic
        if use_semantic and self.semantic is None:
            raise ValueError("semantic=True but this config has semantic_slots=0")
        if feedback and self.feedback is None:
            raise ValueError("feedback=True but this config has feedback=False")
        b = prepare(input_ids, attention_mask, mode, answer_len, decision_index, self.cfg.input_sees_slots,
                    slots=slots, outputs=outputs, out_valid=out_valid, coords=coords, window=window, peers=peers)
        rope = rotary(b.positions, self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_base)
        x = embed_inputs(self.embed, self.coord_embed, b, summary)
        if choice is not None:
            choice = choice.to(x.device)
            if b.causal:
                x = x + self.choice_embed(choice)[:, None, :] * b.payload[..., None].to(x.dtype)
        for blk in self.prelude:
            x = blk(x, b.attn_mask, rope)
        x = self.input_norm(x)
        carry = self._carry_in(carry, x)
        gate = self.cfg.write_gate if write_gate is None else write_gate
        opts = _CallOptions(read_memory, write_threshold, feedback and b.outputs is not None, gate, write_from)
        h0, fed0 = self._start(x, state, opts)
        if halt is None and halt_steps is None:
            return self._refine_all(x, b, rope, carry, K, grad_steps, opts, use_semantic, choice, h0, fed0)
        stop = _StopRule(halt, halt_steps, threshold, generator, halt_patience)
        return self._refine_early_exit(x, b, rope, carry, K, stop, opts, use_semantic, choice, h0, fed0)

    def _start(self, x: torch.Tensor, state: RefineState | None, opts: "_CallOptions"):
        """h_0 and the first step's fed-back predictions: from the input, or from where ``state`` left off."""
        if state is None:
            return (x if self.h_init is None else self.h_init.to(x.dtype).expand_as(x)), None
        if tuple(state.hidden.shape) != tuple(x.shape):
            raise ValueError(f"state.hidden has shape {tuple(state.hidden.shape)}, this call's states {tuple(x.shape)}")
        fed = state.logits if opts.feedback else None
        return state.hidden.to(x.dtype), fed

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
              carry: Carry | None, opts: "_CallOptions", use_semantic: bool,
              prev_logits: torch.Tensor | None = None) -> torch.Tensor:
        """h_{k+1} = (1 - eta) h_k + eta f(h_k + x + read(h_k + x)): reads see the carry that came in.
        With feedback, the previous step's predictions at the read-out positions are added to z."""
        z = h + x
        if prev_logits is not None:
            z = z + self._feedback(prev_logits, b, z)
        if carry is not None and opts.read:
            z = z + self.memory.read(z, carry)
        if use_semantic:
            z = z + self.semantic(z)
        for blk in self.core:
            z = blk(z, b.attn_mask, rope)
        eta = self.eta().to(z.dtype)
        return (1.0 - eta) * h + eta * self.core_norm(z)

    def _feedback(self, logits: torch.Tensor, b: Batch, like: torch.Tensor) -> torch.Tensor:
        """The embedding of the predictions [B, W, V] placed at their read-out positions [B, T, d]."""
        value = self.feedback(torch.softmax(logits.float(), dim=-1).to(like.dtype))
        value = value * b.out_valid[..., None].to(value.dtype)
        index = b.outputs[..., None].expand(-1, -1, like.shape[-1])
        return torch.zeros_like(like).scatter_add(1, index, value)

    def readout(self, h: torch.Tensor, choice: torch.Tensor | None = None) -> torch.Tensor:
        """Token logits of states ``h`` [B, T, d]; with ``choice`` [B], scaled and shifted per choice
        (fill mode: the same refined slots say the answer or a call's arguments)."""
        n = self.readout_norm(h)
        if choice is not None:
            scale, shift = self.choice_film(choice).to(n.dtype).chunk(2, dim=-1)
            n = n * (1.0 + scale[:, None]) + shift[:, None]
        return self.head(n)

    def _readout(self, h: torch.Tensor, b: Batch, choice: torch.Tensor | None) -> torch.Tensor:
        return self.readout(answer_part(h, b), None if b.causal else choice)

    def _write(self, carry: Carry | None, h: torch.Tensor, b: Batch, opts: "_CallOptions"):
        """The memory after this call: one gated write of the turn's state."""
        if carry is None:
            return None, torch.zeros(h.shape[0], device=h.device), None
        return self.memory.write(carry, turn_state(h, b, opts.write_from), opts.write_threshold, gate=opts.write_gate)

    def _refine_all(self, x, b, rope, carry, K, grad_steps, opts, use_semantic, choice, h, fed0) -> ModelOutput:
        """Every row K steps, every step's readout kept (training and fixed-K evaluation)."""
        logits, lambdas, tools = [], [], []
        for k in range(K):
            keep_graph = grad_steps is None or k >= K - grad_steps
            with torch.set_grad_enabled(torch.is_grad_enabled() and keep_graph):
                fed = (logits[-1] if logits else fed0) if opts.feedback else None
                prev, h = h, self._step(h, x, b, rope, carry, opts, use_semantic, fed)
                state = decision_state(h, b)
                logits.append(self._readout(h, b, choice))
                lambdas.append(self.halting(state, _max_change(h, prev, b)))
                tools.append(self.tool_head(state))
        new_carry, writes, write_probs = self._write(carry, h, b, opts)
        halt_probs = halting_distribution(torch.stack(lambdas, dim=1))
        B = h.shape[0]
        return ModelOutput(
            logits=logits[-1], step_logits=torch.stack(logits), halt_probs=halt_probs,
            steps=torch.full((B,), K, dtype=torch.long, device=h.device), writes=writes, write_probs=write_probs,
            tool_logits=tools[-1], carry=new_carry, hidden=h, drift=_drift(h, prev, b),
            halt_logp=halt_probs[:, -1].clamp(min=1e-30).log(), blocks=self._blocks(K, B, h.device))

    def _refine_early_exit(self, x, b, rope, carry, K, stop: "_StopRule", opts, use_semantic,
                           choice, h, fed) -> ModelOutput:
        """Per-row halting: a row that stops leaves the batch (the running rows are compacted), so
        its remaining steps cost nothing; its outputs are those of the step it stopped at."""
        B, device = x.shape[0], x.device
        rows = torch.arange(B, device=device)  # global indices of the running rows
        log_survive = torch.zeros(B, device=device)  # log prod_{j<k} (1 - lambda_j) of each running row
        steps = torch.full((B,), K, dtype=torch.long, device=device)
        done: list[_Stopped] = []
        for k in range(K):
            prev, h = h, self._step(h, x, b, rope, carry, opts, use_semantic, fed)
            if opts.feedback or stop.stable:
                fed_now = self._readout(h, b, choice)
                fed = fed_now if opts.feedback else fed
            lam = self.halting(decision_state(h, b), _max_change(h, prev, b))
            last = k == K - 1
            if stop.stable:
                stop.observe(fed_now.argmax(-1), _readout_valid(b))
            halts = stop.decide(lam, log_survive, rows, k, last)
            if bool(halts.any()):
                i = halts.nonzero().squeeze(1)
                logp = (torch.zeros_like(lam[i]) if stop.stable
                        else log_survive[i] + (lam[i].clamp(min=1e-30).log() if not last else 0.0))
                done.append(self._stopped(rows[i], h[i], prev[i], b.select(i), logp,
                                          carry.select(i) if carry is not None else None,
                                          choice[i] if choice is not None else None, opts))
                steps[rows[i]] = k + 1
            keep = ~halts
            if not bool(keep.any()):
                break
            log_survive = log_survive + torch.log1p(-lam.clamp(max=1.0 - 1e-7))
            if not bool(keep.all()):
                j = keep.nonzero().squeeze(1)
                rows, h, x, b, log_survive = rows[j], h[j], x[j], b.select(j), log_survive[j]
                fed = fed[j] if fed is not None else None
                rope = (rope[0][j], rope[1][j])
                carry = carry.select(j) if carry is not None else None
                choice = choice[j] if choice is not None else None
                stop.keep(j)
        return self._assemble(done, B, steps, carry_template=self._template(carry, done))

    def _stopped(self, rows, h, prev, b, logp, carry, choice, opts) -> _Stopped:
        new_carry, writes, write_probs = self._write(carry, h, b, opts)
        return _Stopped(rows, self._readout(h, b, choice), self.tool_head(decision_state(h, b)), h, _drift(h, prev, b),
                        logp, new_carry, writes, write_probs if write_probs is not None else writes)

    @staticmethod
    def _template(carry, done):
        return done[0].carry if done and done[0].carry is not None else None

    def _assemble(self, done: list[_Stopped], B: int, steps: torch.Tensor, carry_template) -> ModelOutput:
        """Scatter the stopped rows' outputs back into batch order."""
        rows = torch.cat([d.rows for d in done])
        order = torch.empty_like(rows)
        order[rows] = torch.arange(B, device=rows.device)

        def gather(field: str) -> torch.Tensor:
            return torch.cat([getattr(d, field) for d in done])[order]

        carry = None
        if carry_template is not None:
            carry = Carry.cat([d.carry for d in done]).select(order)
        logits = gather("logits")
        return ModelOutput(
            logits=logits, step_logits=logits[None], halt_probs=None, steps=steps, writes=gather("writes"),
            write_probs=gather("write_probs") if carry is not None else None, tool_logits=gather("tool_logits"),
            carry=carry, hidden=gather("hidden"), drift=gather("drift"), halt_logp=gather("halt_logp"),
            blocks=self.cfg.prelude_layers + steps * self.cfg.core_layers)

    def _blocks(self, K: int, B: int, device) -> torch.Tensor:
        return torch.full((B,), self.cfg.prelude_layers + K * self.cfg.core_layers, device=device)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 64, temperature: float = 1.0, top_k: int | None = None,
                 eos_id: int | None = EOS_ID, *, K: int | None = None, carry: Carry | None = None,
                 semantic: bool | None = None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Carry | None]:
        """(new tokens [B, N] with PAD after each row's EOS, carry after the turn).

        Every token is predicted with the carry that came in (this turn's write is not readable
        within the turn); the returned carry is that of one call over prompt + output, exactly
        what a training pass over the same transcript computes.
        """
        kw = dict(K=K, carry=carry, semantic=semantic)

        def step(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self(ids, mask, **kw).logits[:, -1]

        new, ids, mask = generate_tokens(step, input_ids, attention_mask, max_new_tokens, temperature, top_k,
                                         eos_id, generator)
        return new, self(ids, mask, **kw).carry


class _CallOptions(NamedTuple):
    read: bool  # False: the no-memory ablation
    write_threshold: float
    feedback: bool = False  # feed each step's predictions at the read-out positions to the next
    write_gate: bool = False  # the learned write gate decides; False: every turn is written (FIFO)
    write_from: str = "decision"  # what a write keeps of the turn (blocks.turn_state)


class _StopRule:
    """When a running row stops: at a threshold of the cumulative halting probability, at a step
    sampled from the halting distribution, at a given step, or (``stable``) once its predicted
    answer has not changed for ``patience`` steps."""

    def __init__(self, mode: str | None, steps: torch.Tensor | None, threshold: float,
                 generator: torch.Generator | None, patience: int = 2):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.mode, self.steps, self.threshold, self.generator = mode, steps, threshold, generator
        self.patience = patience
        self.pred: torch.Tensor | None = None  # stable: the running rows' last predictions [R, W]
        self.same: torch.Tensor | None = None  # stable: steps in a row each running row's prediction held

    @property
    def stable(self) -> bool:
        return self.mode == "stable"

    def observe(self, pred: torch.Tensor, valid: torch.Tensor | None) -> None:
        """Stable rule: this step's predictions [R, W] of the running rows (``valid`` [R, W]: which count)."""
        if self.pred is None:
            self.same = torch.zeros(pred.shape[0], dtype=torch.long, device=pred.device)
        else:
            changed = pred != self.pred
            if valid is not None:
                changed = changed & valid
            self.same = torch.where(changed.any(dim=1), torch.zeros_like(self.same), self.same + 1)
        self.pred = pred

    def keep(self, rows: torch.Tensor) -> None:
        """The running rows after some stopped (indices into the current running rows)."""
        if self.pred is not None:
            self.pred, self.same = self.pred[rows], self.same[rows]

    def decide(self, lam: torch.Tensor, log_survive: torch.Tensor, rows: torch.Tensor, k: int,
               last: bool) -> torch.Tensor:
        if last:
            return torch.ones_like(lam, dtype=torch.bool)
        if self.steps is not None:
            return self.steps.to(rows.device)[rows] == k + 1
        if self.stable:
            return self.same >= self.patience
        if self.mode == "threshold":  # cumulative probability after this step: 1 - prod_{j<=k} (1 - lambda_j)
            return 1.0 - log_survive.exp() * (1.0 - lam) >= self.threshold
        u = torch.rand(lam.shape, generator=self.generator, device=lam.device)
        return u < lam


def _readout_valid(b: Batch) -> torch.Tensor | None:
    """[B, W] which read-out positions are real (a view's ``out_valid``; the real tokens otherwise)."""
    if b.outputs is not None:
        return b.out_valid
    if not b.causal and b.answer_len:
        return b.mask[:, -b.answer_len:]
    return b.mask


def _max_change(h: torch.Tensor, prev: torch.Tensor, b: Batch) -> torch.Tensor:
    """The largest mean-square change of a real position's state in the last step [B]; in causal
    mode over the observation only (the decision point never depends on the payload)."""
    change = ((h - prev).float() ** 2).mean(-1)
    seen = b.mask & ~b.payload if b.causal else b.mask
    return change.masked_fill(~seen, 0.0).amax(dim=1)


def _drift(h: torch.Tensor, prev: torch.Tensor, b: Batch) -> torch.Tensor:
    """Mean squared change of the state in the last step, over each row's real positions."""
    w = b.mask.to(h.dtype)
    return (((h - prev).float() ** 2).mean(-1) * w).sum(1) / w.sum(1).clamp(min=1.0)
