"""Logic puzzles of the ``logic`` family: notation, parser, answer format and verifier.

A puzzle is one line ``KIND: ITEM; ITEM; ...``. Three kinds:

``kk: A:B=knave; B:A=C; C:A=knight|B!C`` (knights always tell the truth, knaves always lie)
    Each item ``S:CLAIM`` means "S says CLAIM". Atoms: ``X=knight``, ``X=knave``, ``X=Y``
    (X and Y are the same kind), ``X!Y`` (different kinds); a claim is one atom or atoms
    joined by one of ``&`` (and) / ``|`` (or). Names: ``[A-Z][A-Za-z0-9]*``.
    Answer ``A=knight,B=knave,C=knight`` (every islander mentioned, any order).

``zebra: A B C; cat dog fox; red tan sky; A=dog; cat=red; B!fox``
    The first group lists the people; each further group one attribute's values, one value per
    person. Clues: ``P=v`` / ``P!v`` (person P has / has not value v), ``v=w`` / ``v!w`` (the
    same person / different people have v and w).
    Answer ``A=dog/red,B=cat/sky,C=fox/tan``: each person with one value per attribute.

``sat: a -b c; -a b; b c -d`` (CNF: clauses separated by ``;``, ``-`` negates)
    Answer ``a=1,b=0,c=1,d=1``: a value for every variable mentioned.

Semantics are plain Python closures built by the parser: no text is ever evaluated.
``verify`` checks the answer against the constraints, so any satisfying assignment is correct;
generated knights-knaves and zebra puzzles have exactly one.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, NamedTuple

from r3m.verifiers import RIGHT, Verdict, never_raises, wrong

MAX_PUZZLE_CHARS = 4096
MAX_ITEMS = 256
MAX_NAMES = 64
KINDS = ("kk", "zebra", "sat")

_NAME = re.compile(r"[A-Z][A-Za-z0-9]{0,15}")
_WORD = re.compile(r"[a-z][a-z0-9]{0,15}")
_ROLES = {"knight": True, "knave": False}


class LogicError(ValueError):
    """A malformed puzzle or answer."""


class Constraint(NamedTuple):
    text: str  # the item as written
    scope: tuple[str, ...]  # the variables it reads, in ``test``'s argument order
    test: Callable[..., bool]

    def holds(self, assignment: Mapping[str, object]) -> bool:
        return bool(self.test(*(assignment[v] for v in self.scope)))


class Puzzle(NamedTuple):
    kind: str
    variables: tuple[str, ...]  # CSP variables (zebra: the attribute values)
    domains: dict[str, tuple]
    constraints: tuple[Constraint, ...]
    people: tuple[str, ...] = ()  # zebra: the people (each variable's domain)
    groups: tuple[tuple[str, ...], ...] = ()  # zebra: one tuple of values per attribute


def parse_puzzle(text: str) -> Puzzle:
    """Parse a puzzle line; raises LogicError with a short reason."""
    if not isinstance(text, str) or len(text) > MAX_PUZZLE_CHARS:
        raise LogicError(f"puzzle must be a string of at most {MAX_PUZZLE_CHARS} characters")
    kind, colon, body = text.strip().partition(":")
    if not colon or kind.strip() not in KINDS:
        raise LogicError(f"puzzle must start with one of {', '.join(k + ':' for k in KINDS)}")
    items = [" ".join(it.split()) for it in body.split(";")]
    items = [it for it in items if it]
    if not items or len(items) > MAX_ITEMS:
        raise LogicError(f"puzzle needs 1..{MAX_ITEMS} items separated by ';'")
    return {"kk": _parse_kk, "zebra": _parse_zebra, "sat": _parse_sat}[kind.strip()](items)


# -- knights and knaves -------------------------------------------------------------------
def _kk_atom(text: str) -> tuple[tuple[str, ...], Callable[..., bool]]:
    """An atom's names and its truth as a function of their roles (True = knight)."""
    m = re.fullmatch(r"([A-Z][A-Za-z0-9]*)([=!])([A-Za-z][A-Za-z0-9]*)", text)
    if not m:
        raise LogicError(f"bad claim {text[:24]!r} (want X=knight, X=knave, X=Y or X!Y)")
    x, op, y = m.groups()
    if y in _ROLES and op == "=":
        role = _ROLES[y]
        return (x,), lambda a: a == role
    if not _NAME.fullmatch(y) or y == x:
        raise LogicError(f"bad claim {text[:24]!r}")
    return (x, y), (lambda a, b: a == b) if op == "=" else (lambda a, b: a != b)


