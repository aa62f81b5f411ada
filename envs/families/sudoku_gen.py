"""Build the Sudoku puzzle bank: ``python -m envs.families.sudoku_gen [--seed S] [--out PATH]``.

Each bank entry comes from a fresh random full grid (randomized backtracking), from which givens
are removed in a random order while the puzzle keeps a unique solution (levels 1-2: while
naked + hidden singles alone still solve it, which implies uniqueness), down to a target count
of givens drawn for the entry's level (level 5: until no given can be removed). The build is
deterministic given the seed: entry attempt ``k`` of level ``L`` uses its own
``SeedSequence([seed, L, k])`` and attempts are accepted in order, whatever ``--workers``.

Per entry the bank records ``givens``, ``rounds`` (rounds of simultaneous naked + hidden single
placement that solve it, -1 if singles alone get stuck) and ``bt_nodes`` (placements made by a
plain MRV backtracker, no propagation, that finds every solution and exhausts the tree).
Entries are deduplicated by an isomorphism invariant of their solution grid, so no two entries
(and so no train and test puzzles) are transforms of one another.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from collections import Counter
from typing import Iterator, NamedTuple

import numpy as np

from r3m.verifiers.sudoku import PEERS, UNITS

FULL = 0b1111111110  # candidate bits 1..9
BIT = tuple(1 << d for d in range(10))
DIGIT_OF = {1 << d: d for d in range(1, 10)}
BANK_PATH = Path(__file__).resolve().parent.parent / "data" / "sudoku_bank.txt"
BOX_OF = tuple((i // 27) * 3 + (i % 9) // 3 for i in range(81))


class LevelSpec(NamedTuple):
    givens: tuple[int, int]  # fewest, most givens
    rounds: tuple[int, int] | None  # singles-solvable, with rounds drawn uniformly in this range
    minimal: bool = False  # remove givens until none can go, and require search (rounds == -1)


LEVELS: dict[int, LevelSpec] = {
    1: LevelSpec((45, 50), (2, 4)),
    2: LevelSpec((36, 44), (5, 8)),
    3: LevelSpec((30, 35), None),
    4: LevelSpec((25, 29), None),
    5: LevelSpec((17, 24), None, minimal=True),
}
GREEDY_TRIES = 6  # singles levels: removals compared per step, the deepest (most rounds) one wins


class Entry(NamedTuple):
    level: int
    givens: int
    rounds: int
    bt_nodes: int
    puzzle: str  # 81 chars, '.' for blanks
    solution: str


# -- candidate-mask search with naked + hidden single propagation -----------------------------
def _propagate(c: list[int], queue: list[int]) -> bool:
    """Eliminate placed digits from peers and place hidden singles, to a fixpoint; False on contradiction."""
    while True:
        while queue:
            i = queue.pop()
            bit = c[i]
            for j in PEERS[i]:
                m = c[j]
                if m & bit:
                    m ^= bit
                    if not m:
                        return False
                    c[j] = m
                    if not m & (m - 1):
                        queue.append(j)
        for unit in UNITS:
            once = twice = 0
            for i in unit:
                m = c[i]
                twice |= once & m
                once |= m
            if once != FULL:
                return False
            uniq = once & ~twice
            if uniq:
                for i in unit:
                    m = c[i]
                    if m & uniq and m & (m - 1):
                        b = m & uniq
                        if b & (b - 1):
                            return False
                        c[i] = b
                        queue.append(i)
        if not queue:
            return True


def _search(c: list[int], limit: int, rnd: random.Random | None, out: list[list[int]]) -> int:
    """Count solutions of propagated candidates ``c`` up to ``limit``, appending them to ``out``."""
    best, fewest = -1, 10
    for i in range(81):
        m = c[i]
        if m & (m - 1):
            n = m.bit_count()
            if n < fewest:
                best, fewest = i, n
                if n == 2:
                    break
    if best < 0:
        out.append(c)
        return 1
    m = c[best]
    bits = [b for b in BIT[1:] if m & b]
    if rnd is not None:
        rnd.shuffle(bits)
    found = 0
    for b in bits:
        d = c.copy()
        d[best] = b
        if _propagate(d, [best]):
            found += _search(d, limit - found, rnd, out)
            if found >= limit:
                break
    return found


def candidates(grid: list[int]) -> list[int] | None:
    """Propagated candidate masks of a grid (0 = blank), or None if it is contradictory."""
    c = [FULL] * 81
    queue = []
    for i, v in enumerate(grid):
        if v:
            if not c[i] & BIT[v]:
                return None
            c[i] = BIT[v]
            queue.append(i)
    return c if _propagate(c, queue) else None


def count_solutions(grid: list[int], limit: int = 2) -> int:
    """Number of solutions of ``grid`` (0 = blank), counted up to ``limit``."""
    c = candidates(grid)
    return 0 if c is None else _search(c, limit, None, [])


def random_full_grid(rnd: random.Random) -> list[int]:
    out: list[list[int]] = []
    _search([FULL] * 81, 1, rnd, out)
    return [DIGIT_OF[m] for m in out[0]]


def _unique_without(grid: list[int], cell: int, digit: int) -> bool:
    """Is ``grid`` (unique solution, with ``digit`` at the blank ``cell``) still unique? Yes iff no
    other digit at ``cell`` leads to a solution."""
    c = [FULL] * 81
    c[cell] = FULL & ~BIT[digit]
    queue = []
    for i, v in enumerate(grid):
        if v:
            c[i] = BIT[v]
            queue.append(i)
    return not _propagate(c, queue) or _search(c, 1, None, []) == 0


# -- difficulty measures -------------------------------------------------------------------
def unit_masks(grid: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Bit masks of the digits already used in each row, column and box of ``grid``."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, v in enumerate(grid):
        if v:
            rows[i // 9] |= BIT[v]
            cols[i % 9] |= BIT[v]
            boxes[BOX_OF[i]] |= BIT[v]
    return rows, cols, boxes


def singles_rounds(grid: list[int]) -> int:
    """Rounds of simultaneous naked + hidden single placement that fill ``grid``; -1 if they get stuck."""
    g = list(grid)
    rounds = 0
    while 0 in g:
        rows, cols, boxes = unit_masks(g)
        cand = [0 if g[i] else FULL & ~(rows[i // 9] | cols[i % 9] | boxes[BOX_OF[i]]) for i in range(81)]
        place: dict[int, int] = {}
        for i in range(81):
            if not g[i]:
                m = cand[i]
                if not m:
                    return -1
                if not m & (m - 1):
                    place[i] = m
        for unit in UNITS:
            once = twice = 0
            for i in unit:
                twice |= once & cand[i]
                once |= cand[i]
            uniq = once & ~twice
            if uniq:
                for i in unit:
                    m = cand[i] & uniq
                    if m and place.setdefault(i, m) != m:
                        return -1
        if not place:
            return -1
        for i, m in place.items():
            if m not in DIGIT_OF:  # two digits forced into one cell: contradiction
                return -1
            g[i] = DIGIT_OF[m]
        rounds += 1
    return rounds


def bt_nodes(grid: list[int], cap: int = 10_000_000) -> int:
    """Placements made by a plain MRV backtracker (no propagation) exhausting the tree; at most ``cap``."""
    g = list(grid)
    rows, cols, boxes = unit_masks(g)
    empties = [i for i in range(81) if not g[i]]
    nodes = 0

    def rec(depth: int) -> None:
        nonlocal nodes
        if depth == len(empties) or nodes >= cap:
            return
        best, fewest, bestm = depth, 10, 0
        for k in range(depth, len(empties)):
            i = empties[k]
            m = FULL & ~(rows[i // 9] | cols[i % 9] | boxes[BOX_OF[i]])
            n = m.bit_count()
            if n < fewest:
                best, fewest, bestm = k, n, m
                if n <= 1:
                    break
        empties[depth], empties[best] = empties[best], empties[depth]
        i = empties[depth]
        r, c, b = i // 9, i % 9, BOX_OF[i]
        for d in range(1, 10):
            if bestm & BIT[d]:
                nodes += 1
                rows[r] |= BIT[d]
                cols[c] |= BIT[d]
                boxes[b] |= BIT[d]
                rec(depth + 1)
                rows[r] ^= BIT[d]
                cols[c] ^= BIT[d]
                boxes[b] ^= BIT[d]

    rec(0)
    return nodes


# -- puzzles --------------------------------------------------------------------------------
def _remove_keeping_singles(rnd: random.Random, grid: list[int], target: int, max_rounds: int) -> int:
    """Remove givens down to ``target`` while singles solve the grid in at most ``max_rounds`` rounds,
    each step greedily taking the deepest of a few random removals; returns the givens left."""
    givens = sum(1 for v in grid if v)
    while givens > target:
        cells = [i for i in range(81) if grid[i]]
        rnd.shuffle(cells)
        best, best_rounds, tried = -1, -1, 0
        for cell in cells:
            digit, grid[cell] = grid[cell], 0
            rounds = singles_rounds(grid)
            grid[cell] = digit
            if 0 <= rounds <= max_rounds:
                tried += 1
                if rounds > best_rounds:
                    best, best_rounds = cell, rounds
                if tried == GREEDY_TRIES:
                    break
        if best < 0:
            break
        grid[best] = 0
        givens -= 1
    return givens


def _remove_keeping_unique(rnd: random.Random, grid: list[int], target: int) -> int:
    """Remove givens in random order, skipping those whose removal breaks uniqueness; returns givens left."""
    order = list(range(81))
    rnd.shuffle(order)
    givens = 81
    for cell in order:
        if givens <= target:
            break
        digit, grid[cell] = grid[cell], 0
        if _unique_without(grid, cell, digit):
            givens -= 1
        else:
            grid[cell] = digit
    return givens


def make_puzzle(rnd: random.Random, level: int) -> Entry | None:
    """One puzzle of ``level`` from a fresh full grid, or None if it fell outside the level."""
    spec = LEVELS[level]
    solution = random_full_grid(rnd)
    grid = list(solution)
    lo, hi = spec.givens
    target = 0 if spec.minimal else rnd.randint(lo, hi)
    if spec.rounds is not None:
        want_rounds = rnd.randint(*spec.rounds)
        givens = _remove_keeping_singles(rnd, grid, target, want_rounds)
    else:
        givens = _remove_keeping_unique(rnd, grid, target)
    if not lo <= givens <= hi:
        return None
    rounds = singles_rounds(grid)
    if (spec.rounds is not None and rounds != want_rounds) or (spec.minimal and rounds != -1):
        return None
    return Entry(level, givens, rounds, bt_nodes(grid), "".join(str(v) if v else "." for v in grid),
                 "".join(map(str, solution)))


def grid_invariant(solution: str) -> tuple:
    """A value shared by all transforms of a solved grid: per band, the cycle types of the digit
    permutations between its rows (and, for the transpose, the same per stack)."""

    def side(lines: list[str]) -> tuple:
        bands = []
        for band in range(0, 9, 3):
            types = []
            for a, b in ((0, 1), (0, 2), (1, 2)):
                perm = dict(zip(lines[band + a], lines[band + b]))
                seen, lengths = set(), []
                for start in perm:
                    n, x = 0, start
                    while x not in seen:
                        seen.add(x)
                        x = perm[x]
                        n += 1
                    if n:
                        lengths.append(n)
                types.append(tuple(sorted(lengths)))
            bands.append(tuple(sorted(types)))
        return tuple(sorted(bands))

    rows = [solution[r * 9 : r * 9 + 9] for r in range(9)]
    cols = [solution[c::9] for c in range(9)]
    return tuple(sorted((side(rows), side(cols))))


# -- the bank -------------------------------------------------------------------------------
def _arg(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class BankConfig:
    seed: int = _arg(20_251_126, "root seed; the bank is a pure function of it and counts")
    counts: tuple[int, ...] = _arg((2000, 2000, 1000, 1000, 1000), "entries per level 1..5")
    out: str = _arg(str(BANK_PATH), "bank file to write")
    workers: int = _arg(1, "processes (the result does not depend on it)")


def _attempt(job: tuple[int, int, int]) -> Entry | None:
    seed, level, k = job
    state = np.random.SeedSequence([seed, level, k]).generate_state(2, dtype=np.uint64)
    return make_puzzle(random.Random(int(state[0]) << 64 | int(state[1])), level)


def _attempts(pool: Pool | None, seed: int, level: int, batch: int = 256) -> Iterator[Entry | None]:
    """Attempts 0, 1, 2, ... of a level, in order (computed in bounded batches when parallel)."""
    for start in range(0, 10**9, batch):
        jobs = [(seed, level, k) for k in range(start, start + batch)]
        yield from (pool.map(_attempt, jobs, chunksize=8) if pool else map(_attempt, jobs))


def build_bank(cfg: BankConfig) -> tuple[list[Entry], int]:
    """Entries for every level, in order, and how many were dropped as isomorphic to an earlier one.
    Singles levels get equal quotas per rounds value."""
    bank: list[Entry] = []
    dropped = 0
    seen_puzzles: set[str] = set()
    seen_grids: set[tuple] = set()
    pool = Pool(cfg.workers) if cfg.workers > 1 else None
    try:
        for level, count in zip(sorted(LEVELS), cfg.counts):
            spec = LEVELS[level]
            n_values = spec.rounds[1] - spec.rounds[0] + 1 if spec.rounds else 1
            quota = -(-count // n_values)
            taken: dict[int, int] = {}
            got = 0
            for entry in _attempts(pool, cfg.seed, level):
                if got == count:
                    break
                if entry is None or entry.puzzle in seen_puzzles:
                    continue
                bucket = entry.rounds if spec.rounds else 0
                inv = grid_invariant(entry.solution)
                if taken.get(bucket, 0) >= quota:
                    continue
                if inv in seen_grids:
                    dropped += 1
                    continue
                taken[bucket] = taken.get(bucket, 0) + 1
                seen_puzzles.add(entry.puzzle)
                seen_grids.add(inv)
                bank.append(entry)
                got += 1
    finally:
        if pool:
            pool.terminate()
    return bank, dropped


def write_bank(bank: list[Entry], path: str | Path, seed: int) -> None:
    lines = [f"# R3M sudoku bank, seed={seed}; rebuild: python -m envs.families.sudoku_gen --seed {seed}",
             "# level givens rounds bt_nodes puzzle solution"]
    lines += [" ".join(map(str, e)) for e in bank]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def read_bank(path: str | Path = BANK_PATH) -> list[Entry]:
    entries = []
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            level, givens, rounds, nodes, puzzle, solution = line.split()
            entries.append(Entry(int(level), int(givens), int(rounds), int(nodes), puzzle, solution))
    return entries


def summarize(bank: list[Entry]) -> dict:
    out = {}
    for level in sorted({e.level for e in bank}):
        es = [e for e in bank if e.level == level]
        nodes = sorted(e.bt_nodes for e in es)
        out[level] = {
            "entries": len(es),
            "givens": [min(e.givens for e in es), max(e.givens for e in es)],
            "rounds": dict(sorted(Counter(e.rounds for e in es).items())),
            "bt_nodes_median": nodes[len(nodes) // 2],
            "bt_nodes_max": nodes[-1],
        }
    return out


def main(cfg: BankConfig) -> dict:
    start = time.perf_counter()
    bank, dropped = build_bank(cfg)
    write_bank(bank, cfg.out, cfg.seed)
    stats = {"path": cfg.out, "seconds": round(time.perf_counter() - start, 1),
             "isomorphic_dropped": dropped, "levels": summarize(bank)}
    print(stats)
    return stats


def parse_args(argv: list[str] | None = None) -> BankConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    for f in dataclasses.fields(BankConfig):
        kind = {"type": type(f.default)}
        if isinstance(f.default, tuple):
            kind = {"type": int, "nargs": len(f.default)}
        parser.add_argument(f"--{f.name}", default=f.default, help=f.metadata["help"], **kind)
    parsed = vars(parser.parse_args(argv))
    return BankConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in parsed.items()})


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
