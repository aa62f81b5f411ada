"""``sudoku_solver``: solve a 9x9 Sudoku with python-constraint2.

Args: 81 characters row-major (whitespace ignored), digits 1-9 for givens, ``.`` or ``0`` for
blanks. Output: the 81-digit solution. Errors (``ok=False``): malformed grid, conflicting givens,
no solution, budget exceeded.

Model: one variable per blank cell with the digits its row, column and box givens allow, after
naked + hidden single propagation on the givens; one all-different constraint per unit over its
blanks; python-constraint2's ``BacktrackingSolver(forwardcheck=True)``, which re-picks the
variable with the fewest values left at every node (its default solver orders statically and
needs over 60 s on some 17-clue puzzles). The unit constraint's forward check also propagates
naked and hidden singles, which cuts the search on hard puzzles ~4x.

Budget and cost: constraint checks (calls of a unit constraint). A solve that needs more than
``budget`` checks stops and returns "budget exceeded".
"""

from __future__ import annotations

from constraint import BacktrackingSolver, Constraint, Problem

from r3m.tools import ToolResult
from r3m.verifiers.sudoku import CELL_UNITS, PEERS, UNITS, parse_puzzle, unit_errors

_ALL = frozenset(range(1, 10))


class _BudgetExceeded(Exception):
    pass


class _Search:
    """State shared by the unit constraints of one solve: the check counter and the unit needs."""

    def __init__(self, budget: int, needed: list[frozenset[int]]):
        self.budget = budget
        self.checks = 0
        self.needed = needed  # digits each unit still needs beyond its givens


class UnitConstraint(Constraint):
    """All-different over the blanks of unit ``k``, whose forward check propagates singles.

    Only domains of unassigned variables are pruned: the solver saved their state before this
    call and restores it on backtrack.
    """

    def __init__(self, search: _Search, k: int):
        self.search = search
        self.k = k

    def __call__(self, variables, domains, assignments, forwardcheck=False, _unassigned=None):
        search = self.search
        if search.checks >= search.budget:
            raise _BudgetExceeded
        search.checks += 1
        placed, free = set(), []
        for v in variables:
            value = assignments.get(v)
            if value is None:
                free.append(v)
            elif value in placed:
                return False
            else:
                placed.add(value)
        if not forwardcheck:
            return True
        singles = []
        for v in free:
            dom = domains[v]
            for value in placed:
                if value in dom:
                    dom.hideValue(value)
                    if not dom:
                        return False
                    if len(dom) == 1:
                        singles.append(v)
        return _propagate(search, domains, assignments, singles, {self.k})


def _propagate(search: _Search, domains, assignments, singles: list, units: set[int]) -> bool:
    """Naked singles (hide a forced value from unassigned peers) and hidden singles, to a fixpoint."""
    while True:
        while singles:
            v = singles.pop()
            dom = domains[v]
            if len(dom) != 1:
                if not dom:
                    return False
                continue
            value = dom[0]
            for w in PEERS[v]:
                if w in domains and w not in assignments:
                    d = domains[w]
                    if value in d:
                        d.hideValue(value)
                        if not d:
                            return False
                        if len(d) == 1:
                            singles.append(w)
                        units.update(CELL_UNITS[w])
        if not units:
            return True
        for k in units:
            if not _hidden_singles(k, search.needed[k], domains, assignments, singles):
                return False
        units = set()


def _hidden_singles(k: int, needed, domains, assignments, singles: list) -> bool:
    """Force each digit that only one free cell of unit ``k`` can take; False if a digit has none."""
    count: dict[int, int] = {}
    last: dict[int, int] = {}
    placed = set()
    for v in UNITS[k]:
        if v not in domains:
            continue
        if v in assignments:
            placed.add(assignments[v])
            continue
        for value in domains[v]:
            if value in count:
                count[value] += 1
            else:
                count[value] = 1
                last[value] = v
    for value in needed:
        if value in placed:
            continue
        n = count.get(value, 0)
        if n == 0:
            return False
        if n == 1:
            dom = domains[last[value]]
            if len(dom) > 1:
                for other in dom[:]:
                    if other != value:
                        dom.hideValue(other)
                singles.append(last[value])
    return True


def _presolve(grid: list[int]) -> list[set[int] | None] | None:
    """Candidates of blank cells after naked + hidden singles on the givens (fills ``grid`` in
    place); None if the givens contradict each other."""
    cand: list[set[int] | None] = [
        None if grid[i] else set(_ALL - {grid[j] for j in PEERS[i]}) for i in range(81)
    ]
    changed = True
    while changed:
        changed = False
        for i in range(81):
            c = cand[i]
            if c is not None and len(c) <= 1:
                if not c:
                    return None
                grid[i] = d = c.pop()
                cand[i] = None
                changed = True
                for j in PEERS[i]:
                    if cand[j] is not None:
                        cand[j].discard(d)
                    elif grid[j] == d:
                        return None
        for unit in UNITS:
            have = {grid[i] for i in unit if grid[i]}
            for d in _ALL - have:
                where = [i for i in unit if cand[i] is not None and d in cand[i]]
                if not where:
                    return None
                if len(where) == 1 and len(cand[where[0]]) > 1:
                    cand[where[0]] = {d}
                    changed = True
    return cand


def _conflicts(grid: list[int]) -> str | None:
    for k, unit in enumerate(UNITS):
        digits = [grid[i] for i in unit if grid[i]]
        if len(digits) != len(set(digits)):
            kind, n = ("row", "column", "box")[k // 9], k % 9 + 1
            return f"conflicting givens in {kind} {n}"
    return None


def solve(args: str, budget: int = 200_000) -> ToolResult:
    """Solve the 81-character Sudoku in ``args`` within ``budget`` constraint checks."""
    text, reason = parse_puzzle(args)
    if text is None:
        return ToolResult.fail(reason)
    grid = [0 if ch == "." else int(ch) for ch in text]
    conflict = _conflicts(grid)
    if conflict:
        return ToolResult.fail(conflict)
    cand = _presolve(grid)
    if cand is None:
        return ToolResult.fail("no solution (contradiction found by propagation)")
    blanks = [i for i in range(81) if not grid[i]]
    search = _Search(budget, [_ALL - {grid[i] for i in unit} for unit in UNITS])
    if blanks:
        problem = Problem(BacktrackingSolver(forwardcheck=True))
        for i in blanks:
            problem.addVariable(i, sorted(cand[i]))
        for k, unit in enumerate(UNITS):
            free = [i for i in unit if not grid[i]]
            if len(free) > 1:
                problem.addConstraint(UnitConstraint(search, k), free)
        try:
            solution = problem.getSolution()
        except _BudgetExceeded:
            return ToolResult.fail(f"budget exceeded ({budget} checks)", search.checks)
        if solution is None:
            error = f"no solution (search exhausted after {search.checks} checks)"
            return ToolResult.fail(error, search.checks)
        for i, d in solution.items():
            grid[i] = d
    answer = "".join(map(str, grid))
    if unit_errors(answer):  # cannot happen if the constraints are right; never return a wrong grid
        return ToolResult.fail("internal error: solver produced an invalid grid", search.checks)
    return ToolResult(ok=True, output=answer, cost=search.checks)
