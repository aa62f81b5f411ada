"""A task view bound to a model: observations to tensors, outputs to answer text.

A family's view (``r3m.envs.views``) says, in text, how the model reads an observation and writes
its answer. ``ViewIO`` turns that into the model's tensors with the model's vocabulary: a
character view's ``<bos> transcript <sep>`` and answer slots, or a symbol view's symbols (the
tokenizer's characters and the view's own words, ids ``VOCAB_SIZE + i`` as the model config's
``symbols`` lists them), coordinates (rows of the config's ``coords`` table), answer slots,
read-out positions and decision point. The model and the training code stay generic: no family
name appears here.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from r3m import envs
from r3m.envs.views import EVENTS, SEP, SLOT, CharView, SymbolView, View, view_of
from r3m_agent.config import coord_offsets, use_result_choice
from r3m_agent.tokenizer import BOS_ID, EOS_ID, PAD_ID, SEP_ID, TOKENS, VOCAB_SIZE, Tokenizer

IGNORE = -100
TOK = Tokenizer()
_BASE_IDS = {t: i for i, t in enumerate(TOKENS)}
_CHAR_OK = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
_CHAR_OK[[i for i, t in enumerate(TOKENS) if len(t) == 1]] = True
_CHAR_OK[EOS_ID] = True


def namespace(family: str, view: View) -> str:
    return f"{family}.{view.name}"


def model_tables(views: Sequence[tuple[str, View]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``symbols`` and ``coords`` a model config needs to read ``(family, view)`` pairs: every
    symbol view's words that are not tokenizer tokens, and its coordinate channels."""
    symbols: list[str] = []
    coords: list[str] = []
    for family, view in views:
        if not isinstance(view, SymbolView):
            continue
        ns = namespace(family, view)
        symbols += [f"{ns}:{s}" for s in view.all_symbols if s not in _BASE_IDS]
        coords += [f"{ns}#{table}={size}" for table, size in zip(view.tables, view.coords)]
    return tuple(dict.fromkeys(symbols)), tuple(dict.fromkeys(coords))


class ViewBatch(NamedTuple):
    """A batch of observations laid out for a fill-mode forward (``model(**batch.model_kwargs())``)."""

    ids: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T] real positions
    slots: torch.Tensor  # [B, T] answer slots (mask-token inputs)
    outputs: torch.Tensor  # [B, W] read-out positions, in answer order (0 where out_valid is False)
    out_valid: torch.Tensor  # [B, W]
    decision: torch.Tensor  # [B]
    coords: torch.Tensor | None  # [B, T, C] coordinate rows (0: none), None for views without coordinates

    def to(self, device) -> "ViewBatch":
        return ViewBatch(*(t.to(device) if t is not None else None for t in self))

    def forward_kwargs(self) -> dict:
        """The layout arguments of ``model(ids, mask, mode="fill", ...)``."""
        return dict(slots=self.slots, outputs=self.outputs, out_valid=self.out_valid, decision_index=self.decision,
                    coords=self.coords)


