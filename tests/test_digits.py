"""One digit policy: only ASCII 0-9 are digits, in every tool and every verifier.

Python's ``str.isdigit``, ``str.isdecimal``, ``int()`` and a regex's ``\\d`` also take other
scripts' digits (``int("٢") == 2``), so a parser built on them quietly accepts ``take(٢)``
while the calculator next to it refuses ``٢+1``. Each case below is an input that is correct
(or a valid call) with ASCII digits; with each foreign digit set it must be refused by the
tool or verifier itself: an ``ok=False`` result with the tool's own message, or a wrong
verdict with the verifier's own reason, never an exception caught by the safety nets
(``tools.call``'s "NAME failed: ..." or ``never_raises``' "unparseable answer").
"""

from __future__ import annotations

import pytest

from r3m import tools
from r3m.verifiers import arithmetic, dsl, instruct, listops, logic, memory, prefix, sudoku

FOREIGN = {
    "arabic-indic": "٠١٢٣٤٥٦٧٨٩",
    "superscript": "⁰¹²³⁴⁵⁶⁷⁸⁹",
    "fullwidth": "０１２３４５６７８９",
    "devanagari": "०१२३४५६७८९",
}
SUDOKU_PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
SUDOKU_SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
DSL_PROBLEM = {"shown": (((3, 1, 2), (3, 1)), ((5, 4), (5, 4))), "held_out": (((7, 8, 9), (7, 8)),)}


def _foreign(text: str, digits: str) -> str:
    return text.translate(str.maketrans("0123456789", digits))


TOOL_CASES = {  # tool -> args that are valid with ASCII digits
    "calculator": "12+30*2",
    "list_eval": "rev([2,0,1])",
    "dsl_search": "dsl: [3,1,2]->[3,1]; [5,4]->[5,4]; [7,8,9]->[7,8]",
    "csp_solver": "sat: a1 -b2; -a1 b2",
    "sudoku_solver": SUDOKU_PUZZLE,
}
VERIFIER_CASES = {  # name -> (verifier, problem, an answer that is correct with ASCII digits)
    "arithmetic": (arithmetic.verify, "12+30*2", "72"),
    "listops": (listops.verify, "rev([2,0,1])", "[1,0,2]"),
    "dsl": (dsl.verify, DSL_PROBLEM, "take(2)"),
    "logic": (logic.verify, "sat: a -b; -a b", "a=1,b=1"),
    "sudoku": (sudoku.verify, SUDOKU_PUZZLE, SUDOKU_SOLUTION),
    "prefix": (prefix.verify, "0110", "0100"),
    "instruct": (instruct.verify, {"content": {"check": "number", "value": 5}, "mods": []}, "5"),
    "memory": (memory.verify, "room2", "room2"),
}


def test_every_tool_and_verifier_is_covered():
    builtin = {t for t in tools.list_tools() if str(tools.spec(t).entry_point).startswith("r3m.tools.")}
    assert set(TOOL_CASES) == builtin  # tools registered by other test modules are theirs to test
    assert set(VERIFIER_CASES) == {"arithmetic", "listops", "dsl", "logic", "sudoku", "prefix", "instruct",
                                   "memory"}


@pytest.mark.parametrize("script", sorted(FOREIGN))
@pytest.mark.parametrize("tool", sorted(TOOL_CASES))
def test_tools_refuse_foreign_digits(tool, script):
    args = TOOL_CASES[tool]
    assert tools.call(tool, args).ok, "the ASCII version must be a valid call"
    result = tools.call(tool, _foreign(args, FOREIGN[script]))
    assert not result.ok and result.error, result
    assert not result.error.startswith(f"{tool} failed:"), f"an exception leaked from {tool}: {result.error}"


@pytest.mark.parametrize("script", sorted(FOREIGN))
@pytest.mark.parametrize("name", sorted(VERIFIER_CASES))
def test_verifiers_refuse_foreign_digits(name, script):
    verify, problem, answer = VERIFIER_CASES[name]
    assert verify(problem, answer).correct, "the ASCII version must be correct"
    verdict = verify(problem, _foreign(answer, FOREIGN[script]))
    assert not verdict.correct and verdict.score == 0.0, verdict
    assert not verdict.reason.startswith("unparseable answer"), f"{name} raised inside: {verdict.reason}"


def test_reported_cases():
    """The two cases from the user's report."""
    assert not dsl.verify(DSL_PROBLEM, "take(٢)").correct
    result = tools.call("list_eval", "rev([²])")
    assert not result.ok and "single digits 0-9" in result.error
