"""Regenerate the README's results section and its Commands table from the result files (nothing
typed by hand).

    python bench/report.py            # rewrite README.md between the results and the commands markers
    python bench/report.py --check    # exit 1 if README.md is out of date or a result is stale

Sources: ``results/<name>/metrics.json`` for the runs in ``bench/reproduce.py``'s ``PLAN`` (each
names its command, commit and machine), and ``bench/results/*.json`` for benchmarks. A missing
result is shown as missing. The Commands table gives each command the time its result took
(``COMMANDS`` names the result; a row without one reads "not measured at this commit"). ``--check`` also fails when a result is stale (``reproduce.staleness``:
its commit is not an ancestor of HEAD, it was made from uncommitted changes, or its recorded
configuration is not what its command gives at HEAD).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from reproduce import PLAN, Job, staleness  # noqa: E402

from r3m.learn.reporting import pct  # noqa: E402  (the console's format)

README = ROOT / "README.md"
START, END = "<!-- results:start (python bench/report.py) -->", "<!-- results:end -->"
COMMANDS_START, COMMANDS_END = "<!-- commands:start (python bench/report.py) -->", "<!-- commands:end -->"

# The README's Commands table: (what, commands, the result in PLAN whose time a row shows, or None).
# A row's one command gives that result's configuration (tests/test_report.py checks it), so the time
# is the time of the command shown.
COMMANDS: list[tuple[str, tuple[str, ...], str | None]] = [
    ("Quick run: Stage 1, R3M alone", ("python train/imitate.py --stage 1 --baseline false",), "imitate-seed0-cpu"),
    ("The default run: Stages 1-2, two dense baselines", ("python train/imitate.py",), "imitate-default-cpu"),
    ("Stage 0: dense character LM, generation statistics", ("python train/imitate.py --stage 0",), "imitate-stage0-cpu"),
    ("Arithmetic without tools by imitation, through the place-value view",
     (" ".join(["python", "train/imitate.py", *next(j for j in PLAN if j.name == "imitate-arithmetic-cpu").args]),),
     "imitate-arithmetic-cpu"),
    ("Sudoku without tools on CPU (levels 1-2, the cells view), halting by the stable rule, dense baselines",
     (" ".join(["python", "train/imitate.py", *next(j for j in PLAN if j.name == "imitate-sudoku-cpu").args]),),
     "imitate-sudoku-cpu"),
    ("Sudoku without tools on one GPU: 9 training minutes per model (R3M, both dense baselines), the test "
     "split and the external sets", ("python scripts/gpu_sudoku.py",), None),
    ("Stages 1-2 on chosen families", ("python train/imitate.py --families listops arithmetic --levels 1 2 3",), None),
    ("Stage 3: policy gradients from the verifier, with tools (RL, distillation, RL)",
     ("python train/rl_verify.py --env arithmetic-v0",), "rl-arithmetic-seed0-cpu"),
    ("Distil a policy's verified tool answers into it",
     ("python train/distill.py --checkpoint runs/x/ckpt/rl.pt --env arithmetic-v0",), None),
    ("Episodic memory on streamed stories, with its ablations (the measured configuration)",
     (" ".join(["python", "train/imitate.py", *next(j for j in PLAN if j.name == "memory-stream-cpu").args]),),
     "memory-stream-cpu"),
    ("Stage 4: consolidation by replay into the semantic memory, forgetting across task mixes",
     ("python train/consolidate.py",), None),
    ("Evaluate a checkpoint (envs, external sets, K, halting, tools)",
     ("python train/evaluate.py --checkpoint runs/x/ckpt/stage2.pt --sets norvig_top95 --tools true",
      "python train/evaluate.py --checkpoint runs/x/ckpt/stage1.pt --halt true --halt-rule stable"), None),
    ("MaskablePPO baseline on `sudoku-grid-v0`", ("python train/sb3_baseline.py",), None),
    ("A user's families and tools, from their module",
     ("python train/imitate.py --plugin my_tasks --families reverse_word",), None),
    ("Benchmarks", ("python bench/bench_envs.py", "bench/bench_sudoku.py", "bench/bench_dsl.py",
                    "bench/bench_model.py", "bench/train_throughput.py", "bench/memory_read_path.py"), None),
    ("The training step on one GPU at K = 1, 8, 16: samples/s, FLOPs, share of the bf16 peak (TRM's anchor: "
     "5,784 samples/s on an H200)", ("python bench/train_throughput.py --device cuda --preset gpu-sudoku --batch 768 "
                                     "--compile --out bench/results/train_throughput_cuda.json",), None),
    ("The plan, Stage 0 to Stage 4 (each from the previous stage's checkpoint), `report.md` with verdicts and figures",
     ("python train/run_plan.py --quick",), "plan-quick-cpu"),
    ("Rerun every result below that is missing or stale, then rebuild the section", ("python bench/reproduce.py",),
     None),
    ("Rebuild the results section below and this table; check them (CI-style)",
     ("python bench/report.py", "python bench/report.py --check"), None),
]


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _get(d, k):
    return None if d is None else d.get(k, d.get(str(k)))


def origin(m: dict) -> str:
    """One line: the commit and machine a result came from, and its wall time."""
    p = m.get("provenance") or {}
    mach = p.get("machine") or {}
    where = mach.get("gpu") or f"{mach.get('cpu', '?')}, {mach.get('cores', '?')} cores"
    secs = m.get("wall_seconds") or sum(v.get("seconds", 0) for v in (m.get("fit") or {}).values())
    return (f"Commit `{(p.get('commit') or '?')[:7]}`, {where}, torch {mach.get('torch', '?')}, "
            f"{mach.get('threads', '?')} thread(s); {secs / 60:.1f} min.")


def head(job: Job, m: dict | None) -> list[str]:
    out = [f"### {job.title}", "", "```", " ".join(job.command), "```", ""]
    if m is None:
        return out + [f"_`results/{job.name}/metrics.json` is missing: run `python bench/reproduce.py --only "
                      f"{job.name}`._", ""]
    return out + [origin(m), ""]


def _view_line(m: dict) -> list[str]:
    views = m.get("views") or {}
    if not views:
        return []
    parts = []
    for fam, v in views.items():
        extra = [f"window {tuple(v['window'])}" if v.get("window") else "", "feedback" if v.get("feedback") else ""]
        parts.append(f"{fam} through its `{v['name']}` view" + "".join(f", {e}" for e in extra if e))
    return ["Read " + "; ".join(parts) + " (the dense baselines read the same views).", ""]


def imitate_section(job: Job) -> list[str]:
    m = load(job.out / "metrics.json")
    out = head(job, m)
    if m is None:
        return out
    curve = m.get("accuracy_vs_k", {})
    base = m.get("baseline") or {}
    out += _view_line(m)
    fit = m.get("fit") or {}
    if len(fit) > 1:  # the wall time above includes evaluation; each model's training on its own
        out += ["Training time: " + ", ".join(f"{name.replace('_', ' ')} {f['steps']} steps in {f['seconds'] / 60:.1f} min"
                                              for name, f in fit.items() if "seconds" in f) + ".", ""]
    if curve:
        ks = sorted({int(k) for c in curve.values() for k in c})
        n_lrs = len(next(iter(base.values()))["lrs"]) if base else 0
        cols = [f"K={k}" for k in ks] + [f"dense ({k.replace('_', '-')}, {v['layers']} layers, lr {v['best_lr']:g})"
                                         for k, v in base.items()]
        tuned = (f"each at its best of {n_lrs} learning rates (chosen on held-out train instances)" if n_lrs > 1
                 else f"at the learning rate {next(iter(base.values()))['best_lr']:g}" if base else "")
        out += ["Exact accuracy on the test split (verifier) by refinement steps K"
                + (f"; the dense baselines are trained on the same batches and steps, {tuned}" if base else "") + ".",
                "", "| family | levels | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
        levels = m["config"]["levels"] or ["trained"]
        for fam, c in curve.items():
            dense = [pct(_get(v["accuracy"], fam)) for v in base.values()]
            out.append(f"| {fam} | {','.join(map(str, levels))} | " + " | ".join(pct(_get(c, k)) for k in ks)
                       + "".join(f" | {d}" for d in dense) + " |")
            by_level = (m.get("accuracy_vs_k_by_level") or {}).get(fam) or {}
            if len(levels) > 1 and by_level:  # each trained level on its own (targets are often per level)
                for lv in levels:
                    dense = [pct(_get(_get(v.get("accuracy_by_level") or {}, fam), lv)) for v in base.values()]
                    out.append(f"| {fam} | level {lv} | " + " | ".join(pct(_get(by_level.get(str(k)) or {}, lv))
                                                                       for k in ks)
                               + "".join(f" | {d}" for d in dense) + " |")
        for fam, c in m.get("accuracy_vs_k_harder", {}).items():
            dense = [pct(_get(v["accuracy_harder"], fam)) for v in base.values()]
            out.append(f"| {fam} | next level (untrained) | " + " | ".join(pct(_get(c, k)) for k in ks)
                       + "".join(f" | {d}" for d in dense) + " |")
        for fam, lg in (m.get("length_generalization") or {}).items():
            for f in (2, 4):
                if f"curve_{f}x" not in lg:
                    continue
                lv = lg[f"level_{f}x"]
                dense = [pct(_get(_get(v.get("accuracy_by_level") or {}, fam), lv)) for v in base.values()]
                out.append(f"| {fam} | {f}x the longest trained (level {lv}) | "
                           + " | ".join(pct(_get(lg[f"curve_{f}x"], k)) for k in ks) + "".join(f" | {d}" for d in dense)
                           + " |")
        out.append("")
        for fam, e in (m.get("exit_criterion") or {}).items():
            values = ", ".join(f"{k.replace('_', ' ').replace('K', 'K=')} {pct(v)}" for k, v in e.items()
                               if k not in ("checks", "passed"))
            out.append(f"Exit criterion ({fam}): " + ", ".join(f"{k} {'yes' if v else 'no'}"
                                                                 for k, v in e["checks"].items())
                       + f" ({values}) -> **{'passed' if e['passed'] else 'not passed'}**.")
        out.append("")
    if m.get("halting"):
        rules = {h.get("rule", "learned"): h.get("patience") for h in m["halting"].values()}
        how = ("by the stable rule (no trained head: a row stops once its predicted answer has held for "
               f"{next(iter(rules.values()))} steps)" if list(rules) == ["stable"] else "by the halting head stage 2 trains")
        out += [f"Adaptive halting, per row, {how}, against the same model at fixed K on the same test instances: "
                "on the trained levels, and on a mix of the trained levels and, where the family has one, the size twice "
                "the largest trained, where a fixed K large enough for the largest wastes steps on the others (the "
                "best fixed K is the most accurate of those spending at least as many steps as halting):", "",
                "| family | halting accuracy | fixed-K accuracy | avg steps (of K) | block applications vs fixed K | "
                "wall-time speedup | steps by level | mix: halting | mix: avg steps | mix: best fixed K | "
                "Spearman(steps, level), mix |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for fam, h in m["halting"].items():
            by = ", ".join(f"L{lv}: {s:.2f}" for lv, s in h["steps_by_level"].items())
            best = (f"K={h['best_fixed_k']}: {pct(h['best_fixed_acc'])}" if h.get("best_fixed_k") is not None else "-")
            out.append(f"| {fam} | {pct(h['accuracy'])} | {pct(h['fixed_k_accuracy'])} | {h['avg_steps']:.2f} "
                       f"({pct(h['steps_fraction'])} of {h['fixed_k']}) | {pct(h.get('flops_ratio'))} | "
                       f"{h.get('speedup', float('nan')):.2f}x | {by} | {pct(h.get('mix_accuracy'))} | "
                       f"{h.get('mix_avg_steps', float('nan')):.2f} | {best} | "
                       f"{h.get('mix_spearman_steps_level', float('nan')):.2f} |")
        out.append("")
    return out + warnings(m)


def warnings(m: dict) -> list[str]:
    ws = m.get("warnings", [])
    return ["Warnings raised by the run: " + ("none." if not ws else "; ".join(f"`{w['name']}`: {w['message']}"
                                                                           for w in ws)), ""]


def seeds_section(jobs: list[Job]) -> list[str]:
    out = ["### Stage 1 across seeds and learning rates", "",
           "The exit criterion on prefix: K=8 at least K=1 + 10 points, K=16 at least K=8 - 1 point, strings "
           "twice the longest trained at least 90% at K=32 (K grows with the length). One row per run "
           "(`python bench/reproduce.py --only NAME` reruns one):", "",
           "| run | command | commit | K=1 | K=8 | K=16 | 2x the length | passed | minutes |",
           "|---|---|---|---|---|---|---|---|---|"]
    passed = 0
    for job in jobs:
        m = load(job.out / "metrics.json")
        args = " ".join(job.args)
        if m is None:
            out.append(f"| {job.name} | `{args}` | - | missing | | | | | |")
            continue
        for fam, e in (m.get("exit_criterion") or {}).items():
            passed += e["passed"]
            secs = sum(v.get("seconds", 0) for v in m.get("fit", {}).values())
            longer = next(((k, v) for k, v in e.items() if k.startswith(("2x_", "longer_"))), ("-", None))
            out.append(f"| {job.name} | `{args}` | `{m['provenance']['commit'][:7]}` | {pct(e['K1'])} | {pct(e['K8'])} | "
                       f"{pct(e['K16'])} | {pct(longer[1])} ({longer[0].split('_')[-1].replace('K', 'K=')}) | "
                       f"{'yes' if e['passed'] else '**no**'} | {secs / 60:.1f} |")
    mach = next((load(j.out / "metrics.json") for j in jobs if (j.out / "metrics.json").exists()), None)
    out += ["", f"{passed} of {len(jobs)} runs pass." + (f" Machine: {origin(mach).split(', torch')[0][len('Commit `xxxxxxx`, '):]}."
                                                       if mach else ""), ""]
    return out


def _mean(xs: list) -> float | None:
    return None if not xs or any(x is None for x in xs) else sum(xs) / len(xs)


def ablation_section(jobs: list[Job]) -> list[str]:
    """Each Sudoku training ingredient switched off in turn, at one short budget, beside all of them on."""
    out = ["### Sudoku: each training ingredient off in turn", "",
           "The run above at a short budget (the command of each row adds its change to the first row's), "
           "exact accuracy without tools on the test split of levels 1-2 (their mean) by refinement steps K, "
           "and on level 3 at K=32 (trained in no row; the hard-levels row trains level 4 beside 1-2):", "", f"```\n{' '.join(jobs[0].command)}\n```", "",
           "| ingredient | change | commit | K=1 | K=8 | K=16 | K=32 | level 3, K=32 | minutes |",
           "|---|---|---|---|---|---|---|---|---|"]
    for job in jobs:
        m = load(job.out / "metrics.json")
        change = " ".join(a for a in job.args[len(jobs[0].args):]) or "(all on)"
        name = job.name.removeprefix("sudoku-ablation-").removesuffix("-cpu")
        if m is None:
            out.append(f"| {name} | `{change}` | - | missing | | | | | |")
            continue
        by_k = (m.get("accuracy_vs_k_by_level") or {}).get("sudoku") or {}
        cells = [pct(_mean([_get(_get(by_k, k), lv) for lv in (1, 2)])) for k in (1, 8, 16, 32)]
        secs = sum(v.get("seconds", 0) for v in m.get("fit", {}).values())
        out.append(f"| {name} | `{change}` | `{m['provenance']['commit'][:7]}` | " + " | ".join(cells)
                   + f" | {pct(_get(_get(by_k, 32), 3))} | {secs / 60:.1f} |")
    mach = next((load(j.out / "metrics.json") for j in jobs if (j.out / "metrics.json").exists()), None)
    if mach:
        out += ["", f"Machine: {origin(mach).split(', torch')[0][len('Commit `xxxxxxx`, '):]}; "
                f"{mach['config']['eval_n']} test puzzles per level per cell."]
    return out + [""]


def memory_section(job: Job) -> list[str]:
    m = load(job.out / "metrics.json")
    out = head(job, m)
    if m is None:
        return out
    out += ["Accuracy on streamed episodes (the past is never in the observation), against the same model with "
            "memory reads off and a model trained without memory on the same batches; writes per episode and "
            "where they go:", "",
            "| family | trained levels | longer streams | chance | reads off | trained without memory | "
            "writes / episode | write rate: facts | write rate: distractors | by level |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for fam, r in (m.get("memory") or {}).items():
        by = ", ".join(f"L{lv}: {pct(a)}" for lv, a in r["accuracy_by_level"].items())
        out.append(f"| {fam} | {pct(r['accuracy'])} | {pct(r['accuracy_longer'])} | {pct(r['chance'])} | "
                   f"{pct(r.get('no_memory'))} | {pct(r.get('no_memory_trained'))} | {r['writes_per_sample']:.2f} | "
                   f"{pct(r.get('write_rate_fact'))} | {pct(r.get('write_rate_distractor'))} | {by} |")
    out.append("")
    for fam, r in (m.get("memory") or {}).items():
        sweep = ", ".join(f"{s['threshold']:g}: {s['writes_per_sample']:.2f} writes, {pct(s['accuracy'])}"
                          for s in r.get("write_sweep", []))
        out.append(f"Write threshold sweep ({fam}): {sweep}.")
        support, mass = r.get("write_rate_support"), r.get("read_support_mass")
        if support is not None or mass:
            read = (f"; the question's reads put {pct(mass['mass'])} of their weight on those facts' slots "
                    f"(an even spread would put {pct(mass['uniform'])})") if mass else ""
            out.append(f"Supporting facts ({fam}): {pct(support)} written{read}.")
    return out + [""] + warnings(m)


def rl_section(job: Job) -> list[str]:
    m = load(job.out / "metrics.json")
    out = head(job, m)
    if m is None:
        return out
    out += [f"Test split, greedy (the same instances with and without tools; steps of K={m.get('K')} per turn):", "",
            "| phase | reward (sampled) | reward (greedy) | success with tools | without tools | call rate | "
            "tool precision | tool recall | unneeded calls | steps |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in m.get("phases", {}).items():
        t = p["tools"]
        out.append(f"| {name} | {p['reward']:.3f} | {p['greedy_reward']:.3f} | {pct(p['with_tools'])} | "
                   f"{pct(p['without_tools'])} | {pct(t['call_rate'])} | {t['precision']:.3f} | {t['recall']:.3f} | "
                   f"{pct(t['unneeded_call_rate'])} | {p.get('steps', float('nan')):.2f} |")
    out.append("")
    d = m.get("distill") or {}
    if d.get("note"):
        out.append(f"Distillation (levels {d['levels']}): {d['note']}.")
    elif d.get("levels"):
        what = ("fresh tool-labelled instances" if d.get("source", "harvest") == "fresh"
                else "of the policy's verified tool answers")
        out.append(f"Distillation (levels {d['levels']}, {d['examples']} {what}): tool-free accuracy "
                   f"{pct(d['before'])} -> {pct(d['after'])}, call rate {pct(d['calls_before'])} -> "
                   f"{pct(d['calls_after'])}.")
    if m.get("tool_free_by_level"):
        by = m.get("success_by_level", {}).get("with_tools", {})
        out.append("At the end, by level: " + "; ".join(
            f"L{lv}: tool-free {pct(a)}, with tools {pct(_get(by, lv))}, calls {pct(_get(m['calls_by_level'], lv))}"
            for lv, a in m["tool_free_by_level"].items()) + ".")
    if "rollbacks" in m:
        need = (f"tool precision {pct(m.get('tool_precision'))}, recall {pct(m.get('tool_recall'))}, unneeded calls "
                f"{pct(m.get('unneeded_call_rate'))} on levels {m.get('tool_metrics_levels')}"
                if m.get("tool_metrics_levels") else f"need-based tool metrics: {m.get('tool_metrics_note')}")
        out.append(f"Guard rollbacks {m['rollbacks']}, zero-variance groups {m['zero_variance_groups']}, void turns "
                   f"{m['void_turns']}; {need}.")
    bl = m.get("baselines") or {}
    if bl:
        sets = list(bl.get("r3m_with_tools", {}))
        out += ["", "| model | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
        for name, res in bl.items():
            out.append(f"| {name} | " + " | ".join(pct(res.get(s)) if isinstance(res.get(s), (int, float)) else "-"
                                                  for s in sets) + " |")
    return out + [""]


def plan_section(job: Job) -> list[str]:
    """The plan's table (``train/run_plan.py``), its figures and report; nothing until a result exists."""
    m = load(job.out / "metrics.json")
    if m is None:
        return []
    out = head(job, m) + [m["results_table"], ""]
    figs = [f"[{caption}](results/{job.name}/{name})" for stage in m.get("figures", {}).values() for name, caption in stage]
    out += ["Figures: " + "; ".join(figs) + ".", "", f"The whole report, warnings included: `results/{job.name}/report.md`.",
            ""]
    return out


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
    tt = load(ROOT / "bench/results/train_throughput.json")
    for path in ("bench/results/train_throughput.json", "bench/results/train_throughput_cuda.json"):
        out += k_sweep_lines(load(ROOT / path), path)
    if tt:
        a, first = tt["args"], tt["args"]["views"][0]
        out += [f"Training throughput of {a['family']} by view, stage-1 step at K={a['k']} ({a['grad_steps']} steps "
                f"with gradients), {a['preset']}, batch {a['batch']}, {tt['device']}, {a['threads']} thread(s) "
                f"(`python bench/train_throughput.py`; commit `{tt['provenance']['commit'][:7]}`):", "",
                f"| view | positions | params | samples/s | {first} is faster by |", "|---|---|---|---|---|"]
        for v, r in tt["views"].items():
            ratio = tt["ratio"].get(v)
            out.append(f"| {v} | {r['positions']} | {r['params']:,} | {r['samples_per_s']:.1f} | "
                       f"{f'{ratio:.2f}x' if ratio else '-'} |")
        out.append("")
    rp = load(ROOT / "bench/results/memory_read_path.json")
    if rp:
        a, fl = rp["args"], rp["floors"]
        out += [f"The episodic memory's read path on gold writes (one slot per sentence holding its bag of words; "
                f"memory level {a['level']}, {a['steps']} steps of {a['batch_size']} stories, d={a['d_model']}, "
                f"{a['k']} reads; `python bench/memory_read_path.py`; commit `{rp['provenance']['commit'][:7]}`). "
                f"Chance {pct(fl['chance'])}; answering the newest sentence's place {pct(fl['newest_place'])}:", "",
                "| composition | test accuracy along training | final | seconds | params |", "|---|---|---|---|---|"]
        names = {"module": "the memory alone (question's bag of words as the query)",
                 "r3m": "inside R3M (the question turn's tokens read at each step)"}
        for v, r in rp["variants"].items():
            curve = ", ".join(f"{c['step']}: {pct(c['test_accuracy'])}" for c in r["curve"])
            out.append(f"| {names.get(v, v)} | {curve} | {pct(r['test_accuracy'])} | {r['curve'][-1]['seconds']:.0f} | "
                       f"{r['params']:,} |")
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
             "`python bench/reproduce.py` reruns what is missing or stale and `python bench/report.py` "
             "rebuilds this section.", ""]
    seeds = [j for j in PLAN if j.kind == "seeds"]
    ablations = [j for j in PLAN if j.kind == "sudoku-ablation"]
    for job in PLAN:
        if job.kind in ("imitate", "stage0"):
            parts += imitate_section(job) if job.kind == "imitate" else stage0_section(job)
        elif job.kind == "seeds" and job is seeds[0]:
            parts += seeds_section(seeds)
        elif job.kind == "sudoku-ablation" and job is ablations[0]:
            parts += ablation_section(ablations)
        elif job.kind == "memory":
            parts += memory_section(job)
        elif job.kind == "rl":
            parts += rl_section(job)
        elif job.kind == "plan":
            parts += plan_section(job)
    parts += bench_section()
    return "\n".join(parts).rstrip() + "\n"


