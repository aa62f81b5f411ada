"""The model as a policy over text actions: a tool choice that gates a payload.

At a decision point the tool head picks "answer" or a tool; the token head then writes the
payload (the call's ARGS or the answer). The action is ``<call>NAME PAYLOAD</call>`` or the
payload itself. Payload tokens are restricted to the printable alphabet plus ``<eos>`` (and, in
fill mode, ``<pad>`` for the slots a shorter payload leaves empty; see ``r3m.learn.data``), so a
policy can never emit a stray delimiter; with tools off the head is masked to "answer". A
payload is every slot or token up to and including the first ``<eos>``.

``act`` samples (or takes the argmax) and returns the log-probability of what it chose;
``log_prob`` recomputes it for given choices with the same masks, K and halting, which is
what the policy-gradient update needs (a test checks the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from r3m import tools
from r3m_agent.memory import Carry
from r3m_agent.r3m import R3M
from r3m_agent.tokenizer import BOS_ID, EOS_ID, PAD_ID, SEP_ID, TOKENS, Tokenizer

TOK = Tokenizer()
_PAYLOAD_OK = torch.zeros(len(TOKENS), dtype=torch.bool)
_PAYLOAD_OK[[i for i, t in enumerate(TOKENS) if len(t) == 1]] = True
_PAYLOAD_OK[EOS_ID] = True
_FILL_OK = _PAYLOAD_OK.clone()
_FILL_OK[PAD_ID] = True


@dataclass
class Decision:
    """One decision per row. ``payload``: the chosen slots/tokens up to the first eos, PAD after."""

    actions: list[str]
    tool: torch.Tensor  # [B]
    payload: torch.Tensor  # [B, W]
    log_prob: torch.Tensor  # [B]
    steps: torch.Tensor  # [B]
    writes: torch.Tensor  # [B]
    carry: Carry | None


class Score(NamedTuple):
    log_prob: torch.Tensor  # [B]
    entropy: torch.Tensor  # [B] mean per payload token
    expected_steps: torch.Tensor  # [B] sum_k k p_k under the halting distribution


@dataclass
class Policy:
    """``model`` acting in ``mode`` ("fill" or "causal") with ``width`` payload slots/tokens."""

    model: torch.nn.Module
    mode: str = "fill"
    width: int = 64
    K: int | None = None
    halt: bool = False

    @property
    def recurrent(self) -> bool:
        return isinstance(self.model, R3M)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _kw(self, carry: Carry | None) -> dict:
        return dict(K=self.K, halt=self.halt, carry=carry) if self.recurrent else {}

    def encode(self, observations: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``<bos> observation <sep>`` (the decision point is the last column)."""
        rows = [[BOS_ID, *TOK.encode(o), SEP_ID] for o in observations]
        T = max(map(len, rows))
        ids = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, T - len(r):] = torch.tensor(r)
        return ids.to(self.device), (ids != PAD_ID).to(self.device)

    # -- distributions ------------------------------------------------------------------------
    def _tool_logp(self, tool_logits: torch.Tensor, allow_tools: bool) -> torch.Tensor:
        logits = tool_logits.float()
        if not allow_tools:
            logits = logits.clone()
            logits[:, 1:] = float("-inf")
        return F.log_softmax(logits, dim=-1)

    def _payload_logp(self, logits: torch.Tensor) -> torch.Tensor:
        ok = (_FILL_OK if self.mode == "fill" else _PAYLOAD_OK).to(logits.device)
        return F.log_softmax(logits.float().masked_fill(~ok, float("-inf")), dim=-1)

    def _fill(self, observations, carry):
        ids, mask = self.encode(observations)
        return self.model(ids, mask, mode="fill", answer_len=self.width, **self._kw(carry))

    # -- acting --------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, observations: Sequence[str], carry: Carry | None = None, *, allow_tools: bool = True,
            sample: bool = False, temperature: float = 1.0, generator: torch.Generator | None = None) -> Decision:
        if self.mode == "fill":
            out = self._fill(observations, carry)
            tool_lp = self._tool_logp(out.tool_logits, allow_tools)
            tool = _choose(tool_lp, sample, temperature, generator)
            slot_lp = self._payload_logp(out.logits)
            payload = _truncate_at_eos(_choose(slot_lp, sample, temperature, generator))
            log_prob = _gather_tool(tool_lp, tool) + _payload_sum(slot_lp, payload)
            steps, writes, new_carry = out.steps, out.writes, out.carry
        else:
            tool, payload, log_prob, steps, writes, new_carry = self._act_causal(
                observations, carry, allow_tools, sample, temperature, generator)
        actions = [self.render(int(t), p) for t, p in zip(tool.tolist(), payload)]
        return Decision(actions, tool, payload, log_prob, steps, writes, new_carry)

    def _act_causal(self, observations, carry, allow_tools, sample, temperature, generator):
        ids, mask = self.encode(observations)
        first = self.model(ids, mask, **self._kw(carry))
        tool_lp = self._tool_logp(first.tool_logits, allow_tools)
        tool = _choose(tool_lp, sample, temperature, generator)
        log_prob = _gather_tool(tool_lp, tool)
        B = ids.shape[0]
        done = torch.zeros(B, dtype=torch.bool, device=ids.device)
        new, logits = [], first.logits[:, -1]
        for i in range(self.width):
            lp = self._payload_logp(logits)
            tok = _choose(lp, sample, temperature, generator)
            if i == self.width - 1:
                tok = torch.full_like(tok, EOS_ID)  # the payload budget ends the action
            log_prob = log_prob + torch.where(done, 0.0, lp.gather(1, tok[:, None]).squeeze(1))
            tok = torch.where(done, torch.full_like(tok, PAD_ID), tok)
            new.append(tok)
            done = done | (tok == EOS_ID)
            ids = torch.cat([ids, tok[:, None]], dim=1)
            mask = torch.cat([mask, (tok != PAD_ID)[:, None]], dim=1)
            if bool(done.all()):
                break
            logits = self.model(ids, mask, **self._kw(carry)).logits[:, -1]
        payload = torch.stack(new, dim=1)
        last = self.model(ids, mask, **self._kw(carry)) if self.recurrent else first
        return tool, payload, log_prob, first.steps, first.writes, last.carry

    def render(self, tool: int, payload: torch.Tensor) -> str:
        text = TOK.decode([t for t in payload.tolist() if t not in (EOS_ID, PAD_ID)])
        if tool == 0:
            return text
        return tools.format_call(self.model.cfg.tool_names[tool - 1], text)

    # -- re-scoring (policy gradient) ------------------------------------------------------
    def log_prob(self, observations: Sequence[str], carry: Carry | None, tool: torch.Tensor,
                 payload: torch.Tensor, *, allow_tools: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi(tool, payload | observation) [B], mean per-token entropy [B]), with gradients."""
        scored = self.score(observations, carry, tool, payload, allow_tools=allow_tools)
        return scored.log_prob, scored.entropy

    def score(self, observations: Sequence[str], carry: Carry | None, tool: torch.Tensor,
              payload: torch.Tensor, *, allow_tools: bool = True) -> Score:
        """``log_prob``'s two values plus the expected refinement steps under the halting
        distribution [B] (differentiable; the compute penalty of RL with halting on)."""
        tool, payload = tool.to(self.device), payload.to(self.device)
        if self.mode == "fill":
            out = self._fill(observations, carry)
            tool_lp = self._tool_logp(out.tool_logits, allow_tools)
            slot_lp = self._payload_logp(out.logits)
            halt_probs = out.halt_probs
        else:
            ids, mask = self.encode(observations)
            first = self.model(ids, mask, **self._kw(carry))
            tool_lp = self._tool_logp(first.tool_logits, allow_tools)
            halt_probs = first.halt_probs
            n = payload.shape[1]
            full = torch.cat([ids, payload], dim=1)
            full_mask = torch.cat([mask, payload != PAD_ID], dim=1)
            logits = self.model(full, full_mask, **self._kw(carry)).logits[:, -n - 1 : -1]
            slot_lp = self._payload_logp(logits)
        live = _live(payload)
        entropy = -(slot_lp.exp() * slot_lp.nan_to_num(neginf=0.0)).sum(-1)
        entropy = (entropy * live).sum(1) / live.sum(1).clamp(min=1)
        k = torch.arange(1, halt_probs.shape[1] + 1, device=halt_probs.device, dtype=torch.float32)
        return Score(_gather_tool(tool_lp, tool) + _payload_sum(slot_lp, payload), entropy,
                     (halt_probs.float() * k).sum(1))


def _choose(logp: torch.Tensor, sample: bool, temperature: float, generator) -> torch.Tensor:
    if not sample or temperature <= 0:
        return logp.argmax(dim=-1)
    probs = torch.softmax(logp / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def _live(tokens: torch.Tensor) -> torch.Tensor:
    """Slots up to and including the first eos: the part of the output that is the action."""
    eos = (tokens == EOS_ID).long()
    return (eos.cumsum(1) - eos) == 0


def _truncate_at_eos(tokens: torch.Tensor) -> torch.Tensor:
    """Keep slots up to and including the first eos (an eos is forced in the last slot); PAD after."""
    tokens = tokens.clone()
    tokens[:, -1] = torch.where((tokens == EOS_ID).any(1), tokens[:, -1], EOS_ID)
    return tokens.masked_fill(~_live(tokens), PAD_ID)


def _gather_tool(tool_lp: torch.Tensor, tool: torch.Tensor) -> torch.Tensor:
    return tool_lp.gather(1, tool[:, None]).squeeze(1)


def _payload_sum(slot_lp: torch.Tensor, payload: torch.Tensor) -> torch.Tensor:
    live = _live(payload)
    picked = slot_lp.gather(2, payload.clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(live, picked, 0.0).sum(1)
