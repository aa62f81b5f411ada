"""Sudoku verifier: is an 81-digit answer a valid completion of a 9x9 puzzle?

Grids are row-major strings of 81 characters: digits 1-9 for givens, ``.`` or ``0`` for blanks.
A filled grid is correct iff it is made of the digits 1-9, keeps every given, and every row,
column and 3x3 box holds each digit once; for a puzzle with a unique solution that is exactly
the solution. The geometry tables here (``UNITS``, ``PEERS``) are shared by the generator,
the solver tool and the grid env.

Partial credit (``score``): the fraction of the 27 units (9 rows, 9 columns, 9 boxes) that
hold each digit once. It is 0 when the answer is malformed (not 81 digits 1-9 once whitespace
is removed) or changes a given, and 0 for a malformed puzzle.
"""

from __future__ import annotations

from operator import itemgetter

import numpy as np

from r3m.verifiers import RIGHT, Verdict, never_raises, wrong

ROWS: tuple[tuple[int, ...], ...] = tuple(tuple(r * 9 + c for c in range(9)) for r in range(9))
COLS: tuple[tuple[int, ...], ...] = tuple(tuple(r * 9 + c for r in range(9)) for c in range(9))
BOXES: tuple[tuple[int, ...], ...] = tuple(
    tuple((br * 3 + i) * 9 + bc * 3 + j for i in range(3) for j in range(3))
    for br in range(3)
    for bc in range(3)
)
UNITS: tuple[tuple[int, ...], ...] = ROWS + COLS + BOXES
CELL_UNITS: tuple[tuple[int, ...], ...] = tuple(
    tuple(k for k, u in enumerate(UNITS) if i in u) for i in range(81)
)
PEERS: tuple[tuple[int, ...], ...] = tuple(
    tuple(sorted({j for k in CELL_UNITS[i] for j in UNITS[k]} - {i})) for i in range(81)
)

DIGITS = frozenset("123456789")
BLANKS = frozenset(".0")
_PUZZLE_CHARS = DIGITS | BLANKS
_UNIT_GETTERS = tuple(itemgetter(*u) for u in UNITS)
_UNITS_FLAT = np.array(UNITS, dtype=np.intp).reshape(-1)
_FULL_MASK = 0b1111111110  # bits 1..9


def parse_puzzle(puzzle: str) -> tuple[str | None, str]:
    """``(grid, "")`` with blanks as ``.`` and whitespace removed, or ``(None, reason)``."""
    if not isinstance(puzzle, str):
        return None, f"puzzle must be a string, got {type(puzzle).__name__}"
    p = "".join(puzzle.split()) if len(puzzle) != 81 else puzzle
    if len(p) != 81:
        return None, f"puzzle must have 81 cells, got {len(p)}"
    if not set(p) <= _PUZZLE_CHARS:
        return None, "puzzle cells must be digits 1-9 or '.'/'0' for blanks"
    return p.replace("0", "."), ""


def unit_errors(grid: str) -> int:
    """Number of the 27 units of a filled 81-digit grid that do not hold each digit once."""
    return sum(len(set(get(grid))) != 9 for get in _UNIT_GETTERS)


@never_raises
def verify(puzzle: str, answer: str) -> Verdict:
    """Score ``answer`` (81 digits, whitespace ignored) as a completion of ``puzzle``."""
    p, reason = parse_puzzle(puzzle)
    if p is None:
        return wrong(f"bad puzzle: {reason}")
    a = answer if len(answer) == 81 else "".join(answer.split())
    if len(a) != 81 or not set(a) <= DIGITS:
        a = "".join(a.split())
        if len(a) != 81:
            return wrong(f"answer must be 81 digits, got {len(a)} characters")
        if not set(a) <= DIGITS:
            return wrong("answer must use only the digits 1-9")
    changed = sum(1 for pc, ac in zip(p, a) if pc != "." and pc != ac)
    if changed:
        return wrong(f"answer changes {changed} given(s)")
    bad = unit_errors(a)
    if bad == 0:
        return RIGHT
    return wrong(f"{bad} of 27 rows/columns/boxes repeat a digit", score=(27 - bad) / 27)


def verify_batch(puzzles: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """Vectorized correctness of ``answers[N, 81]`` for ``puzzles[N, 81]`` (0 = blank); bool[N].

    Same rule as ``verify`` (digits 1-9, givens kept, 27 valid units), without partial credit.
    """
    puzzles = np.asarray(puzzles)
    answers = np.asarray(answers)
    if puzzles.ndim != 2 or puzzles.shape[1] != 81 or answers.shape != puzzles.shape:
        raise ValueError(f"expected two [N, 81] arrays, got {puzzles.shape} and {answers.shape}")
    a = answers.astype(np.int64, copy=False)
    digits = (a >= 1) & (a <= 9)
    ok = digits.all(axis=1)
    ok &= ((puzzles == 0) | (puzzles == a)).all(axis=1)
    bits = np.left_shift(np.uint16(1), np.where(digits, a, 0).astype(np.uint16))
    units = bits[:, _UNITS_FLAT].reshape(len(a), 27, 9)
    ok &= (np.bitwise_or.reduce(units, axis=2) == _FULL_MASK).all(axis=1)
    return ok
