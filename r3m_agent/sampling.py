"""Token sampling for both models' ``generate`` (no KV cache: each step reruns the prefix)."""

from __future__ import annotations

from typing import Callable

import torch

from r3m_agent.tokenizer import EOS_ID, PAD_ID


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