class ViewIO:
    """One family's view bound to a model config (its ``symbols``, ``coords`` and ``tool_names``).

    ``width``: the character view's answer slots or payload tokens (eos included); unused by
    symbol views, whose outputs are the positions ``encode`` marks.
    """

    def __init__(self, family: str, view: View, model_cfg, width: int = 0):
        self.family, self.view, self.width = family, view, int(width)
        self.kind = view.kind
        self.use_result = use_result_choice(tuple(model_cfg.tool_names))
        if isinstance(view, CharView):
            self.allowed = _CHAR_OK.clone()
            if self.kind == "fill":
                self.allowed[PAD_ID] = True
            self.allowed = torch.cat([self.allowed, torch.zeros(model_cfg.vocab_size - VOCAB_SIZE, dtype=torch.bool)])
            return
        ns = namespace(family, view)
        index = {s: VOCAB_SIZE + i for i, s in enumerate(model_cfg.symbols)}
        self._ids: dict[str, int] = {}
        for s in (*view.all_symbols, *EVENTS, SEP, SLOT):
            sid = _BASE_IDS.get(s, index.get(f"{ns}:{s}"))
            if sid is None:
                raise ValueError(f"{family}: the model was not built for view {view.name!r} (no symbol {s!r} "
                                 f"in its config; build it with r3m.learn.io.model_tables)")
            self._ids[s] = sid
        offsets = coord_offsets(tuple(model_cfg.coords))
        self._coord_rows = []
        for table in view.tables:
            name = f"{ns}#{table}"
            if name not in offsets:
                raise ValueError(f"{family}: the model was not built for view {view.name!r} (no coordinate "
                                 f"channel {name!r})")
            self._coord_rows.append(offsets[name])
        self._symbol_of = {sid: s for s, sid in self._ids.items()}
        self.allowed = torch.zeros(model_cfg.vocab_size, dtype=torch.bool)
        self.allowed[[self._ids[s] for s in view.out_symbols]] = True

    @classmethod
    def of(cls, spec, model_cfg) -> "ViewIO":
        """The view a ``TaskSpec`` names, bound to ``model_cfg``."""
        return cls(spec.family, view_of(envs.make_family(spec.family), spec.view), model_cfg, spec.width)

    # -- what a forward pass needs ----------------------------------------------------------------
    def model_kwargs(self) -> dict:
        """The view's attention band or peers, feedback, slot summary and what a memory write keeps,
        for ``model(...)``."""
        if not isinstance(self.view, SymbolView):
            return {}
        return {"window": self.view.window, "peers": self.view.peers, "feedback": self.view.feedback,
                "summary": self.view.summary, "write_from": self.view.write}

    def batch(self, observations: Sequence[str]) -> ViewBatch:
        """Fill-mode layout of ``observations`` (character fill or symbol view)."""
        if self.kind == "causal":
            raise ValueError("a causal view has no fill layout; use r3m.learn.data.collate_causal")
        if isinstance(self.view, CharView):
            return self._char_batch(observations)
        return self._symbol_batch(observations)

    def _char_batch(self, observations: Sequence[str]) -> ViewBatch:
        """``<bos> observation <sep>`` left-padded, then ``width`` answer slots (read out in order)."""
        rows = [[BOS_ID, *TOK.encode(o), SEP_ID] for o in observations]
        B, T0, W = len(rows), max(map(len, rows)), self.width
        ids = torch.full((B, T0 + W), PAD_ID, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, T0 - len(r): T0] = torch.tensor(r)
        slots = torch.zeros(B, T0 + W, dtype=torch.bool)
        slots[:, T0:] = True
        ids[:, T0:] = TOK.mask_id
        return ViewBatch(ids, (ids != PAD_ID), slots, torch.arange(T0, T0 + W).expand(B, W).clone(),
                         torch.ones(B, W, dtype=torch.bool), torch.full((B,), T0 - 1, dtype=torch.long), None)

    def _symbol_batch(self, observations: Sequence[str]) -> ViewBatch:
        enc = [self.view.encode(o) for o in observations]
        B, T = len(enc), max(len(e.symbols) for e in enc)
        W, C = max(1, max(len(e.outputs) for e in enc)), len(self.view.coords)
        ids = torch.full((B, T), PAD_ID, dtype=torch.long)
        slots = torch.zeros(B, T, dtype=torch.bool)
        outputs = torch.zeros(B, W, dtype=torch.long)
        valid = torch.zeros(B, W, dtype=torch.bool)
        coords = torch.zeros(B, T, C, dtype=torch.long) if C else None
        for i, e in enumerate(enc):
            try:  # a view's words, or any of the tokenizer's tokens (characters need no declaring)
                ids[i, : len(e.symbols)] = torch.tensor([self._ids[s] if s in self._ids else _BASE_IDS[s] for s in e.symbols])
            except KeyError as exc:
                raise ValueError(f"{self.family}: view {self.view.name!r} produced a symbol it does not declare: "
                                 f"{exc.args[0]!r}") from None
            slots[i, list(e.slots)] = True
            outputs[i, : len(e.outputs)] = torch.tensor(e.outputs, dtype=torch.long)
            valid[i, : len(e.outputs)] = True
            if C:
                c = torch.tensor(e.coords, dtype=torch.long).view(len(e.symbols), C)
                rows = torch.tensor(self._coord_rows)
                coords[i, : len(e.symbols)] = torch.where(c > 0, c + rows, 0)
        decision = torch.tensor([e.decision for e in enc], dtype=torch.long)
        return ViewBatch(ids, ids != PAD_ID, slots, outputs, valid, decision, coords)

    # -- targets and decoding ------------------------------------------------------------------------
    def targets(self, observations: Sequence[str], choices: Sequence[int], payloads: Sequence[str],
                batch: ViewBatch) -> torch.Tensor:
        """Targets [B, W] at the read-out positions (IGNORE where there is nothing to learn).

        Character fill: the payload (answer or call ARGS) right-aligned, eos, pads before it.
        Symbol view: the answer's output symbols (``view.target``); a call or "use the result"
        writes nothing (its ARGS and its answer follow from the observation)."""
        from r3m.learn.data import fill_slots  # the character layout lives with the demonstrations

        W = batch.outputs.shape[1]
        out = torch.full((len(observations), W), IGNORE, dtype=torch.long)
        for i, (obs, choice, payload) in enumerate(zip(observations, choices, payloads)):
            if isinstance(self.view, CharView):
                if choice != self.use_result:
                    out[i] = torch.tensor(fill_slots(payload, self.width, self.family))
                continue
            if choice != 0:
                continue
            target = self.view.target(obs, payload)
            if target is None:
                continue
            n = int(batch.out_valid[i].sum())
            if len(target) != n:
                raise ValueError(f"{self.family}: view {self.view.name!r} gives {len(target)} output symbols for "
                                 f"{n} output positions (answer {payload[:40]!r})")
            out[i, :n] = torch.tensor([self._ids[s] for s in target])
        return out

    def live(self, tokens: torch.Tensor, batch: ViewBatch | None = None) -> torch.Tensor:
        """The read-out positions that are part of the action: up to the first eos (characters),
        the view's outputs (symbols)."""
        if isinstance(self.view, CharView):
            eos = (tokens == EOS_ID).long()
            return (eos.cumsum(1) - eos) == 0
        return tokens != PAD_ID

    def decode(self, observations: Sequence[str], tokens: torch.Tensor) -> list[str]:
        """Answer texts from output ids [B, W] (PAD where a row has fewer outputs)."""
        if isinstance(self.view, CharView):
            return [TOK.decode([t for t in row if t not in (EOS_ID, PAD_ID)]) for row in tokens.tolist()]
        texts = []
        for obs, row in zip(observations, tokens.tolist()):
            symbols = [self._symbol_of.get(t, "") for t in row if t != PAD_ID]
            texts.append(self.view.decode(obs, symbols) if symbols else "")  # a choice that writes nothing
        return texts

    def describe(self) -> dict:
        return {**self.view.describe(), "width": self.width if isinstance(self.view, CharView) else None}


def with_views(model_cfg, specs) -> object:
    """``model_cfg`` able to read every spec's view: its symbols, coordinate channels and the
    vocabulary they need, and feedback where a view asks for it."""
    import dataclasses

    chosen = [(s.family, view_of(envs.make_family(s.family), s.view)) for s in specs]
    symbols, coords = model_tables(chosen)
    extra = {"feedback": True} if any(getattr(v, "feedback", False) for _, v in chosen) and hasattr(
        model_cfg, "feedback") else {}
    return dataclasses.replace(model_cfg, symbols=symbols, coords=coords, vocab_size=VOCAB_SIZE + len(symbols),
                               **extra)
