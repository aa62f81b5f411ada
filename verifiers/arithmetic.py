"""Arithmetic verifier, and the safe expression parser it shares with ``tools.calculator``.

``parse_expression`` reads text with Python's ``ast`` (parsing never executes anything) and
keeps only a whitelist: number literals, the allowed binary operators, unary + and -, and
parentheses. Anything else (names, calls, attributes, strings, ...) raises ``ExpressionError``
with a reason a policy can read. Literals are re-read from their source text, so ``0.1`` is
exactly 1/10 and ``0x10``, ``1e3``, ``1_000`` or ``1j`` are refused.

Partial credit of ``verify``: an integer answer with the right sign scores the fraction of
digit positions that match, aligned from the right over the longer of the two numbers
(expected 1234, answer 1284: 3/4). A wrong sign or a non-integer answer scores 0.
"""

from __future__ import annotations

import ast
import re
import warnings
from typing import NamedTuple, Union

from r3m.verifiers import RIGHT, Verdict, never_raises, wrong

INT_OPS = frozenset({"+", "-", "*"})
ALL_OPS = frozenset({"+", "-", "*", "/", "//", "%", "**"})
MAX_CHARS = 256
MAX_NODES = 128
MAX_DIGITS = 32

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
           ast.Pow: "**", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|",
           ast.BitXor: "^", ast.BitAnd: "&"}
