"""The research plan's stages judged from their runs' metrics, and the plan's ``report.md``.

``train/run_plan.py`` runs Stage 0 to Stage 4, each a script's run in its own folder. Each
``judge_*`` reads one run's ``metrics.json`` (as the script returned it) and gives, per stage, the
plan's exit criterion in words, the numbers it reads, and a verdict: ``passed`` true or false where
the criterion can be judged, or ``measurable: false`` with the reason where its precondition fails
(a task that was never learned has nothing to forget, and a halting head on an unlearned task saves
steps that buy nothing: such a stage is never marked passed). ``report_markdown`` renders the table,
the figures and the warnings; everything in it is read from the runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

LEARNED = 0.30  # a task counts as learned at chance + 30 points (as train/consolidate.py)
STAGE_NAMES = {"0": "dense LM", "1": "R3M at fixed K", "2": "adaptive halting", "3": "RL with tools",
               "4": "consolidation"}


def verdict(criterion: str, measured: dict, passed: bool, why: str | None = None) -> dict:
    """A stage's entry in ``plan.json``: judged (``passed``) unless ``why`` says it cannot be."""
    if why:
        return {"exit_criterion": criterion, "measured": measured, "passed": None, "measurable": False, "why": why}
    return {"exit_criterion": criterion, "measured": measured, "passed": bool(passed), "measurable": True}


def judge_stage0(m: dict) -> dict:
    """Non-degenerate samples, judged only once the LM learned (its loss at most half its first logged
    loss): an untrained model samples near-uniform characters, which look varied and never loop."""
    s0 = m["stage0"]
    g = s0["generation"]
    first = s0["loss_curve"][0] if s0.get("loss_curve") else None
    measured = {"first_loss": first, "final_loss": s0["final_loss"], "immediate_eos": g["immediate_eos_rate"],
                "distinct_2": g["distinct_2"], "longest_repeat_run": g["longest_repeat_run"],
                "instruct_accuracy": s0["instruct_accuracy"]}
    why = None
    if first is None or s0["final_loss"] > 0.5 * first:
        why = "the LM did not learn its corpus (final loss above half its first), so varied samples say nothing"
    return verdict("the dense character LM's samples are non-degenerate (few immediate EOS, distinct bigrams, "
                   "no long repeats: lm.non_degenerate)", measured, s0["non_degenerate"], why)


def judge_stage1(m: dict) -> dict:
    measured, passed = {}, []
    for fam, e in m["exit_criterion"].items():
        measured[fam] = {k: v for k, v in e.items() if k not in ("checks", "passed")}
        measured[fam]["checks"] = e["checks"]
        passed.append(e["passed"])
    return verdict("per family: accuracy at K=8 >= K=1 + 10 points, K=16 >= K=8 - 1 point, instances twice the "
                   "longest trained >= 90% at K=32", measured, bool(passed) and all(passed))


def judge_stage2(m: dict, chance: Mapping[str, float]) -> dict:
    """Halting saves >= 40% of fixed K's steps at <= 1 point of accuracy, harder levels take more steps;
    judged only on families learned at fixed K (chance + ``LEARNED``)."""
    measured, passed, unlearned = {}, [], []
    for fam, h in m["halting"].items():
        saved = 1.0 - h["steps_fraction"]
        drop = h["fixed_k_accuracy"] - h["accuracy"]
        rho = h.get("spearman_steps_level")
        measured[fam] = {"steps_saved": saved, "accuracy": h["accuracy"], "fixed_k_accuracy": h["fixed_k_accuracy"],
                         "fixed_k": h["fixed_k"], "spearman_steps_level": rho, "chance": chance[fam]}
        if h["fixed_k_accuracy"] < chance[fam] + LEARNED:
            unlearned.append(f"{fam} (fixed-K accuracy {h['fixed_k_accuracy']:.3f}, chance {chance[fam]:.3f})")
        passed.append(saved >= 0.40 and drop <= 0.01 and rho is not None and rho > 0)
    why = f"not learned at fixed K: {', '.join(unlearned)}" if unlearned else None
    return verdict("halting saves >= 40% of the steps of fixed K at <= 1 point less accuracy, and harder levels "
                   "use more steps (Spearman of steps and level > 0)", measured, bool(passed) and all(passed), why)


MIN_START = 0.05  # Stage 3: below this success the groups' rewards are all equal and RL has no gradient


