"""The list DSL (interpreter, parser, verifier), the dsl_search tool and the dsl family."""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r3m import envs
from r3m import tools
from r3m.envs.families.dsl import LEVELS, TOOL_LEVELS
from r3m.tools.dsl_search import synthesize
from r3m.verifiers.dsl import (
    INT_OPS,
    LIST_OPS,
    MAX_ABS,
    MAX_LIST,
    DslError,
    format_examples,
    format_program,
    parse_examples,
    parse_program,
    run,
    verify,
)

N_PER_LEVEL = 200


@pytest.mark.parametrize("program, x, expected", [
    ("sort|map(*2)|take(3)", [3, 1, 2, 5], (2, 4, 6)),
    ("reverse|drop(1)", [1, 2, 3], (2, 1)),
    ("filter(>0)|scanl1(+)|last", [3, -1, 4, -5, 2], 9),
    ("reverse|zipwith(+)", [1, 2, 5], (6, 4, 6)),
    ("zipwith(-)", [4, 5], (0, 0)),
    ("map(/2)", [-3, 3, 4], (-2, 1, 2)),
    ("map(%3)|count(=0)", [3, -3, 4, 6], 3),
    ("map(^2)|sum", [-2, 3], 13),
    ("scanl1(max)", [1, 3, 2, 5, 4], (1, 3, 3, 5, 5)),
    ("scanl1(-)", [5, 1, 2], (5, 4, 2)),
    ("filter(odd)|min", [-3, 4, 7], -3),
    ("count(even)", [], 0),
    ("take(0)", [1, 2], ()),
    (" sort | head ", [4, 2, 9], 2),
])
def test_interpreter_semantics(program, x, expected):
    assert run(program, x) == expected


@pytest.mark.parametrize("program, match", [
    ("", "empty"),
    ("sum|sort", "only end"),
    ("sortt", "unknown"),
    ("map", "needs an argument"),
    ("map(*x)", "bad map"),
    ("filter(>>1)", "bad predicate"),
    ("take(-1)", "count"),
    ("scanl1(/)", "bad binary"),
    ("map(+100)", "bad map"),
    ("|".join(["sort"] * 13), "too long"),
    ("sort" + " " * 300, "at most"),
    ("__import__('os')", "malformed"),
])
def test_parser_rejects(program, match):
    with pytest.raises(DslError, match=match):
        parse_program(program)


def test_runtime_caps():
    with pytest.raises(DslError, match="empty"):
        run("filter(>5)|head", [1, 2])
    with pytest.raises(DslError, match="overflow"):
        run("map(^3)|map(^3)|map(^3)", [99])
    with pytest.raises(DslError, match="overflow"):
        run("scanl1(*)", [1000] * 10)
    with pytest.raises(DslError, match="too long"):
        run("sort", list(range(MAX_LIST + 1)))
    with pytest.raises(DslError, match="overflow"):
        run("sort", [MAX_ABS + 1])
    with pytest.raises(DslError, match="division"):
        run("map(/0)", [1])
    with pytest.raises(DslError, match="budget"):
        run("sort|sort|sort", list(range(100)), budget=250)
    with pytest.raises(DslError, match="overflow"):  # a worst case stops at the value cap, not in bignums
        run("|".join(["scanl1(*)"] * 12), [9] * MAX_LIST)


def test_verify_scores():
    problem = {"shown": [([1, 2], [2, 4])], "held_out": [([3], [6]), ([0, -1], [0, -2])]}
    assert verify(problem, "map(*2)").correct
    assert verify(problem, " map(+1) | map(*2) | map(-2) ").correct
    partial = verify(problem, "filter(>0)|map(*2)")  # wrong on the held-out [0,-1] only
    assert not partial.correct and partial.score == pytest.approx(2 / 3)
    errors = verify(problem, "map(/0)")  # a run-time error is a mismatch, not a crash
    assert not errors.correct and errors.score == 0.0 and "0/3" in errors.reason
    bad = verify(problem, "map(*2")
    assert bad.score == 0.0 and "malformed" in bad.reason


# -- parsers: round trips and robustness --------------------------------------------------
_programs = st.builds(
    lambda body, end: "|".join(body + end),
    st.lists(st.sampled_from(LIST_OPS), min_size=0, max_size=6),
    st.lists(st.sampled_from(LIST_OPS + INT_OPS), min_size=1, max_size=1),
)
_lists = st.lists(st.integers(-10**6, 10**6), max_size=12).map(tuple)


