"""Reporting: one logger with several sinks (TensorBoard scalars, a JSONL file, messages on
stderr), the results tables every script prints and ``bench/report.py`` renders, and the writer
of ``metrics.json``.

Tags use fixed prefixes so curves from every script line up in TensorBoard:
``train/``, ``eval/``, ``halt/``, ``memory/``, ``tools/``, ``rl/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

PREFIXES = ("train/", "eval/", "halt/", "memory/", "tools/", "rl/")

log = logging.getLogger("r3m")


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (a handler bound to the stream of its creation time
    writes to a closed file once a test harness or notebook swaps the stream)."""

    @property
    def stream(self):
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Show the project's messages as ``[r3m] ...`` on stderr (scripts call this; importing does not)."""
    if not log.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("[r3m] %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level)


def mean(xs: Iterable[float]) -> float:
    """The mean, 0.0 for nothing."""
    xs = list(xs)
    return float(np.mean(xs)) if xs else 0.0


def _git(*args: str) -> str:
    import subprocess

    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


_CODE_STATE: dict | None = None


def code_state() -> dict:
    """The commit and whether tracked files differed from it, read once per process: at the run's
    start (``start_run`` calls it), so edits or commits made while a run trains are not credited
    to it."""
    global _CODE_STATE
    if _CODE_STATE is None:
        _CODE_STATE = {"commit": _git("rev-parse", "HEAD") or None,
                       # results/ holds outputs (a rerun replaces its own folder), not code
                       "dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--",
                                          ":(top)", ":(top,exclude)results"))}
    return dict(_CODE_STATE)


def provenance() -> dict:
    """Where a result comes from: the command, the commit the run started from (and whether the
    tree had uncommitted changes then), the machine and the library versions."""
    import platform
    import sys

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"command": " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0].endswith(".py") else None,
            **code_state(),
            "machine": {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
                        "torch": torch.__version__, "threads": torch.get_num_threads()}}


def write_metrics(run_dir: Path, metrics: dict, table: str) -> dict:
    """Write ``metrics.json`` (keys starting with ``_`` are internal and left out) with the results
    table and the provenance in it, print the table, and return what was written."""
    public = {k: v for k, v in metrics.items() if not k.startswith("_")}
    public["provenance"] = provenance()
    public["results_table"] = table
    path = Path(run_dir) / "metrics.json"
    tmp = path.with_name(path.name + ".tmp")  # atomic: a reader sees the old file or the new one
    tmp.write_text(json.dumps(public, indent=2, default=str))
    os.replace(tmp, path)
    print(table)
    return public


class Logger:
    """``scalars(step, {tag: value})`` to TensorBoard (``DIR/tb/NAME``) and ``DIR/scalars_NAME.jsonl``.

    One logger per phase of a run (``stage1``, ``dense``, ``stage2``, ...): the phases share tag
    names, so TensorBoard overlays them as runs of one experiment. ``purge_step``: a resumed phase
    drops what it had logged from that step on (it is about to log those steps again).
    """

    def __init__(self, run_dir: str, name: str = "main", tensorboard: bool = True,
                 hparams: Mapping[str, Any] | None = None, purge_step: int | None = None):
        os.makedirs(run_dir, exist_ok=True)
        self.run_dir, self.name = run_dir, name
        path = os.path.join(run_dir, f"scalars_{name}.jsonl")
        if purge_step is not None and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] < purge_step]
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(kept)
        self._jsonl = open(path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=os.path.join(run_dir, "tb", name), purge_step=purge_step)
            if hparams:
                table = "\n".join(f"|{k}|{v}|" for k, v in hparams.items())
                self._tb.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        clean = {}
        for tag, value in values.items():
            if not tag.startswith(PREFIXES):
                raise ValueError(f"tag {tag!r} must start with one of {PREFIXES}")
            value = float(value)
            clean[tag] = value if math.isfinite(value) else None
            if self._tb is not None:
                self._tb.add_scalar(tag, value, step)
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")

    def figure(self, tag: str, fig, step: int = 0) -> None:
        if self._tb is not None:
            self._tb.add_figure(tag, fig, step)

    def flush(self) -> None:
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


# -- results tables ----------------------------------------------------------------------------------
def pct(x: float | None) -> str:
    """A share as the README prints it (``0.973`` -> ``97.3%``; ``None`` -> ``-``): the console, the
    metrics' tables and ``bench/report.py`` use this one format."""
    return "-" if x is None else f"{100 * float(x):.1f}%"


