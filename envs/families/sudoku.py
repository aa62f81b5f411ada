"""Sudoku: fill a 9x9 grid; every instance is a random symmetry of a verified bank puzzle.

The bank (``envs/data/sudoku_bank.txt``) holds puzzles made by this suite's own generator
(``python -m envs.families.sudoku_gen``), each with a unique solution. An instance picks a bank
entry of its level and applies a random solution-preserving transform: transpose or not, a band
order and row orders within bands, a stack order and column orders within stacks, and a digit
relabelling (2 * 1296^2 * 9! transforms). The instance key is the bank entry, so a test puzzle
is a transform of a test bank entry only; bank entries are pairwise non-isomorphic.

View ``cells`` (the default, ``CellsView``): one position per cell (its given digit or ``.``)
with its row, column and box as coordinates, each writing the cell's digit, and each refinement
step sees the previous step's predictions (TRM's answer state); 82 positions for 81 cells where
the character view pays 170. The character view stays as ``chars``.
"""

from __future__ import annotations

import csv
import os
from itertools import permutations, product
from pathlib import Path
from typing import Any

import numpy as np

from r3m.envs.base import Instance, TaskFamily, make_family
from r3m.envs.eval_sets import sample_indices
from r3m.envs.families.sudoku_gen import BANK_PATH, LEVELS, Entry, read_bank
from r3m.envs.text_env import TextTaskEnv
from r3m.envs.views import CharView, SymbolView, Token
from r3m.verifiers import Verdict
from r3m.verifiers.sudoku import DIGITS, PEERS, verify

PREFIX = "sudoku:"
_PERM3 = tuple(permutations(range(3)))
# the 1296 row (or column) orders that keep bands (stacks) together: band order x order within each band
LINE_PERMS: tuple[tuple[int, ...], ...] = tuple(
    tuple(band * 3 + within[k][i] for k, band in enumerate(bands) for i in range(3))
    for bands in _PERM3
    for within in product(_PERM3, repeat=3)
)
LINE_PERMS_X9: tuple[tuple[int, ...], ...] = tuple(tuple(9 * r for r in p) for p in LINE_PERMS)
_FACTORIALS = (40320, 5040, 720, 120, 24, 6, 2, 1, 1)


def transform_indices(row_perm: int, col_perm: int, transpose: bool) -> list[int]:
    """Source cell of each target cell: ``new[i] = old[idx[i]]`` for one symmetry of the grid."""
    if transpose:  # new[r][c] = old[cols[c]][rows[r]]
        return [r + c9 for r in LINE_PERMS[row_perm] for c9 in LINE_PERMS_X9[col_perm]]
    return [r9 + c for r9 in LINE_PERMS_X9[row_perm] for c in LINE_PERMS[col_perm]]


def digit_table(code: int) -> dict[int, int]:
    """``str.translate`` table for the digit relabelling with Lehmer code ``code`` in [0, 9!)."""
    pool = list("123456789")
    image = []
    for f in _FACTORIALS:
        q, code = divmod(code, f)
        image.append(pool.pop(q))
    return str.maketrans("123456789", "".join(image))