def k_sweep_lines(tt: dict | None, path: str) -> list[str]:
    """The training step's throughput and achieved FLOP rate at each K (``train_throughput.py --ks``)."""
    sweep = (tt or {}).get("k_sweep")
    if not sweep:
        return []
    a = tt["args"]
    peak = sweep.get("bf16_peak_tflops")
    out = [f"Training step of {a['family']} ({sweep['view']} view, {a['preset']}, batch {a['batch']}, "
           f"{a['grad_steps']} steps with gradients) on {tt.get('card', tt['device'])}"
           + (f", bf16 autocast{', torch.compile' if tt.get('compile') else ''}, measured bf16 peak {peak:.0f} TFLOP/s"
              if peak else f", fp32, {a['threads']} thread(s)")
           + f" (`{path}`, commit `{tt['provenance']['commit'][:7]}`):", "",
           "| K | samples/s | tokens/s | GFLOP per sample (forward + backward) | achieved TFLOP/s | of bf16 peak |",
           "|---|---|---|---|---|---|"]
    for K, r in sweep["by_k"].items():
        share = f"{r['peak_fraction']:.1%}" if r.get("peak_fraction") is not None else "- (no bf16 peak on a CPU)"
        out.append(f"| {K} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['flops_per_sample'] / 1e9:.3f} | "
                   f"{r['tflops']:.4f} | {share} |")
    ops = (sweep.get("profile") or {}).get("ops") or []
    if ops:
        out += ["", f"Where a step's time goes at K={sweep['profile']['K']} (self time): "
                + ", ".join(f"`{o['op']}` {o['share']:.0%}" for o in ops[:6]) + "."]
    return out + [""]


