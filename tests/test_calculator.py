"""The calculator tool: refuses code, stays within its budget, and is exact."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from r3m import tools
from r3m.tools.calculator import MAX_EXPONENT, calculate

BUDGET = tools.spec("calculator").budget


@pytest.mark.parametrize("text, error", [
    ("__import__('os').system('x')", "function calls"),
    ("().__class__", "attributes"),
    ("a", "names"),
    ("x[0]", "subscripts"),
    ("'abc'", "str literals"),
    ("lambda: 1", "lambdas"),
    ("[i for i in (1, 2)]", "comprehensions"),
    ("1 < 2", "comparisons"),
    ("1 & 2", "operator &"),
    ("2**10**10", "budget exceeded"),
    ("2**1000", "exponent 1000 is too large"),
    ("2**0.5", "exponent must be an integer"),
    ("1/0", "division by zero"),
    ("5//0", "by zero"),
    ("5%0.0", "by zero"),
    ("0**-2", "division by zero"),
    ("1e9", "plain decimal digits"),
    ("", "empty"),
    ("1+" * 200 + "1", "too long"),
    ("((1)", "syntax error"),
])
def test_refusals_are_clear_errors(text, error):
    result = tools.call("calculator", text)
    assert not result.ok and result.output == "" and error in result.error


def test_power_budget_is_charged_before_computing():
    result = calculate("2**10**10", BUDGET)
    assert "budget exceeded" in result.error and result.cost <= BUDGET  # 2**(10**10) was never formed
    assert calculate("2**64", 70).ok and "budget exceeded" in calculate("2**64", 60).error
    assert "budget exceeded" in calculate("1+2+3", 3).error and calculate("1+2+3", 5).cost == 5


def test_size_caps():
    assert "too large" in calculate("*".join(["9**200"] * 6), BUDGET).error
    assert calculate(f"2**{MAX_EXPONENT}", BUDGET).ok
    big = calculate("9**200*9**200", BUDGET)  # 382 digits: printable within 512 characters
    assert big.ok and big.output == str(9**400)
    assert "too long to print" in calculate("9**200*9**200*9**200", BUDGET).error  # 573 digits


@pytest.mark.parametrize("text, value", [
    ("(47+385)*6-12", "2580"), ("7/2-0.5**2", "13/4"), ("0.1+0.2", "3/10"), ("-7//2", "-4"),
    ("-7%3", "2"), ("7%-3", "-2"), ("-7//0.5", "-14"), ("1.5%0.4", "3/10"), ("2**-2", "1/4"),
    ("(-2)**3", "-8"), ("-2**2", "-4"), ("+-+3", "-3"), ("6/3", "2"), ("0.50", "1/2"), (" 12 ", "12"),
])
def test_known_values(text, value):
    assert tools.call("calculator", text).output == value


def _random_expression(rng: np.random.Generator, depth: int) -> tuple[str, Fraction]:
    """An expression and its value, computed here with Python ints and Fractions."""
    if depth == 0 or rng.random() < 0.25:
        if rng.random() < 0.2:
            whole, frac = int(rng.integers(0, 100)), int(rng.integers(0, 100))
            return f"{whole}.{frac:02d}", Fraction(whole * 100 + frac, 100)
        n = int(rng.integers(0, 10**int(rng.integers(1, 7))))
        return str(n), Fraction(n)
    op = str(rng.choice(["+", "-", "*", "/", "//", "%", "**", "neg"]))
    if op == "neg":
        text, value = _random_expression(rng, depth - 1)
        return f"-({text})", -value
    (lt, lv), (rt, rv) = _random_expression(rng, depth - 1), _random_expression(rng, depth - 1)
    if op == "**":
        e = int(rng.integers(-3, 4))
        if lv == 0 and e < 0:
            e = -e
        return f"({lt})**{e}", lv**e
    if op in ("/", "//", "%") and rv == 0:
        rt, rv = "7", Fraction(7)
    value = {"+": lambda: lv + rv, "-": lambda: lv - rv, "*": lambda: lv * rv, "/": lambda: lv / rv,
             "//": lambda: Fraction(lv // rv), "%": lambda: lv % rv}[op]()
    return f"({lt}){op}({rt})", value


def test_matches_python_arithmetic_on_random_expressions():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(400):
        text, value = _random_expression(rng, 4)
        result = tools.call("calculator", text)
        if not result.ok:  # only the size caps may refuse a well-formed expression
            assert "too large" in result.error or "too long" in result.error, (text, result.error)
            continue
        p, q = value.numerator, value.denominator
        expected = str(p) if q == 1 else f"{p}/{q}"
        assert result.output == expected, text
        checked += 1
    assert checked > 300
