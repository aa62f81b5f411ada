"""Logic puzzles: notation, verifier, csp_solver tool and the logic family."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r3m import envs
from r3m import tools
from r3m.envs.families.logic import LEVELS, LogicFamily
from r3m.tools.csp_solver import solutions
from r3m.verifiers.logic import LogicError, format_answer, parse_puzzle, verify

N_PER_LEVEL = 200


def _brute_force(puzzle_text: str) -> list[str]:
    """Every solution, by enumerating all assignments (independent of python-constraint)."""
    p = parse_puzzle(puzzle_text)
    out = []
    for values in itertools.product(*(p.domains[v] for v in p.variables)):
        a = dict(zip(p.variables, values))
        if all(len({a[v] for v in g}) == len(g) for g in p.groups) and all(c.holds(a) for c in p.constraints):
            out.append(format_answer(p, a))
    return out


@pytest.mark.parametrize("puzzle, solutions_", [
    ("kk: A:B=knave; B:A=B", ["A=knight,B=knave"]),  # a knight B would make A a knight calling B a knave
    ("kk: A:A!B", ["A=knight,B=knave", "A=knave,B=knave"]),
    ("kk: A:B=knave&C=knave; B:A=knight|C=knight; C:A!B", ["A=knave,B=knight,C=knight"]),
    ("kk: A:B=knave&C=knave; B:A=knight|C=knight; C:A=B", []),
    ("zebra: A B; cat dog; A!cat", ["A=dog,B=cat"]),
    ("zebra: A B C; cat dog fox; red tan sky; A=dog; cat=red; B!fox; C!red; tan=A",
     ["A=dog/tan,B=cat/red,C=fox/sky"]),
    ("sat: a -b; b; -a c", ["a=1,b=1,c=1"]),
    ("sat: a; -a", []),
])
def test_semantics_against_hand_solved_puzzles(puzzle, solutions_):
    assert sorted(_brute_force(puzzle)) == sorted(solutions_)
    found, _ = solutions(parse_puzzle(puzzle), budget=10_000, limit=10)
    assert sorted(format_answer(parse_puzzle(puzzle), s) for s in found) == sorted(solutions_)


def test_verify_scores_and_reasons():
    kk = "kk: A:B=knave; B:A=B"
    assert verify(kk, "A=knight,B=knave").correct
    assert verify(kk, " B = knave , A = knight ").correct  # any order, whitespace ignored
    half = verify(kk, "A=knave,B=knight")  # A's statement holds (a knave's false claim), B's does not
    assert not half.correct and half.score == 0.5
    for bad in ("A=knight", "A=knight,B=knave,C=knave", "A=knight,B=liar", "A=knight,A=knight,B=knave", ""):
        v = verify(kk, bad)
        assert v.score == 0.0 and "malformed" in v.reason
    zebra = "zebra: A B; cat dog; red tan; A=cat; red=dog"
    assert verify(zebra, "A=cat/tan,B=dog/red").correct
    assert verify(zebra, "A=tan/cat,B=red/dog").correct  # values in any order
    assert verify(zebra, "A=cat/red,B=dog/red").score == 0.0  # red given twice
    assert verify(zebra, "A=cat/dog,B=red/tan").score == 0.0  # two pets for A
    assert "malformed puzzle" in verify("kk: A:knave", "A=knave").reason


def test_any_satisfying_sat_assignment_is_correct():
    puzzle = "sat: a b c; -a -b; -b -c; a -c"
    satisfying = {"010", "100", "101"}  # solved by hand
    for bits in itertools.product("01", repeat=3):
        answer = ",".join(f"{v}={b}" for v, b in zip("abc", bits))
        assert verify(puzzle, answer).correct == ("".join(bits) in satisfying)
    assert tools.call("csp_solver", puzzle).output.replace(",", "").replace("=", "")[1::2] in satisfying


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=80),
                 st.text(alphabet="kzebrasat: ;ABC=!&|-knightave", max_size=80).map(lambda t: "kk: " + t),
                 st.text(alphabet="zebra: ;ABCcatdogred=!", max_size=80).map(lambda t: "zebra: " + t)))
def test_puzzle_parser_raises_only_logic_errors(text):
    try:
        parse_puzzle(text)
    except LogicError:
        return
    result = tools.call("csp_solver", text, budget=2_000)  # whatever parses, the tool handles
    assert result.ok or result.error


def test_csp_solver_errors_and_budget():
    assert "malformed" in tools.call("csp_solver", "chess: e4").error
    assert "unsatisfiable" in tools.call("csp_solver", "sat: a; -a").error
    # Pigeonhole: 6 pigeons in 5 holes is unsatisfiable and costly for plain backtracking.
    pigeons, holes = range(6), range(5)
    clauses = [" ".join(f"p{i}h{j}" for j in holes) for i in pigeons]
    clauses += [f"-p{i}h{j} -p{k}h{j}" for j in holes for i, k in itertools.combinations(pigeons, 2)]
    hard = "sat: " + "; ".join(clauses)
    result = tools.call("csp_solver", hard, budget=500)
    assert not result.ok and "budget exceeded" in result.error and result.cost == 500


def test_family_kinds_and_determinism():
    fam = envs.make_family("logic")
    assert fam.instance("train", 5, 3, seed=1) == fam.instance("train", 5, 3, seed=1)
    kinds = {fam.instance("train", i, 2).prompt.split(":")[0] for i in range(30)}
    assert kinds == {"kk", "zebra", "sat"}
    only_sat = LogicFamily(kinds=("sat",))
    assert all(only_sat.instance("train", i, 1).prompt.startswith("sat: ") for i in range(10))
    with pytest.raises(ValueError):
        LogicFamily(kinds=("chess",))


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_oracle_tool_uniqueness_and_minimality(level):
    """200 instances: oracle and tool answers verify, garbage scores 0, kk/zebra solutions are
    unique (python-constraint2 finds exactly one) and every statement is needed."""
    fam = envs.make_family("logic")
    for i in range(N_PER_LEVEL):
        inst = fam.instance("train", i, level)
        assert len(inst.prompt) <= fam.max_prompt_chars and fam.verify(inst, inst.answer).correct
        assert fam.verify(inst, "A=knight,garbage").score == 0.0
        call, answer = fam.expert_actions(inst, use_tools=True)
        assert call == tools.format_call("csp_solver", inst.prompt) and fam.verify(inst, answer).correct
        if inst.prompt.startswith("sat"):
            continue
        puzzle = parse_puzzle(inst.prompt)
        found, _ = solutions(puzzle, budget=10**6, limit=2)
        assert [format_answer(puzzle, s) for s in found] == [inst.answer]
        if i < 10:  # minimality: dropping any statement or clue admits a second solution
            head, _, body = inst.prompt.partition(": ")
            items = body.split("; ")
            n_decl = 1 + len(puzzle.groups) if head == "zebra" else 0
            for j in range(n_decl, len(items)):
                weaker = parse_puzzle(f"{head}: " + "; ".join(items[:j] + items[j + 1:]))
                lost_someone = set(weaker.variables) < set(puzzle.variables)  # then they are free
                assert lost_someone or len(solutions(weaker, budget=10**6, limit=2)[0]) == 2, items[j]
