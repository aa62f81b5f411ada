"""The listops family, its verifier and interpreter, and the list_eval tool."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r3m import tools
from r3m.envs.families.listops import LEVELS, PREFIX, ListOpsFamily, random_chain, render
from r3m.verifiers.listops import (
    LENGTH_PRESERVING,
    ListOpsError,
    apply,
    parse_answer,
    parse_listops,
    run,
    verify,
)

FAMILY = ListOpsFamily()


@pytest.mark.parametrize("text, value", [
    ("sort(rev([3,1,4,1]))", "[1,1,3,4]"),
    ("rev([1,2,3])", "[3,2,1]"),
    ("rot(1,[1,2,3])", "[2,3,1]"),
    ("rot(4,[1,2,3])", "[2,3,1]"),
    ("map(+3,[4,1,7])", "[7,4,0]"),
    ("map(*3,[4,1,7])", "[2,3,1]"),
    ("scan([3,1,4,1,5])", "[3,4,8,9,4]"),
    ("dedup([3,1,3,1,2])", "[3,1,2]"),
    ("keep(>2,[3,1,4,1])", "[3,4]"),
    ("keep(<2, [3 ,1, 4, 1])", "[1,1]"),
    ("scan(scan([1,1,1]))", "[1,3,6]"),
    ("sort(map(+3,[4,1,7]))", "[0,4,7]"),
    ("rev([])", "[]"),
    ("rot(3,[])", "[]"),
])
def test_semantics(text, value):
    assert tools.call("list_eval", text).output == value
    assert verify(text, value).correct


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_instances_match_their_level_and_pass_their_verifier(level):
    spec = LEVELS[level]
    for i in range(200):
        inst = FAMILY.instance(("train", "test")[i % 2], i, level)
        expr = inst.data["expression"]
        assert inst.prompt == PREFIX + expr and inst.key == expr
        ops = re.findall(r"([a-z]+)\(", expr)
        literal = re.search(r"\[[0-9,]*\]", expr)[0]
        assert spec.depth[0] <= len(ops) <= spec.depth[1] and set(ops) <= set(spec.ops)
        assert spec.length[0] <= (len(literal) - 1) // 2 <= spec.length[1]
        if level <= 3:
            assert len(inst.answer) == len(literal)  # same width: fill decoding can align them
        else:
            assert {"dedup", "keep"} & set(ops) and len(inst.answer) < len(literal)
        assert FAMILY.verify(inst, inst.answer).correct and inst.answer != "[]"
        actions = FAMILY.expert_actions(inst, use_tools=True)
        assert actions == [f"<call>list_eval {expr}</call>", inst.answer]
        assert FAMILY.verify(inst, "garbage").score == 0.0
        assert len(inst.prompt) <= FAMILY.max_prompt_chars and len(inst.answer) <= FAMILY.max_answer_chars


def test_every_step_changes_the_list():
    rng = np.random.default_rng(0)
    for _ in range(300):
        xs = [int(x) for x in rng.integers(0, 10, 8)]
        chain = random_chain(rng, xs, 5, LEVELS[5].ops)
        if chain is None:
            continue
        for (op, param), (next_op, _) in zip(chain, chain[1:] + [("", "")]):
            new = apply(op, param, xs)
            assert new != xs and (op != next_op or op == "scan")
            assert not (next_op == "sort" and op in ("rev", "rot"))
            xs = new


def test_determinism_and_seeds():
    a = [FAMILY.instance("test", i, 2, seed=3) for i in range(50)]
    assert a == [FAMILY.instance("test", i, 2, seed=3) for i in range(50)]
    assert [x.key for x in a] != [FAMILY.instance("test", i, 2, seed=4).key for i in range(50)]


@pytest.mark.parametrize("answer, correct, score", [
    ("[1,1,3,4]", True, 1.0), (" [ 1, 1 ,3,4 ]\n", True, 1.0), ("[1,1,4,3]", False, 0.5),
    ("[4,3,1,1]", False, 0.0), ("[1,1,3]", False, 0.0), ("[1,1,3,4,4]", False, 0.0),
    ("1,1,3,4", False, 0.0), ("[1,1,3,4", False, 0.0), ("[1;1;3;4]", False, 0.0), ("[]", False, 0.0),
    ("[1,,3,4]", False, 0.0), ("", False, 0.0), ("[a,b,c,d]", False, 0.0), ("[01,1,3,4]", True, 1.0),
])
def test_verifier_cases(answer, correct, score):
    verdict = verify("sort(rev([3,1,4,1]))", answer)
    assert (verdict.correct, verdict.score) == (correct, pytest.approx(score))


@pytest.mark.parametrize("text", [
    "__import__('os').system('x')", "().__class__", "a", "sort", "sort()", "sort([1,2)", "sort([12])",
    "sort([1])x", "foo([1])", "map(3,[1])", "map(+33,[1])", "map(-3,[1])", "keep(=3,[1])", "rot(+1,[1])",
    "rot(100,[1])", "sort([1],[2])", "SORT([1])", "sort[1]", "", "   ", "[" + ",".join("1" * 65) + "]",
    "rev(" * 17 + "[1]" + ")" * 17, "[1" * 600, "sort([1,2,-3])", "sort([1.5])",
])
def test_parser_rejects_anything_else(text):
    with pytest.raises(ListOpsError):
        parse_listops(text)
    result = tools.call("list_eval", text)
    assert not result.ok and result.error


def test_caps_and_budget():
    assert tools.call("list_eval", "rev(" * 16 + "[1]" + ")" * 16).ok
    assert tools.call("list_eval", "[" + ",".join("1" * 64) + "]").ok
    text = "scan(" * 16 + "[" + ",".join("1" * 64) + "]" + ")" * 16
    assert tools.call("list_eval", text).cost == 64 + 16 * 65
    assert "budget exceeded" in tools.call("list_eval", text, budget=100).error
    assert "budget exceeded" in tools.call("list_eval", "[1,2,3]", budget=2).error


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("sortevmapkdu()[],0123456789+*<> _'x")), max_size=50)
       | st.text(max_size=50))
def test_parser_only_raises_listops_error(text):
    try:
        xs, _ = run(parse_listops(text))
    except ListOpsError:
        return
    assert all(0 <= x <= 9 for x in xs)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=12), st.integers(1, 6), st.integers(0, 2**32))
def test_rendered_chains_parse_back_to_their_value(xs, depth, seed):
    rng = np.random.default_rng(seed)
    chain = random_chain(rng, xs, depth, LENGTH_PRESERVING + ("dedup", "keep"))
    if chain is None:
        return
    out = xs
    for op, param in chain:
        out = apply(op, param, out)
    text = render(xs, chain)
    assert run(parse_listops(text))[0] == out
    assert parse_answer(tools.call("list_eval", text).output) == out
