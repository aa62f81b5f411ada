"""Coverage of ``dsl_search`` on List Function 250 (Rule 2020), evaluation only.

For each concept (indexed by its line number in the file: the ``id`` field repeats) the
search runs on the first 5 input/output examples with the tool's node budget; a program
found there is then run on the other 6. Reported: concepts solved on the 5 search examples,
concepts whose program also reproduces all 6 held-out ones, nodes and latency. Their DSL is
not ours (it has conditionals, indexing, list construction), so coverage is expected to be
low; it is reported as measured, and the file is never used to design or tune the DSL.

Two readings of an output: ``strict`` compares lists as given; ``singleton`` (decided from
the README alone: every output there is a list, so an integer result appears as ``[v]``)
additionally lets an integer-valued program answer ``[v]`` when every search output is a
one-element list.

    python bench/bench_dsl.py            # all 250 concepts (a few minutes on one core)
    python bench/bench_dsl.py --quick    # first 25 concepts, 20k-node budget
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3m import tools  # noqa: E402
from r3m.tools.dsl_search import synthesize  # noqa: E402
from r3m.verifiers.dsl import DslError, format_examples, parse_examples, parse_program, run  # noqa: E402
from r3m.learn.cli import parse_config  # noqa: E402
from r3m.envs import eval_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Args:
    """Coverage of the dsl_search tool on List Function 250 (evaluation only): concepts whose program it
    finds on 5 examples, and how many of those also reproduce the 6 held-out ones; writes
    bench/results/dsl.json."""

    data: str = ""
    """the List Function 250 file (JSON lines, 11 examples per concept; empty: list_functions/ in the
    evaluation-data folder, $R3M_EVAL_DIR or ../shared/eval)"""
    out: str = ""
    """where the results JSON goes (empty: bench/results/dsl.json, or bench/results/quick/dsl.json
    with --quick, which the README's results never read)"""
    budget: int = 0
    """search nodes per concept; 0 = the registered dsl_search budget"""
    max_len: int = 5
    """longest program searched"""
    n_search: int = 5
    """examples given to the search; the rest are held out"""
    limit: int = 0
    """concepts to run, from the first line (0 = all)"""
    per_level: int = 20
    """dsl-family test instances per level for the second table (0 = skip)"""
    quick: bool = False
    """smoke run: 25 concepts, 20k-node budget, 5 instances per level"""


def parse_args(argv: list[str] | None = None) -> Args:
    args = parse_config(Args, argv)
    if args.quick:
        args = dataclasses.replace(args, limit=args.limit or 25, budget=args.budget or 20_000,
                                   per_level=min(args.per_level, 5))
    return args


def _matches(program: str, pairs, singleton: bool) -> bool:
    ops = parse_program(program)
    for x, y in pairs:
        try:
            out = run(ops, x)
        except DslError:
            return False
        want = y if isinstance(y, int) else tuple(y)
        if out != want and not (singleton and isinstance(out, int) and want == (out,)):
            return False
    return True


def _search(pairs, held, budget: int, max_len: int, singleton: bool) -> dict:
    start = time.perf_counter()
    try:  # through the tool's own parser, so its size caps apply here too
        pairs = parse_examples(format_examples(pairs))
    except DslError as exc:
        return {"program": None, "nodes": 0, "seconds": 0.0, "error": f"malformed examples: {exc}",
                "solved": False, "generalized": False}
    res = synthesize(pairs, budget, max_len)
    return {
        "program": res.program, "nodes": res.nodes, "seconds": round(time.perf_counter() - start, 4),
        "error": res.error, "solved": res.program is not None,
        "generalized": res.program is not None and _matches(res.program, held, singleton),
    }


def solve_concept(examples: list[dict], budget: int, max_len: int, n_search: int) -> dict[str, dict]:
    """The concept's ``strict`` and ``singleton`` rows (the latter adds an integer search)."""
    search = [(tuple(e["i"]), tuple(e["o"])) for e in examples[:n_search]]
    held = [(tuple(e["i"]), tuple(e["o"])) for e in examples[n_search:]]
    strict = _search(search, held, budget, max_len, singleton=False)
    if strict["solved"] or not all(len(y) == 1 for _, y in search):
        return {"strict": strict, "singleton": strict}
    extra = _search([(x, y[0]) for x, y in search], held, budget, max_len, singleton=True)
    extra["nodes"] += strict["nodes"]
    extra["seconds"] = round(extra["seconds"] + strict["seconds"], 4)
    return {"strict": strict, "singleton": extra}


def summarize(rows: list[dict]) -> dict:
    ms = [r["seconds"] * 1000 for r in rows]
    return {
        "concepts": len(rows),
        "solved_search": sum(r["solved"] for r in rows),
        "generalized_held_out": sum(r["generalized"] for r in rows),
        "budget_exceeded": sum(bool(r["error"]) and "budget" in r["error"] for r in rows),
        "too_large": sum(bool(r["error"]) and "too large" in r["error"] for r in rows),
        "median_nodes": statistics.median(r["nodes"] for r in rows),
        "median_ms": round(statistics.median(ms), 2),
        "p90_ms": round(sorted(ms)[int(0.9 * (len(ms) - 1))], 2),
        "max_ms": round(max(ms), 2),
    }


def own_levels(per_level: int, budget: int) -> dict[int, dict]:
    """The search on the dsl family's own test instances: how far the tool reaches by level."""
    from r3m import envs

    fam = envs.make_family("dsl")
    table = {}
    for level in fam.levels:
        rows = []
        for i in range(per_level):
            inst = fam.instance("test", i, level)
            row = _search(list(inst.data["shown"]), list(inst.data["held_out"]), budget, 5, singleton=False)
            rows.append(row)
        table[level] = summarize(rows)
    return table


def main(args: Args) -> dict:
    budget = args.budget or tools.spec("dsl_search").budget
    lines = Path(args.data or eval_dir() / "list_functions" / "list_function_250.jsonl").read_text().splitlines()
    concepts = [json.loads(line) for line in lines if line.strip()]
    if args.limit:
        concepts = concepts[: args.limit]
    results = {"args": {**dataclasses.asdict(args), "budget": budget}, "modes": {}, "concepts": {}}
    for line_no, c in enumerate(concepts, 1):
        results["concepts"][line_no] = solve_concept(c["examples"], budget, args.max_len, args.n_search)
    for mode in ("strict", "singleton"):
        results["modes"][mode] = summarize([rows[mode] for rows in results["concepts"].values()])
    if args.per_level:
        results["own_levels"] = own_levels(args.per_level, budget)
    out = Path(args.out or ROOT / "bench/results" / ("quick" if args.quick else "") / "dsl.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"dsl_search on List Function 250 ({len(concepts)} concepts, budget {budget} nodes, "
          f"max length {args.max_len}, search on {args.n_search} examples)\n")
    print("| mode | concepts | solved on search examples | generalized to held-out | budget exceeded "
          "| examples too large | median nodes | median ms | p90 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    keys = ("concepts", "solved_search", "generalized_held_out", "budget_exceeded", "too_large",
            "median_nodes", "median_ms", "p90_ms", "max_ms")
    for mode, summary in results["modes"].items():
        print(f"| {mode} | " + " | ".join(str(summary[k]) for k in keys) + " |")
    if args.per_level:
        print(f"\ndsl_search on the dsl family's own test instances ({args.per_level} per level, same budget)\n")
        print("| level | instances | solved on shown examples | generalized to held-out | budget exceeded "
              "| median nodes | median ms | p90 ms | max ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        for level, summary in results["own_levels"].items():
            print(f"| {level} | " + " | ".join(str(summary[k]) for k in keys if k != "too_large") + " |")
    return results


if __name__ == "__main__":
    main(parse_args())
