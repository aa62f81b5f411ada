"""Sudoku family, bank, verifier and solver tool (the generic env contract is in test_envs.py)."""

from __future__ import annotations

import csv
import hashlib
import random
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from r3m import envs
from r3m import tools
from r3m.envs.families.sudoku import LINE_PERMS, SudokuFamily, digit_table, transform_indices
from r3m.envs.families.sudoku_gen import (
    LEVELS,
    BankConfig,
    bt_nodes,
    build_bank,
    grid_invariant,
    read_bank,
    singles_rounds,
    write_bank,
)
from r3m.tools.sudoku_solver import solve
from r3m.verifiers.sudoku import UNITS, verify, verify_batch

FAMILY = SudokuFamily()
# The external evaluation sets live beside the checkout (../shared/eval, or $R3M_EVAL_DIR).
needs_eval_data = pytest.mark.skipif(not envs.eval_set_path("norvig_top95").exists(),
                                     reason=f"external evaluation sets not found at {envs.eval_dir()} "
                                            "(set R3M_EVAL_DIR)")
BANK = [e for level in FAMILY.bank.values() for e in level]


def _grid(text: str) -> list[int]:
    return [0 if ch in ".0" else int(ch) for ch in text]


def _count(grid: list[int], limit: int = 2) -> int:
    """Independent plain backtracking solution counter (first empty cell with fewest candidates)."""
    empties = [i for i in range(81) if not grid[i]]
    if not empties:
        return 1
    options = {}
    for i in empties:
        used = {grid[j] for u in UNITS if i in u for j in u}
        options[i] = [d for d in range(1, 10) if d not in used]
    cell = min(empties, key=lambda i: len(options[i]))
    found = 0
    for d in options[cell]:
        grid[cell] = d
        found += _count(grid, limit - found)
        grid[cell] = 0
        if found >= limit:
            break
    return found


def _valid_solution(puzzle: str, solution: str) -> bool:
    keeps = all(p in ".0" or p == s for p, s in zip(puzzle, solution))
    return len(solution) == 81 and keeps and all(len({solution[i] for i in u}) == 9 for u in UNITS)


# -- bank ----------------------------------------------------------------------------------
def test_bank_levels_sizes_and_stats():
    for level, spec in LEVELS.items():
        entries = FAMILY.bank[level]
        assert len(entries) >= 500, level
        lo, hi = spec.givens
        assert all(lo <= e.givens <= hi and e.level == level for e in entries)
        if spec.rounds:
            assert {e.rounds for e in entries} == set(range(spec.rounds[0], spec.rounds[1] + 1))
    assert len({e.puzzle for e in BANK}) == len(BANK)
    assert len({grid_invariant(e.solution) for e in BANK}) == len(BANK), "bank entries must be non-isomorphic"
    assert Path(FAMILY.bank_path).stat().st_size < 3_000_000


def test_bank_sample_unique_and_stats_recomputed():
    rng = random.Random(0)
    for level, entries in FAMILY.bank.items():
        for e in rng.sample(entries, 12):
            assert e.givens == sum(ch != "." for ch in e.puzzle)
            assert _valid_solution(e.puzzle, e.solution)
            assert _count(_grid(e.puzzle)) == 1, (level, e.puzzle)
            assert singles_rounds(_grid(e.puzzle)) == e.rounds
            assert bt_nodes(_grid(e.puzzle)) == e.bt_nodes


def test_bank_builder_is_deterministic_and_reproduces_the_committed_bank(tmp_path):
    cfg = BankConfig(counts=(3, 4, 2, 1, 1), out=str(tmp_path / "bank.txt"))  # the committed seed
    bank, _ = build_bank(cfg)
    write_bank(bank, cfg.out, cfg.seed)
    assert read_bank(cfg.out) == bank == build_bank(cfg)[0]
    assert [e.level for e in bank] == [1, 1, 1, 2, 2, 2, 2, 3, 3, 4, 5]
    # each level's first entries (per rounds value where quotas apply) are those of the full build
    assert set(bank) <= set(BANK)
    assert bank[7:9] == FAMILY.bank[3][:2] and bank[9] == FAMILY.bank[4][0] and bank[10] == FAMILY.bank[5][0]


