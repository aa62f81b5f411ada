"""The list DSL of the ``dsl`` family: syntax, a safe interpreter and the verifier.

A program is a pipeline of operations separated by ``|``, applied left to right to the input
list ``x``; spaces are ignored::

    sort|map(*2)|take(3)        # sort x, double every element, keep the first 3
    filter(>0)|scanl1(+)|last   # sum of the positive elements, via running sums

List -> list operations:

    sort  reverse  take(k)  drop(k)                  k = 0..99
    map(F)      F = +n -n *n /n %n (n = -99..99; / floors, like Python's //) or ^0..^3
    filter(P)   P = >n <n =n (n = -99..99), even, odd
    scanl1(G)   running fold: y[0] = x[0], y[i] = G(y[i-1], x[i])
    zipwith(G)  G applied element-wise to (current list, the program's input x); the
                shorter list sets the length (so ``reverse|zipwith(+)`` adds x to its reverse)
                G = + - * max min

List -> integer operations, which may only end a program:

    head  last  sum  max  min  count(P)

``head``/``last``/``max``/``min`` of an empty list, division or modulo by zero, an integer past
``MAX_ABS`` and an input longer than ``MAX_LIST`` are run-time errors: the program has no output
on that input. Programs have at most ``MAX_OPS`` operations and every run a work budget (list
elements processed). No operation lengthens a list, which the search in ``tools/dsl_search.py``
uses to prune.

Numbers are ASCII digits only: the patterns say ``[0-9]``, never ``\\d``, which also matches
other scripts' digits (``take(٢)``) that ``int()`` would then read.

Examples are written ``[3,1,2]->[6,4,2]; [5,0]->[10,0]`` (an integer output as ``[3,1]->4``),
optionally after a ``dsl:`` prefix, as in the family's prompts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

from r3m.verifiers import RIGHT, Verdict, never_raises, wrong

Value = Union[int, tuple]  # an integer or a tuple of integers
MAX_ABS = 10**9
MAX_LIST = 256
MAX_OPS = 12
MAX_PROGRAM_CHARS = 256
MAX_EXAMPLES = 32
MAX_EXAMPLE_ELEMENTS = 256  # integers in all examples together: bounds the cost of one search node
RUN_BUDGET = 10_000  # list elements processed per run

# The canonical operations the search enumerates and the generator draws from; the parser
# accepts the wider grammar above.
MAP_FNS = ("+1", "-1", "+2", "*2", "*3", "/2", "*-1", "^2", "%2")
PREDS = (">0", "<0", "even", "odd")
BINS = ("+", "-", "*", "max", "min")
LIST_OPS = (
    ("sort", "reverse")
    + tuple(f"take({k})" for k in (1, 2, 3))
    + tuple(f"drop({k})" for k in (1, 2, 3))
    + tuple(f"map({f})" for f in MAP_FNS)
    + tuple(f"filter({p})" for p in PREDS)
    + tuple(f"scanl1({g})" for g in BINS)
    + tuple(f"zipwith({g})" for g in BINS)
)
INT_OPS = ("head", "last", "sum", "max", "min") + tuple(f"count({p})" for p in PREDS)


class DslError(ValueError):
    """A malformed program or example, or a run-time error."""


@dataclass(frozen=True)
class Op:
    name: str
    arg: str | None
    fn: Callable[[tuple, tuple], Value]  # (current list, program input) -> value
    returns_int: bool

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}({self.arg})"


def _check(values: tuple) -> tuple:
    if values and max(max(values), -min(values)) > MAX_ABS:
        raise DslError(f"integer overflow (|v| > {MAX_ABS})")
    return values


def _floordiv(a: int, n: int) -> int:
    if n == 0:
        raise DslError("division by zero")
    return a // n


def _mod(a: int, n: int) -> int:
    if n == 0:
        raise DslError("modulo by zero")
    return a % n


_MAP_RE = re.compile(r"([-+*/%])(-?[0-9]{1,2})|\^([0-3])")
_PRED_RE = re.compile(r"([<>=])(-?[0-9]{1,2})|even|odd")
_BINARY: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "max": max, "min": min,
}


def parse_map_fn(text: str) -> Callable[[int], int]:
    m = _MAP_RE.fullmatch(text)
    if not m:
        raise DslError(f"bad map function {text[:16]!r} (want +n -n *n /n %n or ^0..^3)")
    if m.group(3) is not None:
        e = int(m.group(3))
        return lambda a: a**e
    op, n = m.group(1), int(m.group(2))
    return {
        "+": lambda a: a + n, "-": lambda a: a - n, "*": lambda a: a * n,
        "/": lambda a: _floordiv(a, n), "%": lambda a: _mod(a, n),
    }[op]


def parse_pred(text: str) -> Callable[[int], bool]:
    m = _PRED_RE.fullmatch(text)
    if not m:
        raise DslError(f"bad predicate {text[:16]!r} (want >n <n =n even odd)")
    if text == "even":
        return lambda a: a % 2 == 0
    if text == "odd":
        return lambda a: a % 2 == 1
    op, n = m.group(1), int(m.group(2))
    return {">": lambda a: a > n, "<": lambda a: a < n, "=": lambda a: a == n}[op]


def parse_binary(text: str) -> Callable[[int, int], int]:
    if text not in _BINARY:
        raise DslError(f"bad binary function {text[:16]!r} (want + - * max min)")
    return _BINARY[text]


def _nonempty(xs: tuple, name: str) -> tuple:
    if not xs:
        raise DslError(f"{name} of an empty list")
    return xs


def _scanl1(xs: tuple, g: Callable[[int, int], int]) -> tuple:
    out, acc = [], None
    for i, v in enumerate(xs):
        acc = v if i == 0 else g(acc, v)
        if abs(acc) > MAX_ABS:
            raise DslError(f"integer overflow (|v| > {MAX_ABS})")
        out.append(acc)
    return tuple(out)


_WITH_ARG = ("take", "drop", "map", "filter", "count", "scanl1", "zipwith")


def _make_op(name: str, arg: str | None) -> Op:
    """One operation from its name and argument text; raises DslError."""
    plain = {
        "sort": lambda xs, x: tuple(sorted(xs)),
        "reverse": lambda xs, x: xs[::-1],
        "head": lambda xs, x: _nonempty(xs, "head")[0],
        "last": lambda xs, x: _nonempty(xs, "last")[-1],
        "sum": lambda xs, x: sum(xs),
        "max": lambda xs, x: max(_nonempty(xs, "max")),
        "min": lambda xs, x: min(_nonempty(xs, "min")),
    }
    if name in plain:
        if arg is not None:
            raise DslError(f"{name} takes no argument")
        return Op(name, None, plain[name], name not in ("sort", "reverse"))
    if arg is None:
        missing = f"{name} needs an argument" if name in _WITH_ARG else f"unknown operation {name[:16]!r}"
        raise DslError(missing)
    if name in ("take", "drop"):
        if not re.fullmatch(r"[0-9]{1,2}", arg):
            raise DslError(f"{name} needs a count 0..99, got {arg[:16]!r}")
        k = int(arg)
        fn = (lambda xs, x: xs[:k]) if name == "take" else (lambda xs, x: xs[k:])
        return Op(name, str(k), fn, False)
    if name == "map":
        f = parse_map_fn(arg)
        return Op(name, arg, lambda xs, x: _check(tuple([f(v) for v in xs])), False)
    if name in ("filter", "count"):
        p = parse_pred(arg)
        if name == "filter":
            return Op(name, arg, lambda xs, x: tuple([v for v in xs if p(v)]), False)
        return Op(name, arg, lambda xs, x: sum(1 for v in xs if p(v)), True)
    if name in ("scanl1", "zipwith"):
        g = parse_binary(arg)
        if name == "scanl1":
            return Op(name, arg, lambda xs, x: _scanl1(xs, g), False)
        return Op(name, arg, lambda xs, x: _check(tuple([g(a, b) for a, b in zip(xs, x)])), False)
    raise DslError(f"unknown operation {name[:16]!r}")


_OP_RE = re.compile(r"([a-z0-9]+)(?:\(([^()]*)\))?")


def parse_op(text: str) -> Op:
    m = _OP_RE.fullmatch(text)
    if not m:
        raise DslError(f"malformed operation {text[:24]!r}")
    return _make_op(m.group(1), m.group(2))


def parse_program(text: str) -> tuple[Op, ...]:
    """Parse a pipeline; raises DslError on anything outside the grammar."""
    if not isinstance(text, str) or len(text) > MAX_PROGRAM_CHARS:
        raise DslError(f"program must be a string of at most {MAX_PROGRAM_CHARS} characters")
    compact = "".join(text.split())
    if not compact:
        raise DslError("empty program")
    parts = compact.split("|")
    if len(parts) > MAX_OPS:
        raise DslError(f"program too long ({len(parts)} > {MAX_OPS} operations)")
    ops = tuple(parse_op(p) for p in parts)
    for op in ops[:-1]:
        if op.returns_int:
            raise DslError(f"{op} returns an integer, so it can only end the program")
    return ops


def format_program(ops: Sequence[Op]) -> str:
    return "|".join(str(op) for op in ops)


def run(program: str | Sequence[Op], x: Sequence[int], budget: int = RUN_BUDGET) -> Value:
    """Run ``program`` on the list ``x``; raises DslError on a run-time error or an exhausted budget."""
    ops = parse_program(program) if isinstance(program, str) else program
    x = tuple(x)
    if len(x) > MAX_LIST:
        raise DslError(f"input too long ({len(x)} > {MAX_LIST})")
    _check(x)
    value: Value = x
    for op in ops:
        budget -= max(1, len(value))
        if budget < 0:
            raise DslError("run budget exceeded")
        value = op.fn(value, x)
    return value


# -- examples -----------------------------------------------------------------------------
_LIST_RE = re.compile(r"\[(-?[0-9]{1,10}(?:,-?[0-9]{1,10})*)?\]")
_INT_RE = re.compile(r"-?[0-9]{1,10}")


def _parse_value(text: str) -> Value:
    if _INT_RE.fullmatch(text):
        return int(text)
    if not _LIST_RE.fullmatch(text):
        raise DslError(f"bad value {text[:24]!r} (want [1,-2,3] or an integer)")
    return tuple(int(v) for v in text[1:-1].split(",")) if len(text) > 2 else ()


def format_value(v: Value) -> str:
    return str(v) if isinstance(v, int) else "[" + ",".join(map(str, v)) + "]"


def format_examples(pairs: Sequence[tuple[Sequence[int], Value]]) -> str:
    return "; ".join(f"{format_value(tuple(i))}->{format_value(o)}" for i, o in pairs)


def parse_examples(text: str) -> list[tuple[tuple, Value]]:
    """``[3,1]->[6,2]; [5]->10`` (an optional ``dsl:`` prefix) to a list of (input, output)."""
    if not isinstance(text, str):
        raise DslError("examples must be a string")
    body = "".join(text.split())
    if body.startswith("dsl:"):
        body = body[4:]
    if not body:
        raise DslError("no examples")
    items = body.rstrip(";").split(";")
    if len(items) > MAX_EXAMPLES:
        raise DslError(f"too many examples ({len(items)} > {MAX_EXAMPLES})")
    pairs = []
    for item in items:
        left, arrow, right = item.partition("->")
        if not arrow:
            raise DslError(f"example {item[:24]!r} lacks '->'")
        x, y = _parse_value(left), _parse_value(right)
        if isinstance(x, int):
            raise DslError(f"example input must be a list, got {left[:24]!r}")
        for v in (x, y):
            if (len(v) if isinstance(v, tuple) else 0) > MAX_LIST:
                raise DslError(f"list too long (> {MAX_LIST})")
            _check(v if isinstance(v, tuple) else (v,))
        pairs.append((x, y))
    size = sum(len(x) + (len(y) if isinstance(y, tuple) else 1) for x, y in pairs)
    if size > MAX_EXAMPLE_ELEMENTS:
        raise DslError(f"examples too large ({size} > {MAX_EXAMPLE_ELEMENTS} integers in all)")
    return pairs


def _as_value(v) -> Value:
    return int(v) if isinstance(v, int) else tuple(int(e) for e in v)


@never_raises
def verify(problem: Mapping, answer: str) -> Verdict:
    """Run the answer program on ``problem["shown"]`` and ``problem["held_out"]`` examples.

    Each is a sequence of (input list, output) pairs. Correct iff the program reproduces every
    output. Partial credit: the fraction of examples (shown and held-out together) matched; a
    malformed program scores 0. A run-time error on an example counts as a mismatch.
    """
    examples = [(tuple(i), _as_value(o)) for i, o in (*problem["shown"], *problem.get("held_out", ()))]
    if not examples:
        return wrong("problem has no examples")
    try:
        ops = parse_program(answer)
    except DslError as exc:
        return wrong(f"malformed program: {exc}")
    matched = 0
    for x, y in examples:
        try:
            matched += run(ops, x) == y
        except DslError:
            pass
    if matched == len(examples):
        return RIGHT
    return wrong(f"{matched}/{len(examples)} examples match", matched / len(examples))