def judge_stage3(m: dict) -> dict:
    start, end, d = m["success_start"], m["success"], m.get("distill") or {}
    measured = {"with_tools_start": start["with_tools"], "with_tools_end": end["with_tools"],
                "without_tools_start": start["without_tools"], "without_tools_end": end["without_tools"],
                "tool_precision": m.get("tool_precision"), "tool_recall": m.get("tool_recall"),
                "distilled_levels": d.get("levels", [])}
    checks = {"rl_raises_success": end["with_tools"] > start["with_tools"] or min(end["with_tools"],
                                                                                start["with_tools"]) >= 0.99}
    if d.get("levels"):
        checks["distillation_raises_tool_free"] = end["without_tools"] > start["without_tools"]
    measured["checks"] = checks
    why = None
    if max(start["with_tools"], end["with_tools"]) < MIN_START:
        why = (f"the policy solved under {MIN_START:.0%} of the test instances with tools at the start and the end: "
               "the task was not learned, so RL had no reward signal to follow")
    return verdict("RL raises test success with tools above the starting policy's; after distillation, success "
                   "without tools is above its start", measured, all(checks.values()), why)


def judge_stage4(m: dict) -> dict:
    t = m["targets"]
    measured = {"writes_to_target": m["writes_to_target"], "bwt": m["bwt"], "acc": m["acc"],
                "replay_sources": m["replay"].get("sources"), "targets": {k: v["value"] for k, v in t.items()}}
    whys = [f"{k}: {v['why']}" for k, v in t.items() if not v["measurable"]]
    return verdict("writes-to-target ratio after / before consolidation <= 0.7, and BWT with consolidation >= -1 "
                   "point, on learned tasks", measured, all(v["passed"] for v in t.values()), "; ".join(whys) or None)


# -- figures from the runs' logs ------------------------------------------------------------------
def loss_curves(run_dir: Path, phases: Sequence[str] | None = None) -> dict[str, tuple[list[int], list[float]]]:
    """Each phase's logged training loss (``scalars_<phase>.jsonl``: ``train/loss``, RL ``rl/loss``)."""
    curves = {}
    for path in sorted(Path(run_dir).glob("scalars_*.jsonl")):
        phase = path.stem[len("scalars_"):]
        if phases is not None and phase not in phases:
            continue
        steps, losses = [], []
        for line in path.read_text().splitlines():
            row = json.loads(line)
            loss = row.get("train/loss", row.get("rl/loss"))
            if loss is not None:
                steps.append(int(row["step"]))
                losses.append(float(loss))
        if steps:
            curves[phase] = (steps, losses)
    return curves


# -- the report ----------------------------------------------------------------------------------
def fmt(value, depth: int = 0) -> str:
    """Numbers compactly: floats to 3 places, dicts as ``key value`` lists (nested in parentheses)."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{k} {fmt(v, depth + 1)}" for k, v in value.items())
        return f"({inner})" if depth else inner
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, depth + 1) for v in value) + "]"
    return str(value)


def verdict_word(stage: dict) -> str:
    if not stage["measurable"]:
        return f"**not measurable**: {stage['why']}"
    return "**pass**" if stage["passed"] else "**fail**"


def table(stages: Mapping[str, dict]) -> str:
    """The plan's results table (markdown): stage, exit criterion, measured numbers, verdict."""
    lines = ["| stage | exit criterion | measured | verdict |", "|---|---|---|---|"]
    for key, s in stages.items():
        cells = [f"{key}: {STAGE_NAMES.get(key, '')}", s["exit_criterion"], fmt(s["measured"]), verdict_word(s)]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def warning_lines(warnings: Mapping[str, Sequence]) -> list[str]:
    """One bullet per warning a run raised (imitation's are dicts with a remedy, consolidation's text)."""
    out = []
    for run, found in warnings.items():
        for w in found:
            text = f"[{w['name']}] {w['message']}. Remedy: {w['remedy']}" if isinstance(w, Mapping) else str(w)
            out.append(f"- {run}: {text}")
    return out or ["- none"]


def report_markdown(plan: dict, figures: Mapping[str, Sequence[tuple[str, str]]], warnings: Mapping[str, Sequence],
                    provenance: dict) -> str:
    """``report.md``: where the plan ran, the table, each stage's figures (paths relative to the
    report) and the warnings the runs raised."""
    mach = provenance.get("machine") or {}
    where = mach.get("gpu") or f"{mach.get('cpu', '?')}, {mach.get('cores', '?')} cores, {mach.get('threads', '?')} thread(s)"
    commit = (provenance.get("commit") or "?")[:7] + (" (uncommitted changes)" if provenance.get("dirty") else "")
    lines = ["# R3M plan: Stage 0 to Stage 4", "",
             f"Command: `{provenance.get('command') or 'python train/run_plan.py'}`; commit `{commit}`; {where}; "
             f"wall time {plan['seconds'] / 60:.1f} min (stages: " +
             ", ".join(f"{k} {v['seconds'] / 60:.1f}" for k, v in plan["runs"].items()) + " min).", "",
             table(plan["stages"]), ""]
    for key, figs in figures.items():
        lines += [f"## Stage {key}: {STAGE_NAMES.get(key, '')}", ""]
        lines += [f"![{caption}]({path})  \n{caption}\n" for path, caption in figs] or ["(no figure)", ""]
    lines += ["## Warnings", "", *warning_lines(warnings), ""]
    return "\n".join(lines)