@settings(max_examples=300, deadline=None)
@given(_programs)
def test_program_round_trip(text):
    assert format_program(parse_program(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_lists, st.one_of(st.integers(-10**6, 10**6), _lists)), min_size=1, max_size=8))
def test_examples_round_trip(pairs):
    assert parse_examples("dsl: " + format_examples(pairs)) == pairs


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=80), st.text(alphabet="sortmapfilter()|+-*/%^<>=0123456789 ,;[]->",
                                                max_size=80)))
def test_parsers_raise_only_dsl_errors(text):
    for parse in (parse_program, parse_examples):
        try:
            parse(text)
        except DslError:
            pass


# -- the dsl_search tool --------------------------------------------------------------------
def test_search_finds_shortest_and_respects_prior():
    result = tools.call("dsl_search", "dsl: [3,1,2]->[6,4,2]; [5,0,7]->[14,10,0]")
    assert result.ok and result.output == "sort|reverse|map(*2)" and result.cost > 0
    swap = parse_examples("[2,1]->[1,2]; [5,3]->[3,5]")  # both sort and reverse fit
    assert synthesize(swap, 1000).program == "sort"
    assert synthesize(swap, 1000, prior={"reverse": 5.0}).program == "reverse"
    assert synthesize(parse_examples("[2,1,4]->7; [0,3]->3"), 1000).program == "sum"


def test_search_errors_and_budget():
    assert "malformed" in tools.call("dsl_search", "dsl: [1,2]=>[3]").error
    assert "mix" in tools.call("dsl_search", "[1]->1; [2]->[2]").error
    hard = "dsl: [3,1,4,1,5]->[9,-2,6,5,3]; [2,7,1]->[8,0,-4]; [5,5,5,5]->[1,2,3,4]"
    result = tools.call("dsl_search", hard, budget=2_000)
    assert not result.ok and "budget exceeded" in result.error and result.cost == 2_000
    nothing = synthesize(parse_examples("[1,2]->[7,7,7]"), 10_000)  # no operation lengthens a list
    assert nothing.program is None and "no program" in nothing.error and nothing.nodes < 100


# -- the family ---------------------------------------------------------------------------
def test_determinism_and_levels():
    fam = envs.make_family("dsl")
    assert fam.instance("train", 3, 4, seed=1) == fam.instance("train", 3, 4, seed=1)
    assert fam.instance("train", 3, 4, seed=1) != fam.instance("train", 3, 4, seed=2)
    for level, spec in LEVELS.items():
        inst = fam.instance("test", 0, level)
        assert inst.prompt.startswith("dsl: ") and len(parse_examples(inst.prompt)) == spec.shown
        assert len(parse_program(inst.data["program"])) == spec.length
        assert envs.split_of(inst.key) == "test"


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_oracle_and_tool_demonstrations(level):
    fam = envs.make_family("dsl")
    for i in range(N_PER_LEVEL):
        inst = fam.instance("train", i, level)
        data = inst.data
        assert verify(data, inst.answer).correct and verify(data, data["program"]).correct
        assert fam.verify(inst, "sort|garbage").score == 0.0 and not fam.verify(inst, "").correct
        shown = [(tuple(x), y) for x, y in data["shown"]]
        assert not all(x == y for x, y in shown) and len({y for _, y in shown}) > 1
        actions = fam.expert_actions(inst, use_tools=True)
        assert fam.verify(inst, actions[-1]).correct
        if level in TOOL_LEVELS:
            assert actions[0] == tools.format_call("dsl_search", inst.prompt)
            assert actions[-1] == inst.answer  # the canonical answer is the search's first fit
            assert len(parse_program(inst.answer)) == LEVELS[level].length
        else:
            assert actions == [inst.answer]


def test_higher_levels_have_no_short_program():
    fam = envs.make_family("dsl")
    for level in (3, 4, 5):
        for i in range(20):
            shown = fam.instance("train", i, level).data["shown"]
            assert synthesize(shown, budget=100_000, max_len=2).program is None


def test_level1_examples_pin_down_every_length1_program():
    fam = envs.make_family("dsl")
    for i in range(100):
        data = fam.instance("train", i, 1).data
        for op in LIST_OPS + INT_OPS:
            fits_shown = verify({"shown": data["shown"]}, op).correct
            assert not fits_shown or verify(data, op).correct, (data, op)