def _kk_statement(item: str) -> Constraint:
    speaker, colon, claim = item.replace(" ", "").partition(":")
    if not colon or not _NAME.fullmatch(speaker):
        raise LogicError(f"bad statement {item[:24]!r} (want S:CLAIM)")
    joiner = "&" if "&" in claim else "|"
    if "&" in claim and "|" in claim:
        raise LogicError(f"claim {claim[:24]!r} mixes & and |")
    atoms = [_kk_atom(a) for a in claim.split(joiner)]
    scope = tuple(dict.fromkeys((speaker, *(n for names, _ in atoms for n in names))))
    index = {n: i for i, n in enumerate(scope)}
    parts = [(tuple(index[n] for n in names), fn) for names, fn in atoms]
    combine = all if joiner == "&" else any

    def test(*roles: bool) -> bool:
        return roles[0] == combine(fn(*(roles[i] for i in idx)) for idx, fn in parts)

    return Constraint(item, scope, test)


def _parse_kk(items: list[str]) -> Puzzle:
    constraints = tuple(_kk_statement(it) for it in items)
    names = sorted({n for c in constraints for n in c.scope})
    if len(names) > MAX_NAMES:
        raise LogicError(f"too many islanders ({len(names)} > {MAX_NAMES})")
    return Puzzle("kk", tuple(names), {n: (True, False) for n in names}, constraints)


# -- zebra --------------------------------------------------------------------------------
def _parse_zebra(items: list[str]) -> Puzzle:
    groups = [tuple(it.split()) for it in items if "=" not in it and "!" not in it]
    clues = [it.replace(" ", "") for it in items if "=" in it or "!" in it]
    if len(groups) < 2:
        raise LogicError("zebra needs a group of people and at least one group of values")
    people, values = groups[0], groups[1:]
    if not all(_NAME.fullmatch(p) for p in people) or not 2 <= len(people) <= 8:
        raise LogicError("zebra people must be 2..8 capitalised names")
    flat = [v for g in values for v in g]
    if not all(_WORD.fullmatch(v) for v in flat) or len(values) > 8:
        raise LogicError("zebra values must be lowercase words, at most 8 groups")
    distinct = len(set(flat)) == len(flat) and len(set(people)) == len(people)
    if any(len(g) != len(people) for g in values) or not distinct:
        raise LogicError("each value group needs exactly one distinct value per person")
    constraints = tuple(_zebra_clue(c, set(people), set(flat)) for c in clues)
    return Puzzle("zebra", tuple(flat), {v: people for v in flat}, constraints, people, tuple(values))


def _zebra_clue(text: str, people: set[str], values: set[str]) -> Constraint:
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)([=!])([A-Za-z][A-Za-z0-9]*)", text)
    if not m:
        raise LogicError(f"bad clue {text[:24]!r} (want P=v, P!v, v=w or v!w)")
    x, op, y = m.groups()
    same = op == "="
    if x in people and y in values or y in people and x in values:
        person, value = (x, y) if x in people else (y, x)
        return Constraint(text, (value,), (lambda v: v == person) if same else (lambda v: v != person))
    if x in values and y in values and x != y:
        return Constraint(text, (x, y), (lambda a, b: a == b) if same else (lambda a, b: a != b))
    raise LogicError(f"clue {text[:24]!r} must relate a person and a value, or two values")


