"""Sudoku throughput and solver latency: generation, sudoku-v0 episodes, verifier, solver tool.

Measured on one core (one process, pure Python plus single-threaded numpy):
- generation: ``SudokuFamily.generate`` calls/s and ``instance(split, index)`` calls/s (the latter
  seeds a generator per instance and redraws until the key is in the split);
- ``sudoku-v0`` episodes/s through ``gymnasium.make``: ``reset()`` + ``step(expert answer)``;
- ``sudoku-grid-v0`` episodes/s filling the board with the expert's moves (mask checked each step);
- verifier: ``verify_batch`` grids/s on [N, 81] arrays and ``verify()`` calls/s;
- ``sudoku_solver`` (registered budget) on ../shared/eval/sudoku: median and p99 latency, success
  (output equals the file's solution and passes the verifier), budget exhaustions. Evaluation
  only: these sets are never used to generate or tune anything.

    python bench/bench_sudoku.py           # full run (a few minutes)
    python bench/bench_sudoku.py --quick   # smoke run: short timings, 30 puzzles per set
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402

from r3m import envs  # noqa: E402
from r3m import tools  # noqa: E402
from r3m.verifiers.sudoku import verify, verify_batch  # noqa: E402
from r3m.learn.cli import parse_config  # noqa: E402
from r3m.envs import eval_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETS = ("norvig_top95", "norvig_hardest", "magictour_top1465", "royle_sudoku17")


@dataclass(frozen=True)
class Args:
    """Sudoku throughput on one core (puzzle generation, sudoku-v0 and sudoku-grid-v0 episodes, the
    verifier) and the solver tool's latency and success on the external Sudoku collections; writes
    bench/results/sudoku.json."""

    eval_dir: str = ""
    """folder with the evaluation CSVs (empty: sudoku/ in $R3M_EVAL_DIR or ../shared/eval)"""
    out: str = ""
    """where the results JSON goes (empty: bench/results/sudoku.json, or bench/results/quick/sudoku.json
    with --quick, which the README's results never read)"""
    seconds: float = 3.0
    """wall time per throughput measurement"""
    royle_sample: int = 2000
    """puzzles sampled (seed 0) from royle_sudoku17"""
    limit: int = 0
    """puzzles per eval set (0 = all)"""
    batch: int = 100_000
    """grids per verify_batch call"""
    quick: bool = False
    """smoke run: 0.5 s timings, 30 puzzles per set, 10k-grid batches"""


def parse_args(argv: list[str] | None = None) -> Args:
    args = parse_config(Args, argv)
    if args.quick:
        args = dataclasses.replace(args, seconds=0.5, limit=args.limit or 30, batch=10_000)
    return args


def rate(fn, seconds: float) -> float:
    """Calls of ``fn(i)`` per second over about ``seconds`` (after a short warm-up)."""
    for i in range(20):
        fn(i)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            fn(n)
            n += 1
    return n / (time.perf_counter() - start)


def bench_generation(seconds: float) -> dict:
    fam = envs.make_family("sudoku")
    rng = np.random.default_rng(0)
    out = {}
    for lv in fam.levels:
        out[f"generate_level{lv}_per_s"] = rate(lambda i, lv=lv: fam.generate(rng, lv), seconds / 2)
    out["instance_train_per_s"] = rate(lambda i: fam.instance("train", i), seconds)
    out["instance_test_per_s"] = rate(lambda i: fam.instance("test", i), seconds)
    return out


def bench_episodes(seconds: float) -> dict:
    out = {}
    for split in ("train", "test"):
        env = gym.make("sudoku-v0", split=split)
        env.reset(seed=0)

        def episode(i: int) -> None:
            env.reset()
            _, reward, *_ = env.step(env.unwrapped.expert_actions(False)[0])
            assert reward == 1.0

        out[f"sudoku_v0_{split}_episodes_per_s"] = rate(episode, seconds)
    grid = gym.make("sudoku-grid-v0")
    grid.reset(seed=0)

    def grid_episode(i: int) -> None:
        grid.reset()
        reward = 0.0
        for action in grid.unwrapped.expert_actions():
            _, reward, *_ = grid.step(action)
        assert reward == 1.0

    out["sudoku_grid_v0_expert_episodes_per_s"] = rate(grid_episode, seconds / 2)
    return out


def bench_verifier(seconds: float, batch: int) -> dict:
    fam = envs.make_family("sudoku")
    insts = [fam.instance("train", i, 1 + i % 5) for i in range(1000)]
    to_row = lambda s: [0 if ch == "." else int(ch) for ch in s]  # noqa: E731
    reps = -(-batch // len(insts))
    puzzles = np.array([to_row(x.data["puzzle"]) for x in insts] * reps, np.uint8)[:batch]
    answers = np.array([to_row(x.answer) for x in insts] * reps, np.uint8)[:batch]
    answers[::2, 0] = answers[::2, 0] % 9 + 1  # half the grids are wrong
    assert verify_batch(puzzles, answers).sum() == batch // 2
    batch_rate = rate(lambda i: verify_batch(puzzles, answers), seconds) * batch
    pairs = [(x.data["puzzle"], x.answer) for x in insts]
    single_rate = rate(lambda i: verify(*pairs[i % len(pairs)]), seconds)
    return {"verify_batch_grids_per_s": batch_rate, "verify_calls_per_s": single_rate, "batch": batch}


def load_set(path: Path, sample: int, limit: int) -> list[dict]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if sample and len(rows) > sample:
        rows = random.Random(0).sample(rows, sample)
    return rows[:limit] if limit else rows


def bench_solver(rows: list[dict]) -> dict:
    times, checks, ok, exhausted, errors = [], [], 0, 0, []
    for row in rows:
        start = time.perf_counter()
        res = tools.call("sudoku_solver", row["puzzle"])
        times.append(time.perf_counter() - start)
        checks.append(res.cost)
        if res.ok and res.output == row["solution"] and verify(row["puzzle"], res.output).correct:
            ok += 1
        elif res.error and res.error.startswith("budget exceeded"):
            exhausted += 1
        else:
            errors.append(res.error)
    ms = sorted(t * 1000 for t in times)
    return {
        "puzzles": len(rows), "solved": ok, "success_rate": ok / len(rows), "budget_exceeded": exhausted,
        "other_failures": len(errors), "median_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))], "max_ms": ms[-1],
        "median_checks": statistics.median(checks), "max_checks": max(checks),
    }


def main(args: Args) -> dict:
    results: dict = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "processor": platform.processor()},
        "quick": args.quick, "solver_budget_checks": tools.spec("sudoku_solver").budget,
    }
    results["generation"] = bench_generation(args.seconds)
    results["episodes"] = bench_episodes(args.seconds)
    results["verifier"] = bench_verifier(args.seconds, args.batch)
    results["solver"] = {}
    for name in SETS:
        sample = args.royle_sample if name == "royle_sudoku17" else 0
        rows = load_set(Path(args.eval_dir or eval_dir() / "sudoku") / f"{name}.csv", sample, args.limit)
        results["solver"][name] = bench_solver(rows)
        print(f"{name}: {results['solver'][name]}", file=sys.stderr)
    out = Path(args.out or ROOT / "bench/results" / ("quick" if args.quick else "") / "sudoku.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return results


def markdown(r: dict) -> str:
    g, e, v = r["generation"], r["episodes"], r["verifier"]
    lines = ["| measure (one core) | value |", "|---|---|"]
    lines += [f"| generate() level {k[14]} | {g[k]:,.0f} /s |" for k in g if k.startswith("generate_level")]
    lines += [f"| instance() train / test | {g['instance_train_per_s']:,.0f}"
              f" / {g['instance_test_per_s']:,.0f} /s |",
              f"| sudoku-v0 episodes, train / test (target 5,000) |"
              f" {e['sudoku_v0_train_episodes_per_s']:,.0f} / {e['sudoku_v0_test_episodes_per_s']:,.0f} /s |",
              f"| sudoku-grid-v0 expert episodes | {e['sudoku_grid_v0_expert_episodes_per_s']:,.0f} /s |",
              f"| verify_batch (target 100,000) | {v['verify_batch_grids_per_s']:,.0f} grids/s |",
              f"| verify() | {v['verify_calls_per_s']:,.0f} calls/s |", "",
              "| solver set | puzzles | success | budget exceeded | median ms | p99 ms | max ms"
              " | median checks |",
              "|---|---|---|---|---|---|---|---|"]
    for name, s in r["solver"].items():
        lines.append(f"| {name} | {s['puzzles']} | {s['success_rate']:.1%} | {s['budget_exceeded']} | "
                     f"{s['median_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} |"
                     f" {s['median_checks']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
