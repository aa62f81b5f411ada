"""Dense Transformer baseline: the Stage 0 model and the parameter-matched / larger baselines.

Same blocks, tokenizer, modes and output as R3M (``ModelOutput`` with S = 1), so every
training and evaluation path runs both models unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from r3m_agent.blocks import (
    Block, GroupedModule, ModelOutput, RMSNorm, answer_part, decision_state, embed_inputs, init_weights, prepare,
    rotary,
)
from r3m_agent.config import ConfigBase, choice_count, coord_table_size
from r3m_agent.sampling import generate_tokens
from r3m_agent.tokenizer import EOS_ID, VOCAB_SIZE


@dataclass(frozen=True)
class DenseConfig(ConfigBase):
    vocab_size: int = VOCAB_SIZE
    """Token embeddings; at least the tokenizer's vocabulary."""
    d_model: int = 128
    """Residual width."""
    n_layers: int = 4
    """Transformer blocks."""
    n_heads: int = 4
    """Attention heads; d_model / n_heads must be even (rotary)."""
    mlp_ratio: float = 4.0
    """MLP hidden width = round(mlp_ratio * d_model); fine-tunes parameter matching."""
    rope_base: float = 10000.0
    """Rotary embedding base."""
    tool_names: tuple[str, ...] = ()
    """Tool head classes after "answer", in this order (the scripts pass every registered tool)."""
    symbols: tuple[str, ...] = ()
    """Task views' symbols beyond the tokenizer's (as ``R3MConfig.symbols``)."""
    coords: tuple[str, ...] = ()
    """Task views' coordinate channels (as ``R3MConfig.coords``)."""

    def __post_init__(self) -> None:
        self._check_types()
        self._check_trunk(self.d_model, self.n_heads, self.vocab_size, self.tool_names, self.symbols, self.coords)
        if self.n_layers < 1 or self.mlp_ratio <= 0:
            raise ValueError(f"DenseConfig: need n_layers >= 1 and mlp_ratio > 0, got {self.n_layers}, {self.mlp_ratio}")

    @property
    def mlp_hidden(self) -> int:
        return max(1, round(self.mlp_ratio * self.d_model))


class DenseTransformer(GroupedModule):
    def __init__(self, cfg: DenseConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DenseConfig()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.coord_embed = (nn.Embedding(coord_table_size(cfg.coords), cfg.d_model, padding_idx=0)
                            if cfg.coords else None)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads, cfg.mlp_hidden) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        n_choices = choice_count(cfg.tool_names)
        self.tool_head = nn.Linear(cfg.d_model, n_choices)
        self.choice_embed = nn.Embedding(n_choices, cfg.d_model)  # causal: payload input
        self.choice_film = nn.Embedding(n_choices, 2 * cfg.d_model)  # fill: readout, as R3M
        # R3M's initialisation (LeCun-normal linears, GPT-2's residual scaling): with nanoGPT's fixed
        # 0.02 the block updates start ~100x smaller than the unit-scale embeddings and learning
        # stalls (see r3m.py); the baseline gets the initialisation that works for it too.
        init_weights(self)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.in_features))
        for blk in self.blocks:
            for proj in (blk.attn.proj, blk.mlp.down):
                proj.weight.data /= math.sqrt(2 * cfg.n_layers)
        nn.init.zeros_(self.choice_film.weight)
        if self.coord_embed is not None:
            nn.init.normal_(self.coord_embed.weight, 0.0, 0.02)  # the token embeddings' scale, as R3M
            with torch.no_grad():
                self.coord_embed.weight[0].zero_()

    def _group_modules(self) -> dict[str, list]:
        return {"prelude": [self.embed, self.coord_embed], "core": [self.blocks], "readout": [self.norm, self.head],
                "tool": [self.tool_head, self.choice_embed, self.choice_film]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                mode: str = "causal", answer_len: int | None = None, choice: torch.Tensor | None = None,
                decision_index: torch.Tensor | None = None, slots: torch.Tensor | None = None,
                outputs: torch.Tensor | None = None, out_valid: torch.Tensor | None = None,
                coords: torch.Tensor | None = None, window: tuple[int, int] | None = None, peers: bool = False,
                feedback: bool = False, summary: bool = False, write_from: str = "decision") -> ModelOutput:
        """One pass of the block stack; the same layout (a task view's too), decision point and
        choice conditioning as R3M (``r3m_agent.blocks.prepare``). ``feedback`` is accepted and
        ignored: with one pass there is no earlier prediction to feed back; ``summary`` as R3M's;
        ``write_from`` is accepted and ignored (no memory)."""
        b = prepare(input_ids, attention_mask, mode, answer_len, decision_index, slots=slots, outputs=outputs,
                    out_valid=out_valid, coords=coords, window=window, peers=peers)
        rope = rotary(b.positions, self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_base)
        h = embed_inputs(self.embed, self.coord_embed, b, summary)
        if choice is not None:
            choice = choice.to(h.device)
            if b.causal:
                h = h + self.choice_embed(choice)[:, None, :] * b.payload[..., None].to(h.dtype)
        for blk in self.blocks:
            h = blk(h, b.attn_mask, rope)
        logits = self.readout(answer_part(h, b), None if b.causal else choice)
        B = h.shape[0]
        ones = torch.ones(B, 1, device=h.device)
        return ModelOutput(
            logits=logits, step_logits=logits[None], halt_probs=ones,
            steps=torch.ones(B, dtype=torch.long, device=h.device), writes=torch.zeros(B, device=h.device),
            write_probs=None, tool_logits=self.tool_head(decision_state(self.norm(h), b)), carry=None, hidden=h,
            halt_logp=torch.zeros(B, device=h.device),
            blocks=torch.full((B,), self.cfg.n_layers, device=h.device))

    def readout(self, h: torch.Tensor, choice: torch.Tensor | None = None) -> torch.Tensor:
        """Token logits of final states ``h``; with ``choice``, scaled and shifted per choice (as R3M)."""
        n = self.norm(h)
        if choice is not None:
            scale, shift = self.choice_film(choice).to(n.dtype).chunk(2, dim=-1)
            n = n * (1.0 + scale[:, None]) + shift[:, None]
        return self.head(n)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 64, temperature: float = 1.0, top_k: int | None = None,
                 eos_id: int | None = EOS_ID, generator: torch.Generator | None = None) -> torch.Tensor:
        """New tokens [B, N] (PAD after each row's EOS); see ``sampling.generate_tokens``."""
        def step(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self(ids, mask).logits[:, -1]

        new, _, _ = generate_tokens(step, input_ids, attention_mask, max_new_tokens, temperature, top_k,
                                    eos_id, generator)
        return new