def test_singles_rounds_is_simultaneous():
    # one blank per row: every blank is a naked single in round 1
    solution = FAMILY.bank[1][0].solution
    grid = _grid(solution)
    for r in range(9):
        grid[r * 9 + r] = 0
    assert singles_rounds(grid) == 1 and singles_rounds(_grid(solution)) == 0


def test_forced_cells_are_the_naked_singles():
    solution = FAMILY.bank[1][0].solution
    one_per_row = "".join("." if i % 10 == 0 else ch for i, ch in enumerate(solution))  # cells (r, r)
    inst = FAMILY.from_puzzle(one_per_row, solution)
    assert FAMILY.forced_cells(inst) == {r * 10: solution[r * 10] for r in range(9)}
    assert FAMILY.forced_cells(FAMILY.from_puzzle(solution, solution)) == {}
    for level in (1, 3, 5):
        for i in range(20):
            inst = FAMILY.instance("train", i, level)
            forced = FAMILY.forced_cells(inst)
            assert all(inst.answer[c] == d for c, d in forced.items())  # forced digits are the solution's
            for cell in range(81):  # independent reference: candidates from the row, column and box
                if inst.data["puzzle"][cell] == ".":
                    seen = {inst.data["puzzle"][j] for u in UNITS if cell in u for j in u}
                    left = set("123456789") - seen
                    assert (cell in forced) == (len(left) == 1)


# -- transforms ------------------------------------------------------------------------------
def test_transforms_are_symmetries():
    unit_sets = {frozenset(u) for u in UNITS}
    assert len(set(LINE_PERMS)) == 1296
    rng = random.Random(1)
    for _ in range(50):
        idx = transform_indices(rng.randrange(1296), rng.randrange(1296), rng.random() < 0.5)
        assert sorted(idx) == list(range(81))
        assert {frozenset(idx[i] for i in u) for u in UNITS} == unit_sets
    table = digit_table(362879)
    assert "123456789".translate(table) == "987654321" and ".".translate(table) == "."


def test_instances_keep_validity_and_uniqueness():
    for level in FAMILY.levels:
        for i in range(6):
            inst = FAMILY.instance("train", i, level, seed=5)
            puzzle = inst.data["puzzle"]
            assert inst.prompt == "sudoku:" + puzzle and len(inst.prompt) == FAMILY.max_prompt_chars
            assert inst.answer == inst.data["solution"] and _valid_solution(puzzle, inst.answer)
            assert _count(_grid(puzzle)) == 1
            bank_entry = FAMILY.bank[level][int(inst.key.rsplit(":", 1)[1])]
            assert inst.data["givens"] == bank_entry.givens == 81 - puzzle.count(".")
            assert inst.data["rounds"] == singles_rounds(_grid(puzzle)) == bank_entry.rounds


def test_determinism_and_disjoint_splits():
    a = [FAMILY.instance("test", i, 3, seed=2) for i in range(30)]
    assert a == [FAMILY.instance("test", i, 3, seed=2) for i in range(30)]
    assert len({x.prompt for x in a}) == 30
    for level in FAMILY.levels:
        train = [FAMILY.instance("train", i, level) for i in range(150)]
        test = [FAMILY.instance("test", i, level) for i in range(150)]
        digest = lambda inst: hashlib.sha256(inst.prompt.encode()).hexdigest()  # noqa: E731
        assert {digest(x) for x in train}.isdisjoint(digest(x) for x in test)
        assert {x.key for x in train}.isdisjoint(x.key for x in test)
        assert all(envs.split_of(x.key) == "test" for x in test)
        assert len({x.key for x in test}) > 50  # test draws spread over the test part of the bank


