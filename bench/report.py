"""Regenerate the README's results section from the result files (nothing typed by hand).

    python bench/report.py            # rewrite README.md between the results markers
    python bench/report.py --check    # exit 1 if README.md is out of date

Sources: ``results/<run>/metrics.json`` (with the command that made it in ``command.txt``) for
training runs, and ``bench/results/*.json`` for benchmarks. A missing file is reported as such.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- results:start (python bench/report.py) -->", "<!-- results:end -->"


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def command(run: str) -> str:
    path = ROOT / "results" / run / "command.txt"
    return path.read_text().strip() if path.exists() else "(command.txt missing)"


def pct(x) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}%"


def imitate_section(run: str, title: str) -> list[str]:
    m = load(ROOT / "results" / run / "metrics.json")
    if m is None:
        return [f"### {title}", "", f"_results/{run}/metrics.json is missing: run the command below._", "",
                "```", command(run), "```", ""]
    out = [f"### {title}", "", "```", command(run), "```", ""]
    curve = m.get("accuracy_vs_k", {})
    if curve:
        ks = sorted({int(k) for c in curve.values() for k in c})
        intro = "Exact accuracy on the test split (verifier), by refinement steps K"
        dense_params = m.get("baseline", {}).get("params")
        if isinstance(dense_params, int) and isinstance(m.get("params"), int):
            intro += (f"; the dense baseline has the same parameter count ({dense_params:,} vs {m['params']:,}) "
                      "and the same training batches")
        elif not m["config"].get("baseline", True):
            intro += " (run without the dense baseline)"
        out += [intro + ".", "",
                "| family | levels | " + " | ".join(f"K={k}" for k in ks) + " | dense |",
                "|---|---|" + "---|" * (len(ks) + 1)]
        levels = m["config"]["levels"]
        for fam, c in curve.items():
            base = m.get("baseline_accuracy", {}).get(fam)
            out.append(f"| {fam} | {','.join(map(str, levels))} (trained) | "
                       + " | ".join(pct(c[str(k)]) for k in ks) + f" | {pct(base)} |")
        for fam, c in m.get("accuracy_vs_k_harder", {}).items():
            base = m.get("baseline_accuracy_harder", {}).get(fam)
            out.append(f"| {fam} | next level (untrained) | " + " | ".join(pct(c[str(k)]) for k in ks)
                       + f" | {pct(base)} |")
        out.append("")
    if m.get("halting"):
        out += ["Adaptive halting (stage 2, PonderNet), against the same model at fixed K:", "",
                "| family | halting accuracy | avg steps | fixed K | fixed-K accuracy | steps by level |",
                "|---|---|---|---|---|---|"]
        for fam, h in m["halting"].items():
            by = ", ".join(f"L{lv}: {s:.2f}" for lv, s in h["steps_by_level"].items())
            out.append(f"| {fam} | {pct(h['accuracy'])} | {h['avg_steps']:.2f} ({pct(h['steps_fraction'])} of K) | "
                       f"{h['fixed_k']} | {pct(h['fixed_k_accuracy'])} | {by} |")
        out.append("")
    if m.get("stage0"):
        s0, g = m["stage0"], m["stage0"]["generation"]
        out += ["| stage 0 (dense LM) | params | final loss | immediate EOS | distinct-1 | distinct-2 | "
                "longest repeat run | non-degenerate | instruct accuracy |", "|---|---|---|---|---|---|---|---|---|",
                f"| completions of {len(s0['samples'])} prompts | {s0['params']:,} | {s0['final_loss']:.3f} | "
                f"{pct(g['immediate_eos_rate'])} | {g['distinct_1']:.3f} | {g['distinct_2']:.3f} | "
                f"{g['longest_repeat_run']} | {s0['non_degenerate']} | {pct(s0['instruct_accuracy'])} |", ""]
        out += ["Samples (prompt -> completion):", "", "```"]
        out += [f"{s['prompt']!r} -> {s['completion'][:70]!r}" for s in s0["samples"][:6]]
        out += ["```", ""]
    fit = m.get("fit", {})
    if fit:
        out.append("Wall time per phase: " + ", ".join(f"{k} {v['seconds']:.0f} s ({v['steps']} steps)"
                                                     for k, v in fit.items())
                   + f"; device: {m.get('device', '?')}.")
    warnings = m.get("warnings", [])
    out.append("Warnings raised by the run: " + ("none." if not warnings else
                                                 "; ".join(f"`{w['name']}`: {w['message']}" for w in warnings)))
    return out + [""]


def rl_section(run: str, title: str) -> list[str]:
    m = load(ROOT / "results" / run / "metrics.json")
    head = [f"### {title}", "", "```", command(run), "```", ""]
    if m is None:
        return head + [f"_results/{run}/metrics.json is missing: run the command above._", ""]
    out = head + ["| measure | value |", "|---|---|"]
    rows = [("reward (sampled) at start -> end", f"{m.get('reward_start', 0):.3f} -> {m.get('reward_end', 0):.3f}")]
    for k, v in (m.get("success") or {}).items():
        rows.append((f"success {k}", _fmt_success(v)))
    rows += [("tool precision", _num(m.get("tool_precision"))), ("tool recall", _num(m.get("tool_recall")))]
    for fam, d in (m.get("distill") or {}).items():
        lv = ",".join(map(str, d.get("levels", [])))
        rows.append((f"distillation, tool-free accuracy on {fam} (level {lv})",
                     f"{pct(d.get('before'))} -> {pct(d.get('after'))} ({d.get('examples', 0)} verified tool answers)"))
        b, a = d.get("before_detail") or {}, d.get("after_detail") or {}
        if "single_cell_accuracy" in a:
            rows.append(("distillation, naked-single cells filled right without a tool",
                         f"{pct(b.get('single_cell_accuracy'))} -> {pct(a.get('single_cell_accuracy'))}"))
        if "with_tools" in a:
            rows.append((f"distilled copy, success with tools (level {lv})",
                         f"{pct(b.get('with_tools'))} -> {pct(a.get('with_tools'))}"))
        if "unnecessary_calls" in a:
            rows.append(("calls made before distillation that the copy now answers right without the tool",
                         f"{pct(b.get('unnecessary_calls'))} -> {pct(a.get('unnecessary_calls'))}"))
        if d.get("with_tools_other_levels"):
            o = d["with_tools_other_levels"]
            rows.append(("distilled copy, success with tools on the other levels",
                         f"{pct(o.get('before'))} -> {pct(o.get('after'))}"))
    for name, v in (m.get("baselines") or {}).items():
        rows.append((f"baseline: {name}", _fmt_success(v)))
    out += [f"| {a} | {b} |" for a, b in rows]
    if m.get("wall_seconds") is not None:
        out += ["", f"Wall time: {m['wall_seconds']:.0f} s on {m.get('device', '?')}."]
    return out + [""]


def _num(x) -> str:
    return "-" if x is None else f"{float(x):.3f}"


def _fmt_success(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {pct(x) if isinstance(x, (int, float)) else x}" for k, x in v.items())
    return pct(v) if isinstance(v, (int, float)) else str(v)


def bench_section() -> list[str]:
    out = ["### Benchmarks", ""]
    envs_b = load(ROOT / "bench/results/envs.json")
    if envs_b:
        out += ["Single-answer episodes per second, one core (`python bench/bench_envs.py`):", "",
                "| env | episodes/s |", "|---|---|"]
        out += [f"| {r['env']} | {r['episodes_per_s']:,.0f} |" for r in envs_b["rows"]] + [""]
    sud = load(ROOT / "bench/results/sudoku.json")
    if sud:
        ep, ver, gen = sud["episodes"], sud["verifier"], sud["generation"]
        out += ["Sudoku (`python bench/bench_sudoku.py`): "
                f"sudoku-v0 {ep['sudoku_v0_train_episodes_per_s']:,.0f} episodes/s (train split), "
                f"{ep['sudoku_v0_test_episodes_per_s']:,.0f} (test split); verifier "
                f"{ver['verify_batch_grids_per_s']:,.0f} grids/s batched; generation "
                f"{gen['generate_level1_per_s']:,.0f} puzzles/s.", "",
                "| solver set | puzzles | solved and verified | median ms | p99 ms | budget exceeded |",
                "|---|---|---|---|---|---|"]
        for name, s in sud["solver"].items():
            out.append(f"| {name} | {s['puzzles']} | {pct(s['success_rate'])} | {s['median_ms']:.1f} | "
                       f"{s['p99_ms']:.1f} | {s['budget_exceeded']} |")
        out.append("")
    dsl = load(ROOT / "bench/results/dsl.json")
    if dsl:
        out += ["`dsl_search` on List Function 250 (search on 5 examples, check on the other 6; "
                "`python bench/bench_dsl.py`):", "", "| reading | solved on search examples | also right on held-out | "
                "budget exceeded |", "|---|---|---|---|"]
        for mode, r in dsl["modes"].items():
            out.append(f"| {mode} | {r['solved_search']}/{r['concepts']} | {r['generalized_held_out']}/{r['concepts']} | "
                       f"{r['budget_exceeded']} |")
        out.append("")
    for dev in ("cpu", "cuda", "cuda_compile"):
        mb = load(ROOT / f"bench/results/model_{dev}.json")
        if not mb:
            continue
        out += [f"Model forward+backward on {mb['device']} (batch {mb['batch']} x {mb['seq']} tokens; "
                f"`python bench/bench_model.py{' --device cuda' if dev != 'cpu' else ' --quick --threads 1'}"
                f"{' --compile' if dev == 'cuda_compile' else ''}`):", "",
                "| preset | model | params | K | ms / step | tokens/s | time vs K=1 | peak MB |",
                "|---|---|---|---|---|---|---|---|"]
        for r in mb["results"]:
            ratio = "" if r.get("ratio_to_k1") is None else f"{r['ratio_to_k1']:.2f}"
            out.append(f"| {r['preset']} | {r['model']} | {r['params']:,} | {r['K'] if r['K'] is not None else '-'} | "
                       f"{r['ms_per_iter']:.1f} | {r['tokens_per_s']:,.0f} | {ratio} | {r['peak_mem_mb']:.0f} |")
        out.append("")
    return out


def render() -> str:
    parts = ["## Results", "",
             "Every number below is read from a file that the command beside it writes; "
             "`python bench/report.py` rebuilds this section.", ""]
    parts += imitate_section("imitate-default-cpu", "Imitation, default run (CPU): `python train/imitate.py`")
    for seed in (1, 2):
        parts += imitate_section(f"imitate-seed{seed}-cpu", f"The same stage 1 with seed {seed} (CPU)")
    for lr in ("2e-3", "3e-3"):  # what was tried for the seed that does not learn at the default rate
        parts += imitate_section(f"imitate-seed1-lr{lr}-cpu", f"Seed 1 at learning rate {lr} (CPU)")
    parts += imitate_section("imitate-gpu-sudoku-h200", "Imitation on Sudoku, one GPU (H200)")
    parts += imitate_section("imitate-stage0-cpu", "Stage 0: dense language model (CPU)")
    parts += rl_section("rl-sudoku-cpu", "Stage 3 on Sudoku (CPU): `python train/rl_verify.py --env sudoku-v0`")
    parts += rl_section("rl-arithmetic-cpu", "Stage 3 on arithmetic, distillation (CPU)")
    parts += bench_section()
    return "\n".join(parts).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md is out of date")
    args = parser.parse_args()
    text = README.read_text()
    if START not in text or END not in text:
        sys.exit(f"README.md lacks the markers {START!r} ... {END!r}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render()}{END}{tail}"
    if args.check:
        sys.exit(0 if new == text else "README.md results are out of date: run python bench/report.py")
    README.write_text(new)
    print("README.md results section rewritten")


if __name__ == "__main__":
    main()
