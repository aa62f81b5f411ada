"""ListOps: the expression language, its safe interpreter (shared with ``tools.list_eval``) and the verifier.

Language (elements are single digits 0-9, so every list prints at a fixed width)::

    expr := list | NAME "(" expr ")" | NAME "(" PARAM "," expr ")"
    list := "[" [digit ("," digit)*] "]"

    sort(L)      ascending                    rev(L)      reversed
    rot(k,L)     rotate left by k (mod len)   scan(L)     running sums mod 10
    map(+k,L)    (x+k) mod 10 for each x      map(*k,L)   (x*k) mod 10 for each x
    dedup(L)     drop repeats, first kept     keep(>k,L)  the x > k, in order (also keep(<k,L))

``k`` is one digit for map/keep, up to two digits for rot. Whitespace between tokens is
ignored. Parsing is a hand-written recursive descent with caps (characters, list length,
nesting depth), and evaluation charges one work unit per element read plus one per op.

Answers are written like lists in the language: ``[1,1,3,4]``, ``[]`` (whitespace tolerated).
Partial credit of ``verify``: when the answer has the right length, the fraction of
positions that match; a wrong length or an unreadable answer scores 0.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Union

from r3m.verifiers import RIGHT, Verdict, never_raises, wrong

MAX_CHARS = 1024
MAX_LEN = 64
MAX_DEPTH = 16
# op -> the parameter's leading symbols ("" for a bare digit count), or None when it takes none
OPS: dict[str, str | None] = {"sort": None, "rev": None, "scan": None, "dedup": None,
                              "rot": "", "map": "+*", "keep": "<>"}
LENGTH_PRESERVING = ("sort", "rev", "rot", "map", "scan")
_TOKEN = re.compile(r"\s*(?:([a-z]+)|([0-9]+)|(\S))")
_ANSWER_ITEM = re.compile(r"-?[0-9]{1,6}")
_NUMBER = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() and int() accept other scripts' too


class ListOpsError(ValueError):
    """Not an expression of the language, over a cap, or over the budget."""


class Call(NamedTuple):
    op: str
    param: str  # "" when the op takes none; else e.g. "3", "+3", ">4"
    arg: "Expr"


Expr = Union[tuple[int, ...], Call]


def apply(op: str, param: str, xs: list[int]) -> list[int]:
    """One operation on a list of digits (``param`` as written, e.g. ``"+3"``)."""
    if op == "sort":
        return sorted(xs)
    if op == "rev":
        return xs[::-1]
    if op == "scan":
        out, total = [], 0
        for x in xs:
            total = (total + x) % 10
            out.append(total)
        return out
    if op == "dedup":
        return list(dict.fromkeys(xs))
    if op == "rot":
        k = int(param) % len(xs) if xs else 0
        return xs[k:] + xs[:k]
    k = int(param[1:])
    if op == "map":
        return [(x + k) % 10 if param[0] == "+" else (x * k) % 10 for x in xs]
    if op == "keep":
        return [x for x in xs if (x > k if param[0] == ">" else x < k)]
    raise ListOpsError(f"unknown operation {op!r}")


class _Parser:
    def __init__(self, text: str, max_len: int, max_depth: int):
        self.tokens = self._tokenize(text)
        self.pos, self.max_len, self.max_depth = 0, max_len, max_depth

    @staticmethod
    def _tokenize(text: str) -> list[str]:
        tokens, pos = [], 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if not match:  # only trailing whitespace is left
                break
            tokens.append(match.group(match.lastindex))
            pos = match.end()
        return tokens

    def peek(self) -> str:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else "end of input"

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if expected is not None and token != expected:
            raise ListOpsError(f"expected {expected!r}, got {token!r}")
        if token == "end of input":
            raise ListOpsError("unexpected end of input")
        self.pos += 1
        return token

    def expr(self, depth: int) -> Expr:
        if depth > self.max_depth:
            raise ListOpsError(f"nested too deep (more than {self.max_depth} operations)")
        token = self.take()
        if token == "[":
            return self.list_literal()
        if token not in OPS:
            raise ListOpsError(f"unknown operation {token[:20]!r} (known: {', '.join(OPS)})")
        self.take("(")
        param = self.param(token) if OPS[token] is not None else ""
        arg = self.expr(depth + 1)
        self.take(")")
        return Call(token, param, arg)

    def param(self, op: str) -> str:
        symbols = OPS[op]
        sign = self.take() if symbols else ""
        if symbols and sign not in tuple(symbols):
            raise ListOpsError(f"{op} takes {' or '.join(symbols)} then a digit, got {sign[:20]!r}")
        number = self.take()
        if not _NUMBER.fullmatch(number) or len(number) > (1 if symbols else 2):
            raise ListOpsError(f"bad parameter {number[:20]!r} for {op}")
        self.take(",")
        return sign + number

    def list_literal(self) -> tuple[int, ...]:
        items: list[int] = []
        if self.peek() == "]":
            self.take()
            return ()
        while True:
            token = self.take()
            if not (_NUMBER.fullmatch(token) and len(token) == 1):
                raise ListOpsError(f"list elements must be single digits 0-9, got {token[:20]!r}")
            items.append(int(token))
            if len(items) > self.max_len:
                raise ListOpsError(f"list too long (more than {self.max_len} elements)")
            separator = self.take()
            if separator == "]":
                return tuple(items)
            if separator != ",":
                raise ListOpsError(f"expected ',' or ']', got {separator[:20]!r}")


def parse_listops(text: str, max_len: int = MAX_LEN, max_depth: int = MAX_DEPTH,
                  max_chars: int = MAX_CHARS) -> Expr:
    """Parse ``text`` into nested ``Call``s around a tuple literal, or raise ``ListOpsError``."""
    if not isinstance(text, str):
        raise ListOpsError(f"expression must be a string, got {type(text).__name__}")
    if len(text) > max_chars:
        raise ListOpsError(f"expression too long ({len(text)} > {max_chars} characters)")
    if not text.strip():
        raise ListOpsError("empty expression")
    parser = _Parser(text, max_len, max_depth)
    tree = parser.expr(0)
    if parser.pos != len(parser.tokens):
        raise ListOpsError(f"unexpected {parser.peek()[:20]!r} after the expression")
    return tree


def run(expr: Expr, budget: int | None = None) -> tuple[list[int], int]:
    """Evaluate a parsed expression; returns the list and the work spent (elements read + ops)."""
    chain = []
    while isinstance(expr, Call):
        chain.append(expr)
        expr = expr.arg
    xs, cost = list(expr), 0
    for call in [None, *reversed(chain)]:
        cost += len(xs) + (call is not None)
        if budget is not None and cost > budget:
            raise ListOpsError(f"budget exceeded (needs more than {budget} operations)")
        if call is not None:
            xs = apply(call.op, call.param, xs)
    return xs, cost


def format_list(xs: list[int] | tuple[int, ...]) -> str:
    return "[" + ",".join(str(x) for x in xs) + "]"


def parse_answer(text: str) -> list[int]:
    """Read ``[1, 2, 3]`` (whitespace tolerated); raises ``ListOpsError``."""
    text = text.strip()
    if len(text) < 2 or text[0] != "[" or text[-1] != "]":
        raise ListOpsError("answer must be a list such as [1,2,3]")
    inner = text[1:-1].strip()
    if not inner:
        return []
    items = [item.strip() for item in inner.split(",")]
    if not all(_ANSWER_ITEM.fullmatch(item) for item in items):
        raise ListOpsError("list items must be integers separated by commas")
    return [int(item) for item in items]


@never_raises
def verify(expression: str, answer: str) -> Verdict:
    """Score ``answer`` as the value of the listops ``expression`` (partial credit: module doc)."""
    try:
        expected, _ = run(parse_listops(expression))
    except ListOpsError as exc:
        return wrong(f"bad problem: {exc}")
    try:
        got = parse_answer(answer)
    except ListOpsError as exc:
        return wrong(str(exc))
    if got == expected:
        return RIGHT
    if len(got) != len(expected):
        return wrong(f"wrong length ({len(got)} elements instead of {len(expected)})")
    same = sum(a == b for a, b in zip(got, expected))
    return wrong(f"{same} of {len(expected)} elements right", same / len(expected))
