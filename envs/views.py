"""Task views: how a family's observation reaches the model and how the model's output becomes the
answer text. The env and the verifier stay text; a view changes only how the model reads and writes.

A family declares its views (``TaskFamily.views``; the first is its default). Two kinds:

- ``CharView``: the observation as characters, the answer written into right-aligned character
  slots (``fill``) or token by token (``causal``). Every family has it (``"chars"``); a family
  that declares nothing is read this way, so plug-ins work unchanged.
- ``SymbolView`` subclasses: the observation as a sequence of symbols (a character, or a word the
  view declares) with integer coordinates (a Sudoku cell's row, column and box; a digit's place
  value), and outputs at chosen positions, each one symbol of a closed set the view declares:
  an output at each input position (running parity, Sudoku cells), a closed answer set (bAbI
  places), digits aligned by place value (arithmetic). The best systems of the field each read
  the task in its own shape: Deep Thinking nets emit one output per input position, TRM sees 81
  cells, memory networks store one memory per sentence and answer from a closed vocabulary,
  arithmetic Transformers align digits by place value.

A symbol view sees a transcript's tool calls and results as events (``<call>``, ``<result>``,
``<error>``), not their text: a call's ARGS follow from the observation (``call_args``) and the
answer after a verified result is the family's ``answer_from_result``, so calling and using a
result are decisions of the tool head, never a copy written symbol by symbol.

This module needs no torch: ``r3m.learn.io`` binds a view to a model's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

from r3m.tools.syntax import CALL_CLOSE, CALL_OPEN, RESULT_CLOSE, RESULT_OPEN

SEP = "<sep>"  # ends the input: the decision point (tool choice, halting, memory write)
SLOT = "<mask>"  # an answer slot: a position whose input carries nothing
CALL_EVENT, RESULT_EVENT, ERROR_EVENT = "<call>", "<result>", "<error>"
EVENTS = (CALL_EVENT, RESULT_EVENT, ERROR_EVENT)


class Token(NamedTuple):
    """One input position of a symbol view: its symbol, its coordinates (one value per channel of
    ``SymbolView.coords``, each in 1..size, 0 for none) and whether it emits an output."""

    symbol: str
    coords: tuple[int, ...] = ()
    output: bool = False


@dataclass(frozen=True)
class Encoded:
    """An observation as the model reads it: ``symbols`` and ``coords`` per position, the
    positions that emit outputs (``outputs``, in the answer's order), the answer slots (``slots``:
    inputs that carry nothing, which the other inputs do not attend to) and the decision point."""

    symbols: tuple[str, ...]
    coords: tuple[tuple[int, ...], ...]
    outputs: tuple[int, ...]
    slots: tuple[int, ...]
    decision: int


class Transcript(NamedTuple):
    """An observation split into the family's prompt and the tool events after it."""

    prompt: str
    events: tuple[str, ...]  # CALL_EVENT / RESULT_EVENT / ERROR_EVENT, in order
    last_result: str | None  # the output of the last result that is not an error


def split_transcript(observation: str) -> Transcript:
    """The prompt (text before the first call) and the calls and results after it."""
    prompt, sep, rest = observation.partition(CALL_OPEN)
    events: list[str] = []
    last = None
    text = sep + rest
    while text:
        if text.startswith(CALL_OPEN):
            end = text.find(CALL_CLOSE)
            events.append(CALL_EVENT)
            text = text[end + len(CALL_CLOSE):] if end >= 0 else ""
        elif text.startswith(RESULT_OPEN):
            end = text.find(RESULT_CLOSE)
            output = text[len(RESULT_OPEN): end if end >= 0 else len(text)]
            error = output.startswith("error:")
            events.append(ERROR_EVENT if error else RESULT_EVENT)
            last = last if error else output
            text = text[end + len(RESULT_CLOSE):] if end >= 0 else ""
        else:  # text between the delimiters (none in the env's transcripts): skip to the next one
            nxt = min((i for i in (text.find(CALL_OPEN, 1), text.find(RESULT_OPEN, 1)) if i > 0), default=-1)
            text = text[nxt:] if nxt > 0 else ""
    return Transcript(prompt, tuple(events), last)


class View:
    """The base of both kinds. ``name`` is unique among a family's views."""

    name: str = "view"
    kind: str = "symbols"  # "fill", "causal" (CharView) or "symbols"

    def describe(self) -> dict:
        """What a run records of the view it used (metrics name the view each model read)."""
        return {"name": self.name, "kind": self.kind}


class CharView(View):
    """Characters in, characters out: the layout every family had before views (see
    ``r3m.learn.data``): ``<bos> transcript <sep>`` then answer slots (``fill``) or the payload
    token by token (``causal``)."""

    name = "chars"

    def __init__(self, mode: str = "fill"):
        if mode not in ("fill", "causal"):
            raise ValueError(f"a character view is 'fill' or 'causal', got {mode!r}")
        self.kind = mode