_UNARY = {ast.UAdd: "+", ast.USub: "-", ast.Not: "not", ast.Invert: "~"}
_REFUSED = {ast.Name: "names", ast.Call: "function calls", ast.Attribute: "attributes",
            ast.Subscript: "subscripts", ast.Lambda: "lambdas", ast.ListComp: "comprehensions",
            ast.SetComp: "comprehensions", ast.DictComp: "comprehensions", ast.GeneratorExp: "comprehensions",
            ast.Compare: "comparisons", ast.BoolOp: "boolean operators", ast.IfExp: "conditionals",
            ast.Tuple: "tuples", ast.List: "lists", ast.Dict: "dicts", ast.Set: "sets",
            ast.JoinedStr: "strings", ast.NamedExpr: "assignments", ast.Starred: "starred expressions",
            ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield", ast.Slice: "slices"}
_INT_LITERAL = re.compile(r"[0-9]+")
_DEC_LITERAL = re.compile(r"([0-9]*)\.([0-9]*)")
_ANSWER = re.compile(r"([+-]?)([0-9]+)")


class ExpressionError(ValueError):
    """The text is not an expression of the accepted language, or it exceeds a size cap."""


class Num(NamedTuple):
    """A literal: ``value / 10**scale`` (scale > 0 only for decimal literals)."""

    value: int
    scale: int = 0


class Unary(NamedTuple):
    op: str
    operand: "Node"


class Binary(NamedTuple):
    op: str
    left: "Node"
    right: "Node"


Node = Union[Num, Unary, Binary]


def parse_expression(
    text: str,
    *,
    ops: frozenset[str] = INT_OPS,
    decimals: bool = False,
    max_chars: int = MAX_CHARS,
    max_nodes: int = MAX_NODES,
    max_digits: int = MAX_DIGITS,
) -> Node:
    """Parse ``text`` into a ``Num``/``Unary``/``Binary`` tree, or raise ``ExpressionError``.

    ``ops`` are the binary operators allowed; ``decimals`` allows literals such as ``2.5``;
    the caps bound the characters, the tree nodes and the digits of each literal.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ExpressionError("empty expression")
    if len(text) > max_chars:
        raise ExpressionError(f"expression too long ({len(text)} > {max_chars} characters)")
    bad = next((c for c in text if not (32 <= ord(c) < 127 or c in "\t\n")), None)
    if bad is not None:
        raise ExpressionError(f"unexpected character {bad!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning for "1(2)"; parsing is all we do
            body = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(f"syntax error: {getattr(exc, 'msg', None) or type(exc).__name__}") from None
    return _Converter(text, ops, decimals, max_nodes, max_digits).convert(body)


class _Converter:
    def __init__(self, text: str, ops: frozenset[str], decimals: bool, max_nodes: int, max_digits: int):
        self.text, self.ops, self.decimals = text, ops, decimals
        self.nodes_left, self.max_nodes, self.max_digits = max_nodes, max_nodes, max_digits

    def convert(self, node: ast.AST) -> Node:
        self.nodes_left -= 1
        if self.nodes_left < 0:
            raise ExpressionError(f"expression too large (more than {self.max_nodes} nodes)")
        if isinstance(node, ast.BinOp):
            op = _BINARY.get(type(node.op), type(node.op).__name__)
            if op not in self.ops:
                raise ExpressionError(f"operator {op} is not allowed (allowed: {' '.join(sorted(self.ops))})")
            return Binary(op, self.convert(node.left), self.convert(node.right))
        if isinstance(node, ast.UnaryOp):
            op = _UNARY.get(type(node.op), type(node.op).__name__)
            if op not in ("+", "-"):
                raise ExpressionError(f"unary operator {op} is not allowed")
            return Unary(op, self.convert(node.operand))
        if isinstance(node, ast.Constant):
            return self.literal(node)
        what = _REFUSED.get(type(node), type(node).__name__)
        raise ExpressionError(f"{what} are not allowed: only numbers, operators and parentheses")

    def literal(self, node: ast.Constant) -> Num:
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ExpressionError(f"{type(node.value).__name__} literals are not allowed: only numbers")
        source = ast.get_source_segment(self.text, node) or ""
        if _INT_LITERAL.fullmatch(source):
            digits, scale = source, 0
        else:
            match = _DEC_LITERAL.fullmatch(source)
            if not match or not (match[1] or match[2]):
                raise ExpressionError(f"number {source[:20]!r} must be plain decimal digits")
            if not self.decimals:
                raise ExpressionError(f"only integers are allowed, got {source[:20]!r}")
            digits, scale = match[1] + match[2], len(match[2])
        if len(digits) > self.max_digits:
            raise ExpressionError(f"number too long ({len(digits)} > {self.max_digits} digits)")
        return Num(int(digits or "0"), scale)


def evaluate_int(node: Node) -> int:
    """Exact value of an integer ``+ - *`` tree (raises ``ExpressionError`` on anything else)."""
    if isinstance(node, Num):
        if node.scale:
            raise ExpressionError("only integers are allowed")
        return node.value
    if isinstance(node, Unary):
        value = evaluate_int(node.operand)
        return -value if node.op == "-" else value
    left, right = evaluate_int(node.left), evaluate_int(node.right)
    if node.op == "+":
        return left + right
    if node.op == "-":
        return left - right
    if node.op == "*":
        return left * right
    raise ExpressionError(f"operator {node.op} is not allowed")


@never_raises
def verify(expression: str, answer: str) -> Verdict:
    """Score ``answer`` as the value of the integer ``expression`` (``+ - *``, parentheses).

    Accepted: an integer in plain decimal, optionally signed (``+`` or ``-``), with surrounding
    whitespace; leading zeros are read as the same number. Partial credit: see the module doc.
    """
    try:
        value = evaluate_int(parse_expression(expression))
    except ExpressionError as exc:
        return wrong(f"bad problem: {exc}")
    match = _ANSWER.fullmatch(answer.strip())
    if not match:
        return wrong("answer is not an integer in plain decimal")
    digits = match[2].lstrip("0") or "0"
    negative = match[1] == "-" and digits != "0"
    expected = str(abs(value))
    if negative == (value < 0) and digits == expected:
        return RIGHT
    if negative != (value < 0):
        return wrong("wrong sign")
    width = max(len(digits), len(expected))
    same = sum(a == b for a, b in zip(digits.rjust(width), expected.rjust(width)))
    return wrong(f"wrong value ({same} of {width} digits right)", same / width)