class CellsView(SymbolView):
    """81 cell positions with (row, column, box) coordinates, the answer written in place."""

    name = "cells"
    out_symbols = tuple("123456789")
    coords = (9, 9, 9)
    feedback = True

    def __init__(self, peers: bool = True, name: str = "cells"):
        self.peers, self.name = peers, name

    @staticmethod
    def grid(prompt: str) -> str:
        cells = (prompt[len(PREFIX):] if prompt.startswith(PREFIX) else prompt).strip()
        if len(cells) != 81 or set(cells) - set("123456789."):
            raise ValueError(f"sudoku cells view: expected 81 cells of 1-9 or '.', got {prompt[:40]!r}")
        return cells

    def tokens(self, prompt: str) -> list[Token]:
        return [Token(ch, (i // 9 + 1, i % 9 + 1, (i // 27) * 3 + (i % 9) // 3 + 1), True)
                for i, ch in enumerate(self.grid(prompt))]

    def target(self, observation: str, answer: str) -> tuple[str, ...]:
        return tuple(answer.strip())

    def decode(self, observation: str, outputs) -> str:
        return "".join(outputs)

    def call_args(self, observation: str) -> str:
        return self.grid(observation.partition("<call>")[0])


class SudokuFamily(TaskFamily):
    """9x9 Sudoku with a unique solution.

    Prompt: ``"sudoku:"`` + 81 characters, row-major, ``.`` for blanks (position-aligned, no
    separators). Answer: the 81 digits of the solution (whitespace ignored). Tool:
    ``sudoku_solver`` with the 81-character puzzle as args; its output is the answer.

    Levels (``rounds`` = rounds of simultaneous naked + hidden single placement that solve the
    puzzle, -1 when singles get stuck and search is needed; ``bt_nodes`` = placements of a plain
    MRV backtracker exhausting the tree; medians from the committed bank):

    1. 45-50 givens, singles-solvable in 2-4 rounds (equal shares of 2, 3, 4); bt_nodes ~34.
    2. 36-44 givens, singles-solvable in 5-8 rounds (equal shares); bt_nodes ~45.
    3. 30-35 givens, unique (random removal order); 92% singles-solvable in 3-13 rounds (mostly
       4-9), 8% need search; bt_nodes ~50.
    4. 25-29 givens, unique; a third need search, the rest take 4-18 rounds; bt_nodes ~160.
    5. 21-24 givens, minimal (no given can be removed) and never singles-solvable; bt_nodes ~570.

    ``instance.data``: ``puzzle``, ``solution``, ``givens``, ``rounds``, ``bt_nodes``.
    External evaluation sets (``r3m.envs.list_eval_sets("sudoku")``) load through
    ``load_sudoku_csv``; the same task as a numeric env is ``numeric_env`` (sudoku-grid-v0).
    """

    name = "sudoku"
    tool = "sudoku_solver"
    augmentation = "transpose, band/stack orders, row/column orders within them, digit relabelling"
    answer_len = 81
    max_prompt_chars = len(PREFIX) + 81
    max_answer_chars = 81
    max_tool_args_chars = 81  # the puzzle, so every payload (ARGS or answer) is 81 characters
    numeric_env = "sudoku-grid-v0"

    def __init__(self, bank_path: str | Path = BANK_PATH, augment: bool = True):
        self.bank_path = Path(bank_path)
        self.augment = augment
        self._bank: dict[int, list[Entry]] | None = None

    def augmented(self, on: bool) -> "SudokuFamily":
        """Off: every instance is its bank entry as stored (the same entries, splits and keys)."""
        if on == self.augment:
            return self
        other = SudokuFamily(self.bank_path, augment=on)
        other._bank = self._bank
        return other

    @property
    def bank(self) -> dict[int, list[Entry]]:
        """Bank entries by level, loaded on first use."""
        if self._bank is None:
            bank: dict[int, list[Entry]] = {level: [] for level in LEVELS}
            for entry in read_bank(self.bank_path):
                bank[entry.level].append(entry)
            self._bank = bank
        return self._bank

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        entries = self.bank[difficulty]
        i, row_perm, col_perm, transpose, relabel = rng.integers(
            0, (len(entries), 1296, 1296, 2, 362880)
        ).tolist()
        entry = entries[i]
        if not self.augment:  # the draws above still happen, so an index picks the same entry
            row_perm, col_perm, transpose, relabel = 0, 0, 0, 0
        idx = transform_indices(row_perm, col_perm, bool(transpose))
        table = digit_table(relabel)
        puzzle = "".join([entry.puzzle[k] for k in idx]).translate(table)
        solution = "".join([entry.solution[k] for k in idx]).translate(table)
        data: dict[str, Any] = {"puzzle": puzzle, "solution": solution, "givens": entry.givens,
                                "rounds": entry.rounds, "bt_nodes": entry.bt_nodes}
        key = f"sudoku-bank:{difficulty}:{i}"
        return Instance(self.name, difficulty, PREFIX + puzzle, solution, key, data)

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return verify(instance.data["puzzle"], answer)

    def from_puzzle(self, puzzle: str, solution: str, difficulty: int = 0, key: str = "external") -> Instance:
        """An instance for an external puzzle (e.g. an evaluation CSV), ``0`` or ``.`` for blanks;
        play it with ``env.reset(options={"instance": ...})``. Never used for training."""
        puzzle = puzzle.strip().replace("0", ".")
        if len(puzzle) != 81 or len(solution.strip()) != 81:
            raise ValueError(f"puzzle and solution must have 81 cells, got {len(puzzle)} and {len(solution.strip())}")
        data = {"puzzle": puzzle, "solution": solution.strip(), "givens": 81 - puzzle.count("."),
                "rounds": -1, "bt_nodes": -1}
        return Instance(self.name, difficulty, PREFIX + puzzle, solution.strip(), key, data)

    def tool_args(self, instance: Instance) -> str:
        return instance.data["puzzle"]

    def views(self):
        return {"cells": CellsView(), "cells-all": CellsView(peers=False, name="cells-all"), "chars": CharView("fill")}

    def distill_targets(self, instance: Instance) -> dict[int, str]:
        """The forced cells: what a model can learn to fill from a verified solution without search."""
        return self.forced_cells(instance)

    def forced_cells(self, instance: Instance) -> dict[int, str]:
        """Blank cells whose row, column and box givens leave one digit (naked singles): cell -> digit.

        The cells a solver fills without search at its first step; a policy that gets them wrong
        has not read the board. Computed from ``instance.data``, never from the prompt text.
        """
        grid = instance.data["puzzle"]
        out = {}
        for i, ch in enumerate(grid):
            if ch == ".":
                left = DIGITS - {grid[j] for j in PEERS[i]}
                if len(left) == 1:
                    out[i] = next(iter(left))
        return out


def load_sudoku_csv(path: str | os.PathLike, limit: int | None = None, seed: int = 0) -> list[Instance]:
    """Instances for an external Sudoku CSV (``puzzle,solution,...`` header): evaluation only,
    never training. With ``limit`` smaller than the file, a fixed sample of ``limit`` rows drawn
    with ``seed`` (``eval_sets.sample_indices``). Keys are ``"{file stem}:{i}"``, ``i`` counting
    the rows kept."""
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows = [rows[i] for i in sample_indices(len(rows), limit, seed)]
    fam = make_family("sudoku")
    return [fam.from_puzzle(r["puzzle"], r["solution"], key=f"{path.stem}:{i}") for i, r in enumerate(rows)]


class SudokuEnv(TextTaskEnv):
    """Solve one 9x9 Sudoku (see ``SudokuFamily`` for the difficulty levels).

    ## Observation
    ``Text``: ``"sudoku:"`` followed by the 81 cells row-major, digits for givens and ``.`` for
    blanks, e.g. ``sudoku:53..7....6..195...`` (88 characters); then any tool calls and results.

    ## Action
    ``Text``: the final answer, the 81 digits of the filled grid row-major (surrounding whitespace
    ignored; an answer of more than 81 characters scores 0, so no separators); or
    ``<call>sudoku_solver PUZZLE</call>`` with the 81-character puzzle, whose result is the
    81-digit solution (or ``error: ...``). Printable ASCII only, as for every text env
    (``TextTaskEnv``): other text ends the episode with reward 0.

    ## Reward
    1.0 if the answer is a valid completion (keeps every given, every row, column and box holds
    1-9), else 0.0. With ``partial_credit=True``: the fraction of the 27 rows/columns/boxes that
    are valid, 0 when the answer is malformed or changes a given. Tool calls: 0.

    ## Episode End
    Terminated after the final answer; truncated (reward 0) after more than ``call_budget``
    tool calls. Arguments and ``reset`` options are those of ``TextTaskEnv``.
    """

    def __init__(self, family: str | TaskFamily = "sudoku", **kwargs: Any):
        super().__init__(family, **kwargs)