class SymbolView(View):
    """A view over symbols (see the module docstring). Subclasses set the class attributes and
    implement ``tokens``, ``target`` and ``decode``; the events, the ``<sep>`` and the slots are
    laid out here, the same for every view.

    - ``symbols``: the input symbols that are not characters of the suite's alphabet (words);
    - ``out_symbols``: the closed set every output position chooses from;
    - ``coords``: the size of each coordinate channel (a Sudoku view: row, column, box: 9, 9, 9);
    - ``coord_tables``: the embedding table each channel reads (channels naming one table share it,
      so what a value means is learned once; default: a table per channel);
    - ``window``: attention limited to ``left`` positions before and ``right`` after (None: every
      position sees every other): a local rule, such as a running parity, then runs the same on
      any length;
    - ``peers``: each position with coordinates attends only to the positions that share one of its
      coordinate values (a Sudoku cell: its row, column and box), the task's constraint graph;
    - ``feedback``: each refinement step also sees the previous step's predictions at the output
      positions (TRM's answer state);
    - ``summary``: the answer slots start from the observation's summary (the normalised mean of its
      token embeddings, as memory networks' question embedding), for answers read from memory;
    - ``write``: what an episodic-memory write keeps of a turn: "decision" (the decision point's
      state) or "mean" (the mean of the turn's token states: one memory per sentence, as memory
      networks store a story).
    """

    symbols: tuple[str, ...] = ()
    out_symbols: tuple[str, ...] = ()
    coords: tuple[int, ...] = ()
    coord_tables: tuple[str, ...] = ()
    window: tuple[int, int] | None = None
    peers: bool = False
    feedback: bool = False
    summary: bool = False
    write: str = "decision"
    slots: int = 0  # answer slots after the <sep> (outputs after the input's own output positions)

    # -- what a subclass implements --------------------------------------------------------------
    def tokens(self, prompt: str) -> list[Token]:
        """The prompt (the transcript before any tool call) as input tokens."""
        raise NotImplementedError

    def target(self, observation: str, answer: str) -> tuple[str, ...] | None:
        """The output symbols that say ``answer`` (one per output position of ``encode``), or None
        when the turn has no answer to learn (a streamed step that accepts anything)."""
        raise NotImplementedError

    def decode(self, observation: str, outputs: Sequence[str]) -> str:
        """The answer text from the output symbols."""
        raise NotImplementedError

    def call_args(self, observation: str) -> str | None:
        """The ARGS of a tool call made at ``observation`` (None: this view makes no calls)."""
        return None

    # -- the shared layout -------------------------------------------------------------------------
    @property
    def tables(self) -> tuple[str, ...]:
        """The table each coordinate channel reads (``coord_tables``, or one per channel)."""
        if not self.coord_tables:
            return tuple(str(i) for i in range(len(self.coords)))
        if len(self.coord_tables) != len(self.coords):
            raise ValueError(f"view {self.name}: coord_tables names {len(self.coord_tables)} tables for "
                             f"{len(self.coords)} channels")
        sizes: dict[str, int] = {}
        for name, size in zip(self.coord_tables, self.coords):
            if sizes.setdefault(name, size) != size:
                raise ValueError(f"view {self.name}: channels sharing table {name!r} differ in size")
        return self.coord_tables

    @property
    def all_symbols(self) -> tuple[str, ...]:
        """Every symbol this view may put at an input or output position beyond the alphabet."""
        return tuple(dict.fromkeys((*self.symbols, *self.out_symbols, ERROR_EVENT)))

    def encode(self, observation: str) -> Encoded:
        """``tokens(prompt)``, one token per tool event, ``<sep>``, then ``slots`` answer slots."""
        script = split_transcript(observation)
        toks = self.tokens(script.prompt)
        width = len(self.coords)
        none = (0,) * width
        toks += [Token(e, none) for e in script.events] + [Token(SEP, none)]
        start = len(toks)
        toks += [Token(SLOT, none, True) for _ in range(self.slots)]
        bad = next((t for t in toks if len(t.coords) != width), None)
        if bad is not None:
            raise ValueError(f"view {self.name}: token {bad.symbol!r} has {len(bad.coords)} coordinates, "
                             f"the view declares {width}")
        return Encoded(tuple(t.symbol for t in toks), tuple(t.coords for t in toks),
                       tuple(i for i, t in enumerate(toks) if t.output), tuple(range(start, len(toks))),
                       start - 1)

    def describe(self) -> dict:
        return {**super().describe(), "out_symbols": len(self.out_symbols), "symbols": len(self.all_symbols),
                "coords": list(self.coords), "window": list(self.window) if self.window else None, "peers": self.peers,
                "feedback": self.feedback, "summary": self.summary, "write": self.write, "slots": self.slots}


def views_of(family) -> Mapping[str, View]:
    """The family's views by name, its default first; ``"chars"`` is always among them."""
    declared = dict(family.views())
    declared.setdefault("chars", CharView(family.decode))
    return declared


def view_of(family, name: str | None = None) -> View:
    """The family's view ``name`` (None: its default, the first it declares)."""
    views = views_of(family)
    if name is None:
        return next(iter(views.values()))
    if name not in views:
        raise ValueError(f"{family.name} has no view {name!r}; its views: {', '.join(views)}")
    return views[name]