def test_expert_and_garbage_through_env():
    env = gym.make("sudoku-v0").unwrapped
    for level in FAMILY.levels:
        for i in range(200):
            opts = {"difficulty": level, "index": i, "split": ("train", "test")[i % 2]}
            for use_tools in (False, True) if i < 40 else (False,):
                env.reset(options=opts)
                actions = env.expert_actions(use_tools)
                assert len(actions) == (2 if use_tools else 1)
                for action in actions:
                    _, reward, terminated, _, info = env.step(action)
                assert terminated and reward == 1.0 and info["correct"]
            env.reset(options=opts)
            wrong = list(env.expert_actions(False)[0])
            puzzle = env.family.instance(opts["split"], i, level).data["puzzle"]
            blanks = [k for k, ch in enumerate(puzzle) if ch == "."]
            wrong[blanks[0]], wrong[blanks[1]] = wrong[blanks[1]], wrong[blanks[0]]
            if wrong[blanks[0]] == wrong[blanks[1]]:
                wrong[blanks[0]] = str(int(wrong[blanks[0]]) % 9 + 1)
            _, reward, terminated, _, info = env.step("".join(wrong))
            assert terminated and reward == 0.0 and not info["correct"]


def test_partial_credit_env():
    env = gym.make("sudoku-v0", partial_credit=True).unwrapped
    obs, _ = env.reset(options={"difficulty": 2, "index": 0})
    answer = env.expert_actions(False)[0]
    puzzle = obs[len("sudoku:"):]
    k = puzzle.index(".")
    bad = answer[:k] + str(int(answer[k]) % 9 + 1) + answer[k + 1:]
    _, reward, _, _, info = env.step(bad)
    assert reward == pytest.approx(24 / 27) and not info["correct"]


# -- verifier ------------------------------------------------------------------------------
def test_verify_cases():
    e = FAMILY.bank[3][0]
    p, s = e.puzzle, e.solution
    assert verify(p, s).correct and verify(p.replace(".", "0"), s).correct
    assert verify(p, "\n".join(s[r * 9 : r * 9 + 9] for r in range(9))).correct
    given = next(k for k, ch in enumerate(p) if ch != ".")
    changed = s[:given] + str(int(s[given]) % 9 + 1) + s[given + 1 :]
    v = verify(p, changed)
    assert not v.correct and v.score == 0 and "given" in v.reason
    blank = p.index(".")
    other = s[:blank] + str(int(s[blank]) % 9 + 1) + s[blank + 1 :]
    v = verify(p, other)
    assert not v.correct and v.score == pytest.approx(24 / 27)
    for bad in ["", s[:80], s + "1", s[:80] + "0", s[:80] + "x", s[:80] + "\u0661", "garbage"]:
        v = verify(p, bad)
        assert not v.correct and v.score == 0, bad
    assert not verify(p[:80], s).correct and "bad puzzle" in verify("x" * 81, s).reason
    assert verify(None, s).score == 0 and verify(p, None).score == 0  # type: ignore[arg-type]


def test_verify_batch_agrees_with_verify():
    rng = np.random.default_rng(0)
    entries = [BANK[k] for k in rng.choice(len(BANK), 300, replace=False)]
    puzzles = np.array([_grid(e.puzzle) for e in entries], np.uint8)
    answers = np.array([_grid(e.solution) for e in entries], np.uint8)
    kinds = rng.integers(0, 5, len(entries))
    for n, kind in enumerate(kinds):
        if kind == 1:  # swap two cells
            i, j = rng.choice(81, 2, replace=False)
            answers[n, [i, j]] = answers[n, [j, i]]
        elif kind == 2:  # random digit somewhere
            answers[n, rng.integers(81)] = rng.integers(0, 10)
        elif kind == 3:  # random grid
            answers[n] = rng.integers(1, 10, 81)
        elif kind == 4:  # a valid grid from another puzzle (changes givens)
            answers[n] = _grid(entries[(n + 1) % len(entries)].solution)
    batch = verify_batch(puzzles, answers)
    single = [verify("".join(map(str, p)), "".join(map(str, a))).correct for p, a in zip(puzzles, answers)]
    assert batch.tolist() == single
    assert 50 < sum(single) < 250
    with pytest.raises(ValueError):
        verify_batch(puzzles[:, :80], answers[:, :80])


