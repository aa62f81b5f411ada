"""The model as a policy over text actions: a decision, then content conditioned on it.

An action is (halting step, choice, payload):
- halting step s (with ``halt=True``): how many refinement steps the turn runs, read from the
  halting head at the decision point. Greedy acting stops at the threshold of the cumulative
  halting probability; sampling draws s from the halting distribution, so s is part of the
  sampled action (its log-probability enters the policy gradient; its compute enters the reward);
- choice c: "answer" (0) or tool i, from the tool head at the decision point after s steps;
- payload: the call's ARGS or the answer, written by the token head with c's embedding added to
  the payload positions (``r3m_agent.blocks.prepare``), so the content depends on the choice.

The decision point sees the observation only (never the payload), so

    log pi(action) = log p_halt(s) + log p(c | s) + log p(payload | c, s)

is computed by one forward pass over the observation and the payload with the choice and the
step count given (``score``), and acting computes the same numbers. Fill mode acts in one pass
too: the answer slots refine with the observation, the row stops at its halting step, the choice
is read there, and the slots' readout is conditioned on it (``R3M.readout``). Causal mode reads
(s, c) in a pass over the observation, then writes the payload token by token with the choice
embedded in its input. A test checks that acting and re-scoring agree in both modes.

Payload tokens are restricted to the printable alphabet plus ``<eos>`` (and, in fill mode,
``<pad>`` for the slots a shorter payload leaves empty; see ``r3m.learn.data``), so a policy can
never emit a stray delimiter; with tools off the choice is masked to "answer". A payload is every
slot or token up to and including the first ``<eos>``. The action's text is
``<call>NAME PAYLOAD</call>`` or the payload itself.
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
    log_prob: torch.Tensor  # [B] log pi(action): halting (when learned) + choice + payload
    steps: torch.Tensor  # [B] refinement steps the turn ran
    writes: torch.Tensor  # [B] memory writes of the turn (0 or 1)
    carry: Carry | None  # the memory after the turn
    blocks: torch.Tensor  # [B] block applications the turn cost (decision pass + payload)


class Score(NamedTuple):
    log_prob: torch.Tensor  # [B]
    entropy: torch.Tensor  # [B] mean per payload token
    carry: Carry | None  # the memory after the turn (with gradients: the next turn's input)
    choice_logp: torch.Tensor  # [B] log p(c | s)
    halt_logp: torch.Tensor  # [B] log p_halt(s) (0 with halting off)
    write_probs: torch.Tensor | None  # [B] the soft write gate of the turn (None: no memory)


@dataclass
class Policy:
    """``model`` acting in ``mode`` ("fill" or "causal") with ``width`` payload slots/tokens, at K
    refinement steps (None: the model's K), halting per row with ``halt``."""

    model: torch.nn.Module
    mode: str = "fill"
    width: int = 64
    K: int | None = None
    halt: bool = False
    threshold: float | None = None  # greedy halting: cumulative probability to stop at (None: the model's)
    read_memory: bool = True  # False: the no-memory ablation (reads nothing, still writes)
    write_threshold: float = 0.5  # the write gate's value above which a turn is written

    def __post_init__(self) -> None:
        if self.mode not in ("fill", "causal"):
            raise ValueError(f"Policy mode must be 'fill' or 'causal', got {self.mode!r}")
        if int(self.width) < 1:
            raise ValueError(f"Policy width must be a positive number of payload slots, got {self.width!r}")

    @property
    def recurrent(self) -> bool:
        return isinstance(self.model, R3M)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_steps(self) -> int:
        return (self.K or self.model.cfg.K) if self.recurrent else 1

    def _kw(self, carry: Carry | None, steps: torch.Tensor | None = None, **extra) -> dict:
        if not self.recurrent:
            return {}
        return dict(K=self.K, carry=carry, halt_steps=steps, read_memory=self.read_memory,
                    write_threshold=self.write_threshold, **extra)

    def encode(self, observations: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``<bos> observation <sep>`` (the decision point is the last column)."""
        rows = [[BOS_ID, *TOK.encode(o), SEP_ID] for o in observations]
        T = max(map(len, rows))
        ids = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, T - len(r):] = torch.tensor(r)
        return ids.to(self.device), (ids != PAD_ID).to(self.device)

    # -- distributions ------------------------------------------------------------------------
    def _choice_logp(self, tool_logits: torch.Tensor, allow_tools: bool) -> torch.Tensor:
        logits = tool_logits.float()
        if not allow_tools:
            logits = logits.clone()
            logits[:, 1:] = float("-inf")
        return F.log_softmax(logits, dim=-1)

    def _payload_logp(self, logits: torch.Tensor) -> torch.Tensor:
        ok = (_FILL_OK if self.mode == "fill" else _PAYLOAD_OK).to(logits.device)
        return F.log_softmax(logits.float().masked_fill(~ok, float("-inf")), dim=-1)

    def _halt_logp(self, out) -> torch.Tensor:
        """log p_halt(s), part of the action only when the policy halts."""
        return out.halt_logp.float() if self.halt and self.recurrent else torch.zeros_like(out.steps, dtype=torch.float)

    def _halting(self, carry, rows: int, sample, generator) -> dict:
        """The model's arguments when acting: every row K steps, or halting at a threshold (greedy)
        or at a sampled step."""
        if not self.recurrent:
            return {}
        if not self.halt:
            return self._kw(carry, torch.full((rows,), self.max_steps, device=self.device))
        return self._kw(carry, None, halt="sample" if sample else "threshold", generator=generator,
                        halt_threshold=self.threshold)

    def _decide(self, out, allow_tools, sample, temperature, generator):
        """(choice, log p(s) + log p(c | s)) at the decision point of ``out``."""
        choice_lp = self._choice_logp(out.tool_logits, allow_tools)
        choice = _choose(choice_lp, sample, temperature, generator)
        return choice, self._halt_logp(out) + _gather(choice_lp, choice)

    # -- acting --------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, observations: Sequence[str], carry: Carry | None = None, *, allow_tools: bool = True,
            sample: bool = False, temperature: float = 1.0, generator: torch.Generator | None = None) -> Decision:
        ids, mask = self.encode(observations)
        kw = self._halting(carry, ids.shape[0], sample, generator)
        if self.mode == "fill":  # one pass: refine, stop, choose, read the slots for that choice
            out = self.model(ids, mask, mode="fill", answer_len=self.width, **kw)
            choice, log_prob = self._decide(out, allow_tools, sample, temperature, generator)
            slot_lp = self._payload_logp(self.model.readout(out.hidden[:, -self.width:], choice))
            payload = _truncate_at_eos(_choose(slot_lp, sample, temperature, generator))
            log_prob = log_prob + _payload_sum(slot_lp, payload)
            steps, writes, new_carry, blocks = out.steps, out.writes, out.carry, out.blocks
        else:  # the decision over the observation, then the payload token by token
            first = self.model(ids, mask, mode="causal", **kw)
            choice, log_prob = self._decide(first, allow_tools, sample, temperature, generator)
            steps = first.steps
            payload, payload_lp, writes, new_carry, more = self._generate(ids, mask, carry, steps, choice, sample,
                                                                          temperature, generator)
            log_prob, blocks = log_prob + payload_lp, first.blocks + more
        actions = [self.render(int(t), p) for t, p in zip(choice.tolist(), payload)]
        return Decision(actions, choice, payload, log_prob, steps, writes, new_carry, blocks)

    def _generate(self, ids, mask, carry, steps, choice, sample, temperature, generator):
        """Causal payload, token by token, every token at the turn's step count and choice."""
        B = ids.shape[0]
        decision = torch.full((B,), ids.shape[1] - 1, device=ids.device)  # <sep>: the last column
        kw = dict(mode="causal", choice=choice, decision_index=decision,
                  **self._kw(carry, steps if self.recurrent else None))
        done = torch.zeros(B, dtype=torch.bool, device=ids.device)
        log_prob = torch.zeros(B, device=ids.device)
        blocks = torch.zeros(B, device=ids.device)
        new = []
        for i in range(self.width):
            out = self.model(ids, mask, **kw)
            blocks = blocks + torch.where(done, 0, out.blocks)
            lp = self._payload_logp(out.logits[:, -1])
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
        last = self.model(ids, mask, **kw)  # the turn as a whole: what the memory keeps of it
        return torch.stack(new, dim=1), log_prob, last.writes, last.carry, blocks

    def render(self, tool: int, payload: torch.Tensor) -> str:
        text = TOK.decode([t for t in payload.tolist() if t not in (EOS_ID, PAD_ID)])
        if tool == 0:
            return text
        return tools.format_call(self.model.cfg.tool_names[tool - 1], text)

    # -- re-scoring (policy gradient) ------------------------------------------------------
    def score(self, observations: Sequence[str], carry: Carry | None, tool: torch.Tensor, payload: torch.Tensor,
              steps: torch.Tensor | None = None, *, allow_tools: bool = True) -> Score:
        """log pi(steps, tool, payload | observation, carry) [B] with gradients, the mean per-token
        entropy of the payload, and the memory after the turn; one pass with the choice and the
        step count given. ``steps`` (with halting): the step counts the actions ran."""
        tool, payload = tool.to(self.device), payload.to(self.device)
        ids, mask = self.encode(observations)
        if self.recurrent:
            steps = steps.to(self.device) if steps is not None and self.halt else torch.full(
                (ids.shape[0],), self.max_steps, device=self.device)
        kw = self._kw(carry, steps)
        if self.mode == "fill":
            out = self.model(ids, mask, mode="fill", answer_len=payload.shape[1], choice=tool, **kw)
            slot_lp = self._payload_logp(out.logits)
        else:
            n = payload.shape[1]
            full = torch.cat([ids, payload], dim=1)
            full_mask = torch.cat([mask, payload != PAD_ID], dim=1)
            decision = torch.full((ids.shape[0],), ids.shape[1] - 1, device=ids.device)
            out = self.model(full, full_mask, mode="causal", choice=tool, decision_index=decision, **kw)
            slot_lp = self._payload_logp(out.logits[:, -n - 1 : -1])
        choice_lp = _gather(self._choice_logp(out.tool_logits, allow_tools), tool)
        halt_lp = self._halt_logp(out)
        live = _live(payload)
        entropy = -(slot_lp.exp() * slot_lp.nan_to_num(neginf=0.0)).sum(-1)
        entropy = (entropy * live).sum(1) / live.sum(1).clamp(min=1)
        return Score(halt_lp + choice_lp + _payload_sum(slot_lp, payload), entropy, out.carry, choice_lp, halt_lp,
                     out.write_probs)

    def log_prob(self, observations: Sequence[str], carry: Carry | None, tool: torch.Tensor,
                 payload: torch.Tensor, steps: torch.Tensor | None = None, *,
                 allow_tools: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi(action) [B], mean per-token entropy [B]); see ``score``."""
        scored = self.score(observations, carry, tool, payload, steps, allow_tools=allow_tools)
        return scored.log_prob, scored.entropy


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


def _gather(logp: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return logp.gather(1, index[:, None]).squeeze(1)


def _payload_sum(slot_lp: torch.Tensor, payload: torch.Tensor) -> torch.Tensor:
    live = _live(payload)
    picked = slot_lp.gather(2, payload.clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(live, picked, 0.0).sum(1)
