"""The arithmetic family, its verifier and the shared safe expression parser."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r3m.envs.families.arithmetic import LEVELS, PREFIX, ArithmeticFamily, random_tree, render
from r3m.verifiers.arithmetic import (
    ALL_OPS,
    Binary,
    ExpressionError,
    Num,
    Unary,
    evaluate_int,
    parse_expression,
    verify,
)

FAMILY = ArithmeticFamily()
INJECTIONS = [
    "__import__('os').system('x')", "().__class__", "a", "x+1", "abs(-3)", "1 if 1 else 2", "[1][0]",
    "'1'+'2'", "lambda: 1", "(1).real", "[x for x in (1,)]", "1<2", "1 and 2", "(a:=1)", "1;2",
    "0x10", "1e3", "1_000", "1j", "True", "None", "...", "~1", "not 1", "1&2", "1<<70", "2**3", "7/2",
    "\x00", "1+", "", "   ", "(" * 300 + "1" + ")" * 300, "1+" * 200 + "1", "9" * 33,
]


def _direct(node) -> int:
    """Value of a generated tree by its own walk (not through the printed text)."""
    if isinstance(node, Num):
        return node.value
    a, b = _direct(node.left), _direct(node.right)
    return {"+": a + b, "-": a - b, "*": a * b}[node.op]


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_instances_match_their_level_and_pass_their_verifier(level):
    spec = LEVELS[level]
    for i in range(200):
        inst = FAMILY.instance(("train", "test")[i % 2], i, level)
        expr = inst.data["expression"]
        assert inst.prompt == PREFIX + expr and inst.key == expr and inst.difficulty == level
        ops = re.findall(r"(?<=[0-9)])[-+*]", expr)
        assert spec.ops[0] <= len(ops) <= spec.ops[1] and set(ops) <= set(spec.symbols)
        assert ops.count("*") >= spec.min_mul
        depth = max(np.cumsum([{"(": 1, ")": -1}.get(c, 0) for c in expr]))
        assert depth == spec.paren_depth
        assert FAMILY.verify(inst, inst.answer).correct
        actions = FAMILY.expert_actions(inst, use_tools=True)
        assert actions[0] == f"<call>calculator {expr}</call>" and actions[1] == inst.answer
        assert not FAMILY.verify(inst, "garbage").correct and FAMILY.verify(inst, "garbage").score == 0
        assert len(inst.prompt) <= FAMILY.max_prompt_chars and len(inst.answer) <= FAMILY.max_answer_chars


def test_determinism_and_seeds():
    a = [FAMILY.instance("train", i, 3, seed=1) for i in range(50)]
    assert a == [FAMILY.instance("train", i, 3, seed=1) for i in range(50)]
    assert [x.key for x in a] != [FAMILY.instance("train", i, 3, seed=2).key for i in range(50)]
    assert len({x.key for x in a}) > 45


def test_rendering_keeps_the_value():
    rng = np.random.default_rng(0)
    for level in LEVELS.values():
        for _ in range(200):
            tree = random_tree(rng, level.ops[1], level)
            text, _ = render(tree)
            assert evaluate_int(parse_expression(text)) == _direct(tree)
    assert render(Binary("-", Num(1), Binary("-", Num(2), Num(3))))[0] == "1-(2-3)"
    assert render(Binary("+", Num(1), Binary("-", Num(2), Num(3))))[0] == "1+2-3"
    assert render(Binary("*", Binary("+", Num(1), Num(2)), Num(3))) == ("(1+2)*3", 1)


@pytest.mark.parametrize("answer, correct, score", [
    ("2580", True, 1.0), (" 2580\n", True, 1.0), ("+2580", True, 1.0), ("002580", True, 1.0),
    ("2590", False, 0.75), ("-2580", False, 0.0), ("580", False, 0.75), ("12580", False, 0.8),
    ("2580.0", False, 0.0), ("2,580", False, 0.0), ("2580 2580", False, 0.0), ("", False, 0.0),
    ("twenty", False, 0.0), ("- 2580", False, 0.0), ("++2580", False, 0.0),
])
def test_verifier_cases(answer, correct, score):
    verdict = verify("(47+385)*6-12", answer)
    assert (verdict.correct, verdict.score) == (correct, pytest.approx(score))
    assert "2580" not in verdict.reason


def test_verifier_signs_zero_and_bad_problems():
    assert verify("5-12", "-7").correct and verify("5-12", "-8").score == 0.0
    assert verify("3-3", "0").correct and verify("3-3", "-0").correct and verify("3-3", "+0").correct
    assert verify("-3", "-3").correct
    for bad in ("1/2", "a+1", "", "9" * 40):
        verdict = verify(bad, "1")
        assert not verdict.correct and verdict.score == 0 and verdict.reason.startswith("bad problem")


@pytest.mark.parametrize("text", INJECTIONS)
def test_parser_rejects_everything_but_integer_arithmetic(text):
    with pytest.raises(ExpressionError):
        parse_expression(text)


def test_parser_reads_decimals_exactly_only_when_asked():
    assert parse_expression(" 0.1 + .5 ", ops=ALL_OPS, decimals=True) == Binary("+", Num(1, 1), Num(5, 1))
    assert parse_expression("-(2)", ops=ALL_OPS) == Unary("-", Num(2))
    with pytest.raises(ExpressionError, match="only integers"):
        parse_expression("0.1")
    with pytest.raises(ExpressionError, match="too large"):
        parse_expression("+".join(["1"] * 80))
    with pytest.raises(ExpressionError, match="function calls"):
        parse_expression("__import__('os')", ops=ALL_OPS, decimals=True, max_nodes=10**6)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789+-*/().% _ax'\"[]\n")), max_size=60)
       | st.text(max_size=60))
def test_parser_only_raises_expression_error(text):
    try:
        tree = parse_expression(text)
    except ExpressionError:
        return
    assert isinstance(evaluate_int(tree), int)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.integers(0, 10**6).map(Num),
                    lambda kids: st.tuples(st.sampled_from("+-*"), kids, kids).map(lambda t: Binary(*t)),
                    max_leaves=12))
def test_parser_round_trips_rendered_trees(tree):
    text, _ = render(tree)
    assert evaluate_int(parse_expression(text)) == _direct(tree)
