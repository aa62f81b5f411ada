"""``logic``: knights-and-knaves, zebra and SAT puzzles (notation in ``verifiers/logic.py``).

Prompts (one kind drawn per instance) and their canonical answers:

    kk: A:B=knave; B:A=C|C=knight; C:A!B          A=knave,B=knight,C=knave
    zebra: A B C; cat dog fox; red tan sky; A=dog; cat=red; B!fox; C!red; tan=A
                                                    A=dog/tan,B=cat/red,C=fox/sky
    sat: a -b c; -a b; b c -d                       a=0,b=0,c=0,d=0

Generation draws a hidden solution, random true statements / clues, keeps adding them until
the solution is the only one left (counted by enumerating every assignment: 2^n islanders,
(n!)^k zebra grids, as boolean masks), then drops every statement whose removal keeps it
unique, so each puzzle is minimal: every statement is needed. SAT draws random clauses and
keeps satisfiable formulas that at most a quarter of all assignments satisfy; its canonical
answer is the first solution in binary order (any satisfying assignment is correct).

Levels (sequential reasoning grows with islanders, grid size and clauses):
    level  knights-knaves              zebra (people x attributes)   sat (vars, width, clauses)
    1      2 islanders                 3 x 1                          3, 2, 4
    2      3 islanders                 3 x 2                          4, 2, 7
    3      4, 30% and/or claims        3 x 3                          5, 3, 14
    4      5, 30% and/or claims        4 x 2                          6, 3, 20
    5      6, 40% and/or claims        4 x 3                          8, 3, 30

Tool: ``csp_solver`` on the prompt verbatim; the expert answers with its result.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple, Sequence

import numpy as np

from r3m.envs.base import Instance, TaskFamily
from r3m.envs.text_env import TextTaskEnv
from r3m.verifiers import Verdict
from r3m.verifiers.logic import KINDS, verify

PEOPLE = "ABCDEF"
SAT_VARS = "abcdefgh"
CATEGORIES = (
    ("cat", "dog", "fox", "owl"),
    ("red", "blue", "gold", "pink"),
    ("tea", "milk", "soda", "wine"),
    ("bus", "car", "bike", "ship"),
)


class Level(NamedTuple):
    kk_people: int
    kk_compound: float  # probability that a claim joins two atoms with & or |
    zebra: tuple[int, int]  # people, attributes
    sat: tuple[int, int, int]  # variables, clause width, clauses


LEVELS = {
    1: Level(2, 0.0, (3, 1), (3, 2, 4)),
    2: Level(3, 0.0, (3, 2), (4, 2, 7)),
    3: Level(4, 0.3, (3, 3), (5, 3, 14)),
    4: Level(5, 0.3, (4, 2), (6, 3, 20)),
    5: Level(6, 0.4, (4, 3), (8, 3, 30)),
}


def minimal_unique(rng: np.random.Generator, masks: Sequence[np.ndarray]) -> list[int] | None:
    """Indices of a minimal subset of ``masks`` whose AND has exactly one True, or None.

    Every mask holds for the hidden solution. Masks are taken in random order while they cut
    the candidate set, then each chosen one is dropped again if the rest stay unique.
    """
    alive = np.ones_like(masks[0])
    chosen = []
    for i in rng.permutation(len(masks)):
        cut = alive & masks[i]
        if cut.sum() < alive.sum():
            chosen.append(int(i))
            alive = cut
            if alive.sum() == 1:
                break
    if alive.sum() != 1:
        return None
    for i in [chosen[j] for j in rng.permutation(len(chosen))]:
        rest = [j for j in chosen if j != i]
        if rest and np.logical_and.reduce([masks[j] for j in rest]).sum() == 1:
            chosen = rest
    return chosen


# -- knights and knaves -------------------------------------------------------------------
def _kk_atom(rng: np.random.Generator, n: int, speaker: int, cands: np.ndarray) -> tuple[str, np.ndarray]:
    if rng.random() < 0.5:
        x = int(rng.choice([p for p in range(n) if p != speaker]))
        role = bool(rng.random() < 0.5)
        return f"{PEOPLE[x]}={'knight' if role else 'knave'}", cands[:, x] == role
    x, y = sorted(int(v) for v in rng.choice(n, size=2, replace=False))
    same = bool(rng.random() < 0.5)
    value = cands[:, x] == cands[:, y]
    return f"{PEOPLE[x]}{'=' if same else '!'}{PEOPLE[y]}", value if same else ~value


def _kk(rng: np.random.Generator, level: Level) -> tuple[str, str] | None:
    n = level.kk_people
    cands = np.array(list(itertools.product((True, False), repeat=n)))
    truth = int(rng.integers(len(cands)))
    pool: list[tuple[int, str, np.ndarray]] = []
    while len(pool) < 4 * n:
        speaker = int(rng.integers(n))
        claim, value = _kk_atom(rng, n, speaker, cands)
        if rng.random() < level.kk_compound:
            claim2, value2 = _kk_atom(rng, n, speaker, cands)
            if claim2 == claim:
                continue
            joiner = "&" if rng.random() < 0.5 else "|"
            claim, value = claim + joiner + claim2, (value & value2) if joiner == "&" else (value | value2)
        mask = cands[:, speaker] == value
        if mask[truth]:
            pool.append((speaker, f"{PEOPLE[speaker]}:{claim}", mask))
    chosen = minimal_unique(rng, [m for _, _, m in pool])
    if chosen is None:
        return None
    statements = sorted((pool[i][0], j, pool[i][1]) for j, i in enumerate(chosen))
    answer = ",".join(f"{PEOPLE[p]}={'knight' if cands[truth, p] else 'knave'}" for p in range(n))
    return "kk: " + "; ".join(s for _, _, s in statements), answer


# -- zebra --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _zebra_table(n: int, k: int) -> tuple[tuple[tuple, ...], np.ndarray, np.ndarray]:
    """All clues of an n-people, k-attribute grid and their truth over every grid.

    A grid assigns value i of attribute a to person ``grid[a][i]``; a clue is
    ("pv", person, a, i, same) or ("vv", a, i, b, j, same).
    """
    perms = list(itertools.permutations(range(n)))
    grids = np.array(list(itertools.product(perms, repeat=k)), dtype=np.int8)  # (M, k, n)
    clues, masks = [], []
    for a, i in itertools.product(range(k), range(n)):
        for p in range(n):
            owns = grids[:, a, i] == p
            clues += [("pv", p, a, i, True), ("pv", p, a, i, False)]
            masks += [owns, ~owns]
    for (a, i), (b, j) in itertools.combinations(itertools.product(range(k), range(n)), 2):
        if a != b:
            same = grids[:, a, i] == grids[:, b, j]
            clues += [("vv", a, i, b, j, True), ("vv", a, i, b, j, False)]
            masks += [same, ~same]
    return tuple(clues), np.array(masks), grids


def _zebra(rng: np.random.Generator, level: Level) -> tuple[str, str] | None:
    n, k = level.zebra
    clues, masks, grids = _zebra_table(n, k)
    truth = int(rng.integers(masks.shape[1]))
    true_idx = np.flatnonzero(masks[:, truth])
    chosen = minimal_unique(rng, masks[true_idx])
    if chosen is None:
        return None
    cats = [CATEGORIES[c] for c in rng.choice(len(CATEGORIES), size=k, replace=False)]
    names = [[str(v) for v in rng.choice(cat, size=n, replace=False)] for cat in cats]
    out = []
    for c in (clues[true_idx[i]] for i in chosen):
        if c[0] == "pv":
            _, p, a, i, same = c
            out.append(f"{PEOPLE[p]}{'=' if same else '!'}{names[a][i]}")
        else:
            _, a, i, b, j, same = c
            pair = [names[a][i], names[b][j]] if rng.random() < 0.5 else [names[b][j], names[a][i]]
            out.append(f"{pair[0]}{'=' if same else '!'}{pair[1]}")
    header = [" ".join(PEOPLE[:n])] + [" ".join(g) for g in names]
    grid = grids[truth]
    owned = [[names[a][i] for a in range(k) for i in range(n) if grid[a, i] == p] for p in range(n)]
    answer = ",".join(f"{PEOPLE[p]}={'/'.join(vals)}" for p, vals in enumerate(owned))
    return "zebra: " + "; ".join(header + out), answer


# -- sat ----------------------------------------------------------------------------------
def _sat(rng: np.random.Generator, level: Level) -> tuple[str, str] | None:
    n, width, m = level.sat
    cands = np.array(list(itertools.product((False, True), repeat=n)))  # binary order, a first
    alive = np.ones(len(cands), dtype=bool)
    clauses: list[str] = []
    while len(clauses) < m:
        vars_ = sorted(int(v) for v in rng.choice(n, size=width, replace=False))
        signs = rng.random(width) < 0.5
        clause = " ".join(("" if s else "-") + SAT_VARS[v] for v, s in zip(vars_, signs))
        if clause not in clauses:
            clauses.append(clause)
            alive &= np.logical_or.reduce([cands[:, v] == s for v, s in zip(vars_, signs)])
    mentioned = {lit.lstrip("-") for c in clauses for lit in c.split()}
    if len(mentioned) < n or not 0 < alive.sum() <= len(cands) // 4:
        return None
    first = cands[int(np.argmax(alive))]
    return "sat: " + "; ".join(clauses), ",".join(f"{SAT_VARS[v]}={int(first[v])}" for v in range(n))


class LogicFamily(TaskFamily):
    name = "logic"
    tool = "csp_solver"
    max_prompt_chars = 512
    max_answer_chars = 128

    def __init__(self, kinds: Sequence[str] = KINDS):
        if not kinds or set(kinds) - set(KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds!r}")
        self.kinds = tuple(kinds)

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        level = LEVELS[difficulty]
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        for _ in range(10_000):
            drawn = {"kk": _kk, "zebra": _zebra, "sat": _sat}[kind](rng, level)
            if drawn is not None and len(drawn[0]) <= self.max_prompt_chars:
                prompt, answer = drawn
                return Instance(self.name, difficulty, prompt, answer, key=prompt, data={"puzzle": prompt})
        raise RuntimeError(f"logic: no {kind} puzzle at level {difficulty} in 10000 draws")

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return verify(instance.data["puzzle"], answer)

    def tool_args(self, instance: Instance) -> str:
        return instance.prompt



class LogicEnv(TextTaskEnv):
    """Logic puzzles as a text episode (notation in ``verifiers/logic.py``, levels in
    ``envs.families.logic``).

    ## Observation
    The transcript: the prompt, one of ``kk: A:B=knave; B:A=C``, ``zebra: A B C; cat dog fox;
    A=dog; B!fox`` or ``sat: a -b c; -a b`` (at most 512 characters), then each tool call and
    its ``<result>...</result>``.

    ## Action
    The final answer: a full assignment, ``A=knight,B=knave`` (kk), ``A=dog/red,B=cat/tan``
    (zebra: one value per attribute for each person) or ``a=1,b=0`` (sat). Or a tool call
    ``<call>csp_solver PUZZLE</call>`` with the prompt verbatim as PUZZLE; its result is the
    first solution python-constraint2 finds, in the answer format (the expert's answer).

    Printable ASCII only, the answer at most 128 characters (``max_answer_chars``) once
    surrounding whitespace is stripped: other text ends the episode with reward 0
    (``TextTaskEnv``).

    ## Reward
    1 if the assignment satisfies every statement, clue or clause (knights-knaves and zebra
    solutions are unique; any satisfying SAT assignment counts), else 0; with
    ``partial_credit=True`` the fraction satisfied by a complete, well-formed assignment.

    ## Episode End
    Terminated after the final answer; truncated (reward 0) past the call budget.
    """

    def __init__(self, family: str | TaskFamily = "logic", **kwargs):
        super().__init__(family, **kwargs)