# -- sat ----------------------------------------------------------------------------------
def _parse_sat(items: list[str]) -> Puzzle:
    constraints = []
    for item in items:
        lits = item.split()
        if not all(re.fullmatch(r"-?[a-z][a-z0-9]{0,7}", lit) for lit in lits):
            raise LogicError(f"bad clause {item[:24]!r} (want literals like a -b c)")
        scope = tuple(dict.fromkeys(lit.lstrip("-") for lit in lits))
        signs = tuple((scope.index(lit.lstrip("-")), not lit.startswith("-")) for lit in lits)
        constraints.append(Constraint(item, scope, lambda *v, s=signs: any(v[i] == sign for i, sign in s)))
    names = sorted({n for c in constraints for n in c.scope})
    if len(names) > MAX_NAMES:
        raise LogicError(f"too many variables ({len(names)} > {MAX_NAMES})")
    return Puzzle("sat", tuple(names), {n: (True, False) for n in names}, tuple(constraints))


# -- answers ------------------------------------------------------------------------------
def format_answer(puzzle: Puzzle, assignment: Mapping[str, object]) -> str:
    """The canonical answer text for a full assignment of ``puzzle.variables``."""
    if puzzle.kind == "kk":
        return ",".join(f"{n}={'knight' if assignment[n] else 'knave'}" for n in puzzle.variables)
    if puzzle.kind == "sat":
        return ",".join(f"{n}={int(bool(assignment[n]))}" for n in puzzle.variables)
    owned = {p: [v for g in puzzle.groups for v in g if assignment[v] == p] for p in puzzle.people}
    return ",".join(f"{p}={'/'.join(owned[p])}" for p in puzzle.people)


def parse_answer(puzzle: Puzzle, text: str) -> dict[str, object]:
    """An answer text to a full assignment of ``puzzle.variables``; raises LogicError."""
    pairs = {}
    for item in "".join(text.split()).split(","):
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise LogicError(f"bad item {item[:24]!r} (want NAME=VALUE)")
        if name in pairs:
            raise LogicError(f"{name[:16]} is assigned twice")
        pairs[name] = value
    if puzzle.kind == "zebra":
        return _zebra_answer(puzzle, pairs)
    missing = [n for n in puzzle.variables if n not in pairs]
    extra = [n for n in pairs if n not in puzzle.domains]
    if missing or extra:
        raise LogicError(f"missing {missing[:4]} / unknown {[e[:16] for e in extra[:4]]}")
    table = {"knight": True, "knave": False} if puzzle.kind == "kk" else {"1": True, "0": False}
    if any(v not in table for v in pairs.values()):
        raise LogicError(f"values must be one of {sorted(table)}")
    return {n: table[v] for n, v in pairs.items()}


def _zebra_answer(puzzle: Puzzle, pairs: dict[str, str]) -> dict[str, object]:
    if sorted(pairs) != sorted(puzzle.people):
        raise LogicError(f"answer must give each of {' '.join(puzzle.people)} once")
    owner: dict[str, str] = {}
    for person, values in pairs.items():
        vals = values.split("/")
        groups = sorted(i for v in vals for i, g in enumerate(puzzle.groups) if v in g)
        if len(vals) != len(puzzle.groups) or groups != list(range(len(puzzle.groups))):
            raise LogicError(f"{person} needs exactly one value from each group")
        for v in vals:
            if v in owner:
                raise LogicError(f"{v[:16]} is given to two people")
            owner[v] = person
    return owner


@never_raises
def verify(puzzle: str, answer: str) -> Verdict:
    """Check ``answer`` against every constraint of ``puzzle`` (the puzzle text as in the prompt).

    Correct iff the answer is a complete, well-formed assignment satisfying every statement,
    clue or clause. Partial credit: the fraction of them satisfied (a malformed or incomplete
    answer scores 0). Generated knights-knaves and zebra puzzles have a unique solution, so
    there "correct" means "equal to it"; a SAT answer may be any satisfying assignment.
    """
    try:
        p = parse_puzzle(puzzle)
    except LogicError as exc:
        return wrong(f"malformed puzzle: {exc}")
    try:
        assignment = parse_answer(p, answer)
    except LogicError as exc:
        return wrong(f"malformed answer: {exc}")
    failed = [c.text for c in p.constraints if not c.holds(assignment)]
    if not failed:
        return RIGHT
    n = len(p.constraints)
    return wrong(f"{len(failed)}/{n} constraints violated, e.g. {failed[0][:32]}", (n - len(failed)) / n)