def imitation_table(metrics: Mapping[str, Any], ks: Sequence[int]) -> str:
    """Accuracy against K beside the dense baselines and the exit criterion, the streamed-memory
    measurements, halting, and Stage 0 (``train/imitate.py``)."""
    lines = []
    base = metrics.get("baseline", {})
    if "accuracy_vs_k" in metrics:
        ks = list(ks)
        names = {"param_matched": "dense, same params", "compute_matched": "dense, same compute"}
        kinds = [k for k in names if k in base]
        lines += ["| family | " + " | ".join(f"K={k}" for k in ks) + "".join(f" | {names[k]}" for k in kinds) + " |",
                  "|---" * (len(ks) + 1 + len(kinds)) + "|"]
        for key, suffix in (("accuracy_vs_k", ""), ("accuracy_vs_k_harder", " (harder, untrained level)")):
            for fam, curve in metrics.get(key, {}).items():
                dense = [base[k]["accuracy" + ("_harder" if suffix else "")].get(fam) for k in kinds]
                lines.append(f"| {fam}{suffix} | " + " | ".join(pct(_get(curve, k)) for k in ks)
                             + "".join(f" | {pct(d)}" for d in dense) + " |")
        if kinds:
            lines.append("\ndense baselines (best of the learning rates tried, chosen on held-out train instances): "
                         + "; ".join(f"{names[k]} {base[k]['params']:,} params, {base[k]['layers']} layers, "
                                     f"lr {base[k]['best_lr']:g}" for k in kinds))
        lines += [""] + [exit_line(fam, e) for fam, e in metrics.get("exit_criterion", {}).items()]
    if metrics.get("memory"):
        lines += ["", memory_table(metrics["memory"])]
    if "halting" in metrics:
        lines += ["", "| family | halting accuracy | fixed-K accuracy | avg steps | fixed K | block applications "
                      "vs fixed K | speedup | Spearman(steps, level) | steps by level |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for fam, h in metrics["halting"].items():
            by = ", ".join(f"L{lv}: {st:.2f}" for lv, st in h["steps_by_level"].items())
            lines.append(f"| {fam} | {pct(h['accuracy'])} | {pct(h['fixed_k_accuracy'])} | {h['avg_steps']:.2f} | "
                         f"{h['fixed_k']} | {pct(h.get('flops_ratio'))} | "
                         f"{h.get('speedup', float('nan')):.2f}x | {h.get('spearman_steps_level', float('nan')):.2f} | "
                         f"{by} |")
    if "stage0" in metrics:
        g = metrics["stage0"]["generation"]
        lines += ["", "| stage 0 | immediate EOS | distinct-1 | distinct-2 | longest repeat run | non-degenerate |",
                  "|---|---|---|---|---|---|",
                  f"| dense LM | {pct(g['immediate_eos_rate'])} | {g['distinct_1']:.3f} | {g['distinct_2']:.3f} | "
                  f"{g['longest_repeat_run']} | {metrics['stage0']['non_degenerate']} |"]
    return "\n".join(lines)


def exit_line(family: str, e: Mapping[str, Any]) -> str:
    """Stage 1's exit criterion for one family (``signals.exit_criterion``): each check, the numbers
    it read and the verdict, or "not measured" when a K it reads was not evaluated (``--eval-ks``)."""
    def name(key: str) -> str:  # "K16" -> "K=16", "longer_K16" -> "longer K=16"
        return key.replace("_", " ").replace("K", "K=")

    values = {k: v for k, v in e.items() if k not in ("checks", "passed")}
    ks = [name(k) for k in values if not k.startswith("longer")]
    missing = [name(k) for k, v in values.items() if v is None and not k.startswith("longer")]
    if missing:
        return f"exit criterion ({family}): not measured (it reads {', '.join(ks)}; {', '.join(missing)} not in --eval-ks)"
    return (f"exit criterion ({family}): " + ", ".join(f"{k} {'yes' if ok else 'no'}" for k, ok in e["checks"].items())
            + " (" + ", ".join(f"{name(k)} {pct(v)}" for k, v in values.items())
            + f") -> {'passed' if e['passed'] else 'not passed'}")


def memory_table(memory: Mapping[str, Mapping[str, Any]]) -> str:
    """The streamed-memory measurements (``train/imitate.py --stream``, metrics "memory"): accuracy
    against chance, the ablations, writes and where they go, and the write-threshold sweep."""
    lines = ["| family (streamed) | trained levels | longer streams | chance | reads off | trained without memory | "
             "writes / episode | write rate: facts | write rate: distractors |", "|---|---|---|---|---|---|---|---|---|"]
    for fam, r in memory.items():
        lines.append(f"| {fam} | {pct(r['accuracy'])} | {pct(r.get('accuracy_longer'))} | {pct(r.get('chance'))} | "
                     f"{pct(r.get('no_memory'))} | {pct(r.get('no_memory_trained'))} | {r['writes_per_sample']:.2f} | "
                     f"{pct(r.get('write_rate_fact'))} | {pct(r.get('write_rate_distractor'))} |")
    sweeps = [f"write threshold sweep ({fam}): " + ", ".join(
        f"{p['threshold']:g}: {p['writes_per_sample']:.2f} writes, {pct(p['accuracy'])}" for p in r["write_sweep"])
        for fam, r in memory.items() if r.get("write_sweep")]
    return "\n".join(lines + ([""] + sweeps if sweeps else []))


def _get(curve: Mapping, k: int) -> float:
    """A curve's value at K, whether its keys are ints (in memory) or strings (from JSON)."""
    return curve[k] if k in curve else curve[str(k)]


def rl_table(metrics: Mapping[str, Any]) -> str:
    """Success per set and model; reward, success and tool use at each phase; distillation
    (``train/rl_verify.py``)."""
    sets = list(metrics["baselines"]["r3m_with_tools"])
    lines = ["| model | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    for name, res in metrics["baselines"].items():
        cells = [pct(res[s]) if isinstance(res.get(s), (int, float)) else "-" for s in sets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| phase | reward (sampled) | reward (greedy) | success with tools | without tools | call rate | "
                  "tool precision | tool recall | unneeded calls | steps |", "|---" * 10 + "|"]
    for name, p in metrics.get("phases", {}).items():
        t = p["tools"]
        lines.append(f"| {name} | {p['reward']:.3f} | {p['greedy_reward']:.3f} | {pct(p['with_tools'])} | "
                     f"{pct(p['without_tools'])} | {pct(t['call_rate'])} | {t['precision']:.3f} | {t['recall']:.3f} | "
                     f"{pct(t['unneeded_call_rate'])} | {p.get('steps', float('nan')):.2f} |")
    if "tool_metrics_levels" in metrics:  # the end's tool use on the levels where it can fail
        lines.append(f"\nat the end, on levels {metrics['tool_metrics_levels']} (tool-free accuracy above 0.5): tool "
                     f"precision {pct(metrics['tool_precision'])}, recall {pct(metrics['tool_recall'])}, unneeded "
                     f"calls {pct(metrics['unneeded_call_rate'])}" + (f" ({metrics['tool_metrics_note']})"
                                                                       if metrics.get("tool_metrics_note") else ""))
    if "rollbacks" in metrics:
        lines.append(f"rollbacks {metrics['rollbacks']}, zero-variance groups {metrics['zero_variance_groups']}, "
                     f"void turns {metrics['void_turns']}")
    d = metrics.get("distill") or {}
    if d.get("note"):
        lines.append(f"\ndistillation (levels {d['levels']}): {d['note']}")
    elif d.get("levels"):
        what = ("fresh tool-labelled instances" if d.get("source", "harvest") == "fresh"
                else "of the policy's verified tool answers")
        lines.append(f"\ndistillation (levels {d['levels']}, {d['examples']} {what}): tool-free accuracy "
                     f"{pct(d['before'])} -> {pct(d['after'])}, call rate {pct(d['calls_before'])} -> "
                     f"{pct(d['calls_after'])}")
    if metrics.get("tool_free_by_level"):
        lines.append("at the end, by level: " + "; ".join(
            f"L{lv}: tool-free {pct(metrics['tool_free_by_level'][lv])}, with tools "
            f"{pct(_level(metrics['success_by_level']['with_tools'], lv))}, calls {pct(metrics['calls_by_level'][lv])}"
            for lv in metrics["tool_free_by_level"]))
    return "\n".join(lines)


def _level(by_level: Mapping, level):
    """A per-level value whether the level key is an int or (after JSON) a string."""
    return by_level.get(level, by_level.get(str(level))) if by_level else None


def eval_table(results: Mapping[str, Mapping[str, Any]], headline: str = "") -> str:
    """Accuracy per evaluation set and K, halting and tool calls (``train/evaluate.py``);
    ``headline`` says what the "accuracy" column is (e.g. ``K=8``, ``halting, K<=8``)."""
    ks = sorted({K for r in results.values() for K in r.get("accuracy_vs_k", {})})
    halt = any("halting" in r for r in results.values())
    head = ["set", "n", *(f"K={K}" for K in ks), *(["halting", "avg steps"] if halt else []),
            f"accuracy ({headline})" if headline else "accuracy", "tool calls"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, r in results.items():
        row = [name, str(r["n"]), *(pct(r["accuracy_vs_k"][K]) if K in r.get("accuracy_vs_k", {}) else "-"
                                    for K in ks)]
        if halt:
            h = r.get("halting")
            row += [pct(h["accuracy"]), f"{h['avg_steps']:.2f}"] if h else ["-", "-"]
        row += [pct(r["accuracy"]), pct(r["tool_call_rate"])]
        lines.append("| " + " | ".join(row) + " |")
        for group, g in r.get("groups", {}).items():  # a file format's instances by group (bAbI task)
            blank = ["-"] * (len(ks) + (2 if halt else 0))
            lines.append("| " + " | ".join([f"{name} {group}", str(g["n"]), *blank, pct(g["accuracy"]), "-"]) + " |")
    return "\n".join(lines)


def grid_table(metrics: Mapping[str, Any]) -> str:
    """Success per evaluation set of a numeric-env baseline (``train/sb3_baseline.py``)."""
    lines = ["| set | n | success | mean cells filled |", "|---|---|---|---|"]
    for key, value in metrics["success"].items():
        lines.append(f"| {key} | {metrics['n'][key]} | {pct(value)} | {metrics['filled'][key]:.1f} |")
    return "\n".join(lines)
