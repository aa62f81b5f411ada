"""The model as a policy over text actions: a decision, then content conditioned on it.

An action is (halting step, choice, payload):
- halting step s (with ``halt=True``): how many refinement steps the turn runs, read from the
  halting head at the decision point. Greedy acting stops at the threshold of the cumulative
  halting probability; sampling draws s from the halting distribution, so s is part of the
  sampled action (its log-probability enters the policy gradient; its compute enters the reward);
- choice c: "answer" (0), tool i, or "answer with the last verified tool result", from the tool
  head at the decision point after s steps;
- payload: the call's ARGS or the answer, written by the token head with c's embedding added to
  the payload positions (``r3m_agent.blocks.prepare``), so the content depends on the choice.
  How the observation is read and the answer written is the family's view (``r3m.learn.io``):
  a symbol view writes an answer at its output positions, and its calls and "use the result"
  write nothing (the view derives a call's ARGS from the observation; the family renders the
  result's answer), so those actions are one decision.

The decision point sees the observation only (never the payload), so

    log pi(action) = log p_halt(s) + log p(c | s) + log p(payload | c, s)

is computed by one forward pass over the observation and the payload with the choice and the
step count given (``score``), and acting computes the same numbers. Fill mode acts in one pass
too: the answer slots refine with the observation, the row stops at its halting step, the choice
is read there, and the slots' readout is conditioned on it (``R3M.readout``). Causal mode reads
(s, c) in a pass over the observation, then writes the payload token by token with the choice
embedded in its input. A test checks that acting and re-scoring agree in both modes.

Payload tokens are restricted to what the view can write: the printable alphabet plus ``<eos>``
(and, in fill mode, ``<pad>`` for the slots a shorter payload leaves empty; see
``r3m.learn.data``), or a symbol view's closed output set, so a policy can never emit a stray
delimiter; with tools off the choice is masked to "answer", and "use the result" is masked until
the observation holds a verified result. A character payload is every slot or token up to and
including the first ``<eos>``. The action's text is ``<call>NAME ARGS</call>``, the answer, or
the answer the last result gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from r3m import envs, tools
from r3m.envs.views import SymbolView, split_transcript
from r3m.learn.data import TaskSpec
from r3m.learn.io import ViewBatch, ViewIO
from r3m_agent.checkpoint import unwrap
from r3m_agent.memory import Carry
from r3m_agent.r3m import R3M
from r3m_agent.tokenizer import BOS_ID, EOS_ID, PAD_ID, SEP_ID, Tokenizer

TOK = Tokenizer()
HALT_RULES = ("learned", "stable")  # how a halting policy stops: the trained head, or the answer settling


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
    """``model`` acting on ``spec``'s family through its view (``spec.view``; character fill or
    causal with ``spec.width`` payload slots/tokens, or a symbol view), at K refinement steps
    (None: the model's K), halting per row with ``halt``."""

    model: torch.nn.Module
    spec: TaskSpec
    K: int | None = None
    halt: bool = False
    threshold: float | None = None  # greedy halting: cumulative probability to stop at (None: the model's)
    halt_rule: str = "learned"  # "learned": the halting head; "stable": stop when the predicted answer settles
    patience: int = 2  # the stable rule: steps the prediction must hold
    read_memory: bool = True  # False: the no-memory ablation (reads nothing, still writes)
    write_threshold: float = 0.5  # the write gate's value above which a turn is written

    def __post_init__(self) -> None:
        if not isinstance(self.spec, TaskSpec):
            raise TypeError(f"Policy needs a TaskSpec (r3m.learn.data.task_spec), got {type(self.spec).__name__}")
        if self.spec.mode != "symbols" and int(self.spec.width) < 1:
            raise ValueError(f"a character view needs a positive number of payload slots, got {self.spec.width!r}")
        if self.halt_rule not in HALT_RULES:
            raise ValueError(f"halt_rule must be one of {HALT_RULES}, got {self.halt_rule!r}")
        self.io = ViewIO.of(self.spec, unwrap(self.model).cfg)
        self.family = envs.make_family(self.spec.family)
        self.n_tools = len(unwrap(self.model).cfg.tool_names)

    @property
    def mode(self) -> str:
        """"causal" or a fill layout ("fill": character slots, "symbols": a symbol view)."""
        return self.spec.mode

    @property
    def width(self) -> int:
        return self.spec.width
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
        """Causal mode: left-padded ``<bos> observation <sep>`` (the decision point is the last column)."""
        rows = [[BOS_ID, *TOK.encode(o), SEP_ID] for o in observations]
        T = max(map(len, rows))
        ids = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, T - len(r):] = torch.tensor(r)
        return ids.to(self.device), (ids != PAD_ID).to(self.device)

    def layout(self, observations: Sequence[str]) -> ViewBatch:
        """Fill layouts: the view's tensors for ``observations`` on the policy's device."""
        return self.io.batch(observations).to(self.device)

    def _fill(self, lay: ViewBatch, **kw):
        return self.model(lay.ids, lay.mask, mode="fill", **lay.forward_kwargs(), **self.io.model_kwargs(), **kw)

    # -- distributions ------------------------------------------------------------------------
    @property
    def use_result(self) -> int:
        return self.n_tools + 1

    def writes_payload(self, choice: torch.Tensor) -> torch.Tensor:
        """[B] whether a choice writes its payload: an answer always; a call in the character view
        (its ARGS); never "use the result", nor a symbol view's call (the view derives its ARGS)."""
        if isinstance(self.io.view, SymbolView):
            return choice == 0
        return choice != self.use_result

    def _choice_logp(self, tool_logits: torch.Tensor, allow_tools: bool,
                     observations: Sequence[str] | None = None) -> torch.Tensor:
        logits = tool_logits.float().clone()
        if not allow_tools:
            logits[:, 1:] = float("-inf")
        elif observations is not None:
            no_result = torch.tensor([split_transcript(o).last_result is None for o in observations],
                                     device=logits.device)
            logits[:, self.use_result] = logits[:, self.use_result].masked_fill(no_result, float("-inf"))
        return F.log_softmax(logits, dim=-1)

    def _payload_logp(self, logits: torch.Tensor) -> torch.Tensor:
        ok = self.io.allowed.to(logits.device)
        return F.log_softmax(logits.float().masked_fill(~ok[: logits.shape[-1]], float("-inf")), dim=-1)

    def _halt_logp(self, out) -> torch.Tensor:
        """log p_halt(s), part of the action only when the policy halts by its learned head (the stable
        rule is deterministic)."""
        if self.halt and self.recurrent and self.halt_rule == "learned":
            return out.halt_logp.float()
        return torch.zeros_like(out.steps, dtype=torch.float)

    def _halting(self, carry, rows: int, sample, generator) -> dict:
        """The model's arguments when acting: every row K steps, or halting at a threshold (greedy)
        or at a sampled step."""
        if not self.recurrent:
            return {}
        if not self.halt:
            return self._kw(carry, torch.full((rows,), self.max_steps, device=self.device))
        if self.halt_rule == "stable":  # deterministic whether acting greedily or sampling
            return self._kw(carry, None, halt="stable", halt_patience=self.patience)
        return self._kw(carry, None, halt="sample" if sample else "threshold", generator=generator,
                        halt_threshold=self.threshold)

    def _decide(self, out, allow_tools, sample, temperature, generator, observations):
        """(choice, log p(s) + log p(c | s)) at the decision point of ``out``."""
        choice_lp = self._choice_logp(out.tool_logits, allow_tools, observations)
        choice = _choose(choice_lp, sample, temperature, generator)
        return choice, self._halt_logp(out) + _gather(choice_lp, choice)

    # -- acting --------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, observations: Sequence[str], carry: Carry | None = None, *, allow_tools: bool = True,
            sample: bool = False, temperature: float = 1.0, generator: torch.Generator | None = None) -> Decision:
        kw = self._halting(carry, len(observations), sample, generator)
        if self.mode != "causal":  # one pass: refine, stop, choose, read the outputs for that choice
            lay = self.layout(observations)
            out = self._fill(lay, **kw)
            choice, log_prob = self._decide(out, allow_tools, sample, temperature, generator, observations)
            hidden = out.hidden.gather(1, lay.outputs[..., None].expand(-1, -1, out.hidden.shape[-1]))
            slot_lp = self._payload_logp(unwrap(self.model).readout(hidden, choice))
            payload = self._finish(_choose(slot_lp, sample, temperature, generator), lay, choice)
            log_prob = log_prob + self._payload_sum(slot_lp, payload)
            steps, writes, new_carry, blocks = out.steps, out.writes, out.carry, out.blocks
        else:  # the decision over the observation, then the payload token by token
            ids, mask = self.encode(observations)
            first = self.model(ids, mask, mode="causal", **kw)
            choice, log_prob = self._decide(first, allow_tools, sample, temperature, generator, observations)
            steps = first.steps
            payload, payload_lp, writes, new_carry, more = self._generate(ids, mask, carry, steps, choice, sample,
                                                                          temperature, generator)
            log_prob, blocks = log_prob + payload_lp, first.blocks + more
        actions = self.render_all(observations, choice, payload)
        return Decision(actions, choice, payload, log_prob, steps, writes, new_carry, blocks)

    def _finish(self, tokens: torch.Tensor, lay: ViewBatch, choice: torch.Tensor) -> torch.Tensor:
        """The payload as acted: characters up to the first eos (PAD after); a symbol view's outputs
        (PAD where a row has fewer); all PAD for a choice that writes nothing."""
        if isinstance(self.io.view, SymbolView):
            tokens = tokens.masked_fill(~lay.out_valid, PAD_ID)
        else:
            tokens = _truncate_at_eos(tokens)
        return tokens.masked_fill(~self.writes_payload(choice)[:, None], PAD_ID)

    def _payload_sum(self, slot_lp: torch.Tensor, payload: torch.Tensor) -> torch.Tensor:
        live = self.io.live(payload) & (payload != PAD_ID if isinstance(self.io.view, SymbolView) else True)
        written = (payload != PAD_ID).any(1) | (payload == EOS_ID).any(1)
        picked = slot_lp.gather(2, payload.clamp(min=0)[..., None]).squeeze(-1)
        return torch.where(live & written[:, None], picked, 0.0).sum(1)

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

    def render_all(self, observations: Sequence[str], choice: torch.Tensor, payload: torch.Tensor) -> list[str]:
        texts = self.io.decode(observations, payload.cpu())
        return [self.render(int(c), text, obs) for c, text, obs in zip(choice.tolist(), texts, observations)]

    def render(self, choice: int, text: str, observation: str) -> str:
        """The action's text: the answer ``text``; a call (ARGS ``text``, or the view's for a symbol
        view); or the answer the last verified result gives."""
        if choice == 0:
            return text
        if choice == self.use_result:
            last = split_transcript(observation).last_result
            return self.family.answer_from_result(last) if last is not None else ""
        if isinstance(self.io.view, SymbolView):
            text = self.io.view.call_args(observation) or ""
        return tools.format_call(unwrap(self.model).cfg.tool_names[choice - 1], text)

    # -- re-scoring (policy gradient) ------------------------------------------------------
    def score(self, observations: Sequence[str], carry: Carry | None, tool: torch.Tensor, payload: torch.Tensor,
              steps: torch.Tensor | None = None, *, allow_tools: bool = True) -> Score:
        """log pi(steps, tool, payload | observation, carry) [B] with gradients, the mean per-token
        entropy of the payload, and the memory after the turn; one pass with the choice and the
        step count given. ``steps`` (with halting): the step counts the actions ran."""
        tool, payload = tool.to(self.device), payload.to(self.device)
        B = len(observations)
        if self.recurrent:
            steps = steps.to(self.device) if steps is not None and self.halt else torch.full(
                (B,), self.max_steps, device=self.device)
        kw = self._kw(carry, steps)
        if self.mode != "causal":
            lay = self.layout(observations)
            out = self._fill(lay, choice=tool, **kw)
            slot_lp = self._payload_logp(out.logits)
            payload = payload[:, : slot_lp.shape[1]]
        else:
            ids, mask = self.encode(observations)
            n = payload.shape[1]
            full = torch.cat([ids, payload], dim=1)
            full_mask = torch.cat([mask, payload != PAD_ID], dim=1)
            decision = torch.full((ids.shape[0],), ids.shape[1] - 1, device=ids.device)
            out = self.model(full, full_mask, mode="causal", choice=tool, decision_index=decision, **kw)
            slot_lp = self._payload_logp(out.logits[:, -n - 1 : -1])
        choice_lp = _gather(self._choice_logp(out.tool_logits, allow_tools, observations), tool)
        halt_lp = self._halt_logp(out)
        live = self.io.live(payload) & self.writes_payload(tool)[:, None]
        entropy = -(slot_lp.exp() * slot_lp.nan_to_num(neginf=0.0)).sum(-1)
        entropy = (entropy * live).sum(1) / live.sum(1).clamp(min=1)
        return Score(halt_lp + choice_lp + self._payload_sum(slot_lp, payload), entropy, out.carry, choice_lp,
                     halt_lp, out.write_probs)

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