def stage0_section(job: Job) -> list[str]:
    m = load(job.out / "metrics.json")
    out = head(job, m)
    if m is None or not m.get("stage0"):
        return out
    s0, g = m["stage0"], m["stage0"]["generation"]
    out += ["| stage 0 (dense LM) | params | final loss | immediate EOS | distinct-1 | distinct-2 | "
            "longest repeat run | non-degenerate | instruct accuracy |", "|---|---|---|---|---|---|---|---|---|",
            f"| completions of {len(s0['samples'])} prompts | {s0['params']:,} | {s0['final_loss']:.3f} | "
            f"{pct(g['immediate_eos_rate'])} | {g['distinct_1']:.3f} | {g['distinct_2']:.3f} | "
            f"{g['longest_repeat_run']} | {s0['non_degenerate']} | {pct(s0['instruct_accuracy'])} |", ""]
    out += ["Samples (prompt -> completion):", "", "```"]
    out += [f"{x['prompt']!r} -> {x['completion'][:70]!r}" for x in s0["samples"][:6]]
    return out + ["```", ""]


def measured_time(name: str | None) -> str:
    """How long a command's result took, where from; "not measured at this commit" without one."""
    m = load(next(j for j in PLAN if j.name == name).out / "metrics.json") if name else None
    if m is None:
        return "not measured at this commit"
    mach = (m.get("provenance") or {}).get("machine") or {}
    where = mach.get("gpu") or f"{mach.get('cores', '?')} CPU cores, {mach.get('threads', '?')} thread(s)"
    if m.get("wall_seconds"):
        took = f"{m['wall_seconds'] / 60:.1f} min"
    else:  # imitation results time their training phases, not the evaluations between them
        took = f"{sum(v.get('seconds', 0) for v in (m.get('fit') or {}).values()) / 60:.1f} min of training"
    return f"{took} on {where} (`results/{name}`, commit `{((m.get('provenance') or {}).get('commit') or '?')[:7]}`)"


def commands_table() -> str:
    lines = ["| what | command | time |", "|---|---|---|"]
    for what, commands, name in COMMANDS:
        lines.append(f"| {what} | " + ", ".join(f"`{c}`" for c in commands) + f" | {measured_time(name)} |")
    return "\n".join(lines) + "\n"


def replace_between(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        sys.exit(f"README.md lacks the markers {start!r} ... {end!r}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}{end}{tail}"


def stale_results() -> list[str]:
    return [f"results/{j.name}: {why}" for j in PLAN if (why := staleness(j)) not in (None, "missing")]


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--check", action="store_true", help="fail if README.md is out of date")
    args = parser.parse_args()
    text = README.read_text()
    new = replace_between(text, COMMANDS_START, COMMANDS_END, commands_table())
    new = replace_between(new, START, END, render())
    if args.check:
        problems = stale_results()
        if new != text:
            problems.append("README.md results or Commands table are out of date: run python bench/report.py")
        sys.exit("\n".join(problems) if problems else 0)
    README.write_text(new)
    print("README.md results section and Commands table rewritten")


if __name__ == "__main__":
    main()
