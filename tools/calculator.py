"""``calculator``: exact arithmetic on an ``ast``-whitelisted expression, computed with sympy.

    <call>calculator (47+385)*6-12</call>  ->  <result>2580</result>
    <call>calculator 7/2-0.5**2</call>     ->  <result>13/4</result>

Language: decimal literals (``12``, ``2.5``, ``.5``: read exactly, as fractions), binary
``+ - * / // % **``, unary ``+ -`` and parentheses; the parser is
``verifiers.arithmetic.parse_expression``, so the text is never executed or sympified.
``//`` and ``%`` follow Python (floor division; the remainder has the sign of the divisor).
Output: an integer, or ``p/q`` in lowest terms (the sign on ``p``) for a non-integer.

Budget: one operation per literal and per operator, and a power ``a**e`` costs ``|e|`` more
(it stands for that many multiplications), charged before it is computed. Caps: 256
characters, 128 nodes, 64 digits per literal, integer exponents with ``|e| <= 256``, and
numerators and denominators below 1,000 digits at every step.
"""

from __future__ import annotations

import sympy

from r3m.tools import ToolResult
from r3m.verifiers.arithmetic import ALL_OPS, ExpressionError, Node, Num, Unary, parse_expression

MAX_CHARS = 256
MAX_NODES = 128
MAX_LITERAL_DIGITS = 64
MAX_EXPONENT = 256
MAX_DIGITS = 1000
MAX_OUTPUT_CHARS = 512
_MAX_BITS = int(MAX_DIGITS * 3.3219280948873626)  # log2(10) bits per decimal digit


class CalcError(ValueError):
    pass


class _Evaluator:
    def __init__(self, budget: int):
        self.budget = int(budget)
        self.cost = 0

    def charge(self, units: int) -> None:
        if self.cost + units > self.budget:
            raise CalcError(f"budget exceeded (needs {self.cost + units} operations, budget {self.budget})")
        self.cost += units

    def evaluate(self, node: Node) -> sympy.Rational:
        self.charge(1)
        if isinstance(node, Num):
            return sympy.Rational(node.value, 10**node.scale)
        if isinstance(node, Unary):
            value = self.evaluate(node.operand)
            return -value if node.op == "-" else value
        left, right = self.evaluate(node.left), self.evaluate(node.right)
        return _check_size(self.binary(node.op, left, right))

    def binary(self, op: str, a: sympy.Rational, b: sympy.Rational) -> sympy.Rational:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "**":
            return self.power(a, b)
        if b == 0:
            raise CalcError("division by zero" if op == "/" else "integer division or modulo by zero")
        if op == "/":
            return a / b
        # The floor is taken on Python ints: sympy 1.14 gets Integer // Rational wrong (-7 // (1/2) -> -15).
        if op == "//":
            return sympy.Integer((a.p * b.q) // (a.q * b.p))
        if op == "%":
            return a - b * ((a.p * b.q) // (a.q * b.p))
        raise CalcError(f"operator {op} is not supported")

    def power(self, base: sympy.Rational, exponent: sympy.Rational) -> sympy.Rational:
        if exponent.q != 1:
            raise CalcError("exponent must be an integer (results are exact fractions)")
        e = int(exponent.p)
        self.charge(max(abs(e), 1))
        if abs(e) > MAX_EXPONENT:
            raise CalcError(f"exponent {e} is too large (the limit is {MAX_EXPONENT})")
        if base == 0 and e < 0:
            raise CalcError("division by zero (zero to a negative power)")
        if max(int(base.p).bit_length(), int(base.q).bit_length()) * abs(e) > _MAX_BITS + 64:
            raise CalcError(f"result too large (more than {MAX_DIGITS} digits)")
        return base**e


def _check_size(value: sympy.Rational) -> sympy.Rational:
    if max(int(value.p).bit_length(), int(value.q).bit_length()) > _MAX_BITS:
        raise CalcError(f"result too large (more than {MAX_DIGITS} digits)")
    return value


def format_number(value: sympy.Rational) -> str:
    """``13``, ``-7/2``: an integer, or a fraction in lowest terms."""
    return str(int(value.p)) if value.q == 1 else f"{int(value.p)}/{int(value.q)}"


def calculate(args: str, budget: int) -> ToolResult:
    """Evaluate ``args`` exactly within ``budget`` operations; errors come back as ``ok=False``."""
    try:
        tree = parse_expression(args, ops=ALL_OPS, decimals=True, max_chars=MAX_CHARS,
                                max_nodes=MAX_NODES, max_digits=MAX_LITERAL_DIGITS)
    except ExpressionError as exc:
        return ToolResult.fail(str(exc))
    evaluator = _Evaluator(budget)
    try:
        text = format_number(evaluator.evaluate(tree))
    except CalcError as exc:
        return ToolResult.fail(str(exc), evaluator.cost)
    if len(text) > MAX_OUTPUT_CHARS:
        return ToolResult.fail(f"result too long to print ({len(text)} > {MAX_OUTPUT_CHARS} characters)",
                               evaluator.cost)
    return ToolResult(True, text, evaluator.cost)