# -- solver tool -------------------------------------------------------------------------------
@needs_eval_data
def test_solver_on_norvig_top95():
    with open(envs.eval_set_path("norvig_top95")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 95
    for row in rows:
        result = solve(row["puzzle"], 200_000)
        assert result.ok and result.output == row["solution"], row["puzzle"]
        assert 0 < result.cost <= 200_000 and verify(row["puzzle"], result.output).correct


def test_solver_errors_and_budget():
    p = FAMILY.bank[5][0].puzzle
    spaced = " ".join(p[r * 9 : r * 9 + 9] for r in range(9))
    assert solve(spaced, 10**6).output == FAMILY.bank[5][0].solution
    assert tools.call("sudoku_solver", p.replace(".", "0")).output == FAMILY.bank[5][0].solution
    for bad, msg in [(p[:80], "81 cells"), (p[:80] + "x", "digits"), ("", "81 cells"),
                     ("11" + "." * 79, "conflicting givens in row 1"),
                     ("1" + "." * 8 + "1" + "." * 71, "conflicting givens in column 1")]:
        r = solve(bad, 10**6)
        assert not r.ok and msg in r.error, (bad, r.error)
    # no two givens conflict, but the top-left cell has no candidate: unsatisfiable
    unsat = "." + "23456789" + "1" + "." * 71
    r = solve(unsat, 10**6)
    assert not r.ok and "no solution" in r.error
    # change one given of a unique puzzle: the solver must agree with the independent counter
    e = FAMILY.bank[4][0]
    k = next(k for k, ch in enumerate(e.puzzle) if ch != ".")
    for d in sorted(set("123456789") - {e.puzzle[k]}):
        broken = e.puzzle[:k] + d + e.puzzle[k + 1 :]
        r = solve(broken, 10**6)
        assert r.ok == (_count(_grid(broken), 1) == 1), (broken, r.error)
        if r.ok:
            assert _valid_solution(broken, r.output)
        else:
            assert "no solution" in r.error or "conflicting" in r.error
    assert _search_exhausted_case(FAMILY.bank[5][:5])
    r = solve(FAMILY.bank[5][1].puzzle, 3)
    assert not r.ok and r.error.startswith("budget exceeded") and r.cost == 3
    assert solve("." * 81, 10**6).ok  # the empty grid has solutions too
    assert solve(FAMILY.bank[1][0].solution, 10).output == FAMILY.bank[1][0].solution


_GRIDS = st.lists(st.sampled_from("123456789" + "." * 40), min_size=81, max_size=81).map("".join)


@settings(max_examples=150, deadline=None)
@given(st.one_of(_GRIDS, st.text(max_size=120), st.text(alphabet="0123456789. \n", max_size=100)))
def test_solver_fuzz(args):
    r = solve(args, 20_000)
    assert 0 <= r.cost <= 20_000
    if r.ok:
        assert _valid_solution("".join(args.split()), r.output)
    else:
        assert r.error and not r.output


@settings(max_examples=300, deadline=None)
@given(st.one_of(_GRIDS, st.text(max_size=100)), st.text(max_size=200))
def test_verify_fuzz(puzzle, answer):
    v = verify(puzzle, answer)
    assert 0.0 <= v.score <= 1.0 and (not v.correct or v.score == 1.0) and isinstance(v.reason, str)


def _search_exhausted_case(entries) -> bool:
    """Find a changed-given puzzle that only search proves unsatisfiable; check it with the counter."""
    for e in entries:
        for k in (k for k, ch in enumerate(e.puzzle) if ch != "."):
            for d in "123456789":
                broken = e.puzzle[:k] + d + e.puzzle[k + 1 :]
                r = solve(broken, 10**6)
                if not r.ok and "search exhausted" in r.error:
                    assert r.cost > 0 and _count(_grid(broken), 1) == 0
                    return True
    return False
