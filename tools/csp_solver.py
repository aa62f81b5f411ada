"""``csp_solver``: solve a logic puzzle of the ``logic`` family with python-constraint2.

    <call>csp_solver kk: A:B=knave; B:A=C</call>   ->   <result>A=knight,B=knave,C=knave</result>

ARGS are the puzzle exactly as the prompt writes it (notation in ``verifiers/logic.py``). The
puzzle is parsed by the verifier's own parser and becomes a ``constraint.Problem``: one
variable per islander / SAT variable / zebra value, one constraint per statement / clause /
clue, plus an all-different constraint per zebra attribute. Every constraint is wrapped in a
counter; ``budget`` and ``cost`` are constraint checks. The result is the first solution the
solver finds, in the answer format; errors: malformed puzzle, unsatisfiable, budget exceeded.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import constraint

from r3m.tools import ToolResult
from r3m.verifiers.logic import LogicError, Puzzle, format_answer, parse_puzzle


class BudgetExceeded(Exception):
    pass


class _Counter:
    def __init__(self, budget: int):
        self.budget, self.used = budget, 0

    def tick(self) -> None:
        self.used += 1
        if self.used > self.budget:
            raise BudgetExceeded


class _Counted(constraint.Constraint):
    """Delegates to ``inner`` and counts each check; the inherited ``preProcess`` calls us, so
    unary pruning is counted too, and forward checking stays the inner constraint's."""

    def __init__(self, inner: constraint.Constraint, counter: _Counter):
        self.inner, self.counter = inner, counter

    def __call__(self, variables, domains, assignments, forwardcheck=False,
                 _unassigned=constraint.Unassigned):
        self.counter.tick()
        return self.inner(variables, domains, assignments, forwardcheck, _unassigned)


def build_problem(puzzle: Puzzle, counter: _Counter) -> constraint.Problem:
    """The puzzle as a python-constraint2 problem with counted constraints."""
    problem = constraint.Problem(constraint.BacktrackingSolver())
    for v in puzzle.variables:
        problem.addVariable(v, list(puzzle.domains[v]))
    for c in puzzle.constraints:
        problem.addConstraint(_Counted(constraint.FunctionConstraint(c.test), counter), list(c.scope))
    for group in puzzle.groups:
        problem.addConstraint(_Counted(constraint.AllDifferentConstraint(), counter), list(group))
    return problem


def solutions(puzzle: Puzzle, budget: int, limit: int = 2) -> tuple[list[dict], int]:
    """Up to ``limit`` solutions and the checks used; raises BudgetExceeded."""
    counter = _Counter(budget)
    found: Iterator[dict] = build_problem(puzzle, counter).getSolutionIter()
    return list(itertools.islice(found, limit)), counter.used


def solve(args: str, budget: int) -> ToolResult:
    """The registered tool: ARGS = the puzzle line; cost = constraint checks."""
    try:
        puzzle = parse_puzzle(args)
    except LogicError as exc:
        return ToolResult.fail(f"malformed puzzle: {exc}")
    try:
        found, used = solutions(puzzle, budget, limit=1)
    except BudgetExceeded:
        return ToolResult.fail(f"budget exceeded ({budget} constraint checks)", budget)
    if not found:
        return ToolResult.fail(f"unsatisfiable ({used} constraint checks)", used)
    return ToolResult(True, format_answer(puzzle, found[0]), used)
