"""Regenerate the results the README shows: every run in ``PLAN``, one command.

    python bench/reproduce.py              # run every result that is missing or stale, then the report
    python bench/reproduce.py --list       # what each result is, and whether it is fresh
    python bench/reproduce.py --only imitate-default-cpu rl-prefix-halt-cpu
    python bench/reproduce.py --force      # rerun even fresh results

A result is ``results/<name>/metrics.json`` written by ``python <script> <args> --out results/<name>``.
It is fresh when (``staleness``) the commit that made it is an ancestor of HEAD with a clean tree,
and the configuration it recorded is what its command gives at HEAD (so a changed default or
option makes it stale). ``bench/report.py`` renders the README from these files and
``bench/report.py --check`` applies the same test. Runs marked ``gpu`` need ``--device cuda``
hardware and are skipped on a machine without it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


@dataclass(frozen=True)
class Job:
    name: str  # results/<name>
    script: str  # train/<module>.py
    args: tuple[str, ...]
    title: str
    kind: str  # how report.py renders it: imitate, seeds, memory, rl, stage0, plan
    gpu: bool = False

    @property
    def out(self) -> Path:
        return RESULTS / self.name

    @property
    def command(self) -> list[str]:
        return ["python", self.script, *self.args, "--out", f"results/{self.name}"]


MEMORY_WRITE = ("--families", "memory", "--stream", "--levels", "1", "--eval-levels", "1", "--baseline", "false",
                "--stage", "1", "--k-train", "4", "--batch-size", "8", "--steps", "800", "--eval-n", "100",
                "--eval-ks", "1", "2", "4", "--mem-slots", "16", "--write-budget", "16", "--preset", "cpu-tiny",
                "--threads", "2")


def _seed_jobs() -> list[Job]:
    jobs = [Job(f"imitate-seed{s}-cpu", "train/imitate.py", ("--seed", str(s), "--stage", "1", "--baseline", "false"),
                f"Stage 1, seed {s}", "seeds") for s in range(5)]
    jobs += [Job(f"imitate-lr{tag}-cpu", "train/imitate.py", ("--lr", lr, "--stage", "1", "--baseline", "false"),
                 f"Stage 1, seed 0, learning rate x{tag}", "seeds") for tag, lr in (("0.5", "1e-3"), ("2", "4e-3"))]
    return jobs


# arithmetic without tools by imitation (levels 1-2): a model between the default run's and TRM's size
ARITHMETIC = ("--families", "arithmetic", "--levels", "1", "2", "--preset", "cpu-small", "--steps", "3000",
              "--tool-fraction", "0", "--stage", "1", "--baseline", "false")

# Sudoku levels 1-2 without tools (issue: at most 20 CPU minutes on 2 cores): the cells view (peer attention,
# predictions fed back), two segments per batch with the state carried, the weights' average; the dense
# baselines on R3M's first 800 batches (a compute-matched one backpropagates through all its 17 layers)
SUDOKU = ("--families", "sudoku", "--levels", "1", "2", "--preset", "cpu-small", "--threads", "2", "--stage", "1",
          "--segments", "2", "--ema", "0.999", "--curriculum", "0", "--tool-fraction", "0")
# halting at evaluation by the stable rule (a row stops when its answer has held for 2 steps), against K=64
SUDOKU_RUN = (*SUDOKU, "--steps", "1600", "--baseline-steps", "800", "--halt-rule", "stable")
# each training ingredient off in turn, at a short budget (300 steps, about 3 minutes each)
SUDOKU_SHORT = (*SUDOKU, "--steps", "300", "--baseline", "false", "--eval-n", "50", "--eval-ks", "1", "8", "16", "32")
SUDOKU_ABLATIONS = {"all": (), "peers-off": ("--view", "cells-all"), "segments-off": ("--segments", "1"),
                    "ema-off": ("--ema", "0"), "augment-off": ("--augment", "false"),
                    "hard-levels": ("--levels", "1", "2", "4", "--eval-levels", "1", "2", "3", "4"),
                    "chars-view": ("--char-view",)}


def _sudoku_ablation_jobs() -> list[Job]:
    return [Job(f"sudoku-ablation-{name}-cpu", "train/imitate.py", (*SUDOKU_SHORT, *extra),
                f"Sudoku ingredients at 300 steps: {name}", "sudoku-ablation") for name, extra in SUDOKU_ABLATIONS.items()]


# parity needs K=8 and a longer warm start than the tool families (the same recipe as imitate's default)
PREFIX_RL = ("--env", "prefix-v0", "--levels", "1", "2", "3", "--k", "8", "--warm-steps", "2000",
             "--warm-curriculum", "0.5", "--baselines", "false")

PLAN: list[Job] = [
    Job("imitate-default-cpu", "train/imitate.py", (), "Imitation, the default run: `python train/imitate.py`",
        "imitate"),
    *_seed_jobs(),
    Job("imitate-baseline-lrs-cpu", "train/imitate.py", ("--stage", "1", "--baseline-lrs", "1e-3", "2e-3", "4e-3"),
        "The dense baselines at three learning rates (the sweep behind the default run's one rate)", "imitate"),
    Job("imitate-arithmetic-cpu", "train/imitate.py", ARITHMETIC,
        "Arithmetic without tools, by imitation, through the place-value view", "imitate"),
    Job("imitate-arithmetic-chars-cpu", "train/imitate.py", (*ARITHMETIC, "--char-view"),
        "Arithmetic without tools through the character view, the same budget (the view's ablation)", "imitate"),
    Job("imitate-sudoku-cpu", "train/imitate.py", SUDOKU_RUN,
        "Sudoku without tools (levels 1-2) by imitation through the cells view, with the dense baselines", "imitate"),
    *_sudoku_ablation_jobs(),
    Job("memory-stream-cpu", "train/imitate.py",
        ("--families", "memory", "prefix", "--stream", "--distractors", "0.5", "--levels", "1", "2", "3",
         "--eval-levels", "1", "2", "3", "4", "5", "6", "--baseline", "false", "--stage", "1", "--k-train", "4",
         "--batch-size", "8", "--steps", "1000", "--eval-n", "50", "--eval-ks", "4", "--mem-slots", "16",
         "--write-budget", "16"),
        "Episodic memory on streamed episodes", "memory"),
    *[Job(f"memory-write-{name}-cpu", "train/imitate.py", (*MEMORY_WRITE, *extra), title, "memory")
      for name, extra, title in (
          ("mean", (), "Episodic memory, streamed task-1 stories: each write keeps the sentence's mean (words view)"),
          ("sep", ("--view", "words-sep"),
           "The same run with each write keeping the `<sep>` state (the write's ablation, `--view words-sep`)"))],
    Job("rl-prefix-cpu", "train/rl_verify.py", PREFIX_RL, "RL on prefix-v0 at fixed K", "rl"),
    Job("rl-prefix-halt-cpu", "train/rl_verify.py", (*PREFIX_RL, "--halt"),
        "RL on prefix-v0 with the halting step in the sampled action (its compute charged in the reward)", "rl"),
    *[Job(f"rl-{env}-seed{s}-cpu", "train/rl_verify.py", ("--env", f"{env}-v0", "--seed", str(s)),
          f"RL with tools on {env}-v0, seed {s}", "rl") for env in ("arithmetic", "listops", "sudoku")
      for s in range(3)],
    Job("imitate-stage0-cpu", "train/imitate.py", ("--stage", "0"), "Stage 0: dense language model", "stage0"),
    Job("plan-quick-cpu", "train/run_plan.py", ("--quick",),
        "The plan, Stage 0 to Stage 4, at the quick budget (each stage from the previous one's checkpoint)", "plan"),
]


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def script_config(job: Job) -> dict:
    """The configuration ``job``'s command gives at HEAD, as the run records it."""
    from r3m.learn.cli import parse_config
    from r3m.learn.run import RESUMABLE, jsonable

    module = importlib.import_module("r3m.train." + Path(job.script).stem)
    cfg = parse_config(module.Config, [*job.args, "--out", f"results/{job.name}"])
    return {k: v for k, v in jsonable(cfg).items() if k not in (*RESUMABLE, "out")}


def staleness(job: Job) -> str | None:
    """Why ``results/<job.name>`` does not show what the job's command gives at HEAD (None: fresh)."""
    path = job.out / "metrics.json"
    if not path.exists():
        return "missing"
    m = json.loads(path.read_text())
    prov = m.get("provenance") or {}
    commit = prov.get("commit")
    if not commit:
        return "no commit recorded"
    if prov.get("dirty"):
        return f"made from uncommitted changes on top of {commit[:7]}"
    if git("merge-base", "--is-ancestor", commit, "HEAD").returncode != 0:
        return f"commit {commit[:7]} is not an ancestor of HEAD"
    from r3m.learn.run import RESUMABLE

    recorded = {k: v for k, v in json.loads(json.dumps(m.get("config", {}))).items() if k not in (*RESUMABLE, "out")}
    expected = json.loads(json.dumps(script_config(job)))
    changed = sorted(k for k in set(recorded) | set(expected) if recorded.get(k) != expected.get(k))
    if changed:
        return "its configuration differs from the command's at HEAD: " + ", ".join(
            f"{k}={recorded.get(k)!r} (now {expected.get(k)!r})" for k in changed[:6])
    return None


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def prune(out: Path) -> None:
    """Keep what a result is (``metrics.json``, its plots, a plan's ``plan.json`` and ``report.md``);
    checkpoints, TensorBoard logs, scalar streams and a plan's stage folders stay out of the repository
    (the command regenerates them)."""
    if not out.exists():
        return
    for path in out.iterdir():
        if path.name not in ("metrics.json", "plan.json") and path.suffix not in (".png", ".md"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--only", nargs="*", default=[], help="result names to consider (default: all)")
    parser.add_argument("--list", action="store_true", help="print each result and whether it is fresh")
    parser.add_argument("--force", action="store_true", help="rerun fresh results too")
    parser.add_argument("--no-report", action="store_true",
                        help="leave the README alone (several reproduce processes at once; run report.py after)")
    args = parser.parse_args()
    names = {j.name for j in PLAN}
    unknown = [n for n in args.only if n not in names]
    if unknown:
        parser.error(f"unknown result(s) {unknown}; known: {sorted(names)}")
    jobs = [j for j in PLAN if not args.only or j.name in args.only]
    if args.list:
        for j in jobs:
            print(f"{j.name:32s} {staleness(j) or 'fresh'}\n    {' '.join(j.command)}")
        return
    if git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)results").stdout.strip():
        sys.exit("reproduce: commit your changes first (a result names the commit that made it)")
    cuda = has_cuda()
    for j in jobs:
        reason = "forced" if args.force else staleness(j)
        if reason is None:
            print(f"[reproduce] {j.name}: fresh")
            continue
        if j.gpu and not cuda:
            print(f"[reproduce] {j.name}: needs a GPU, skipped ({reason})")
            continue
        print(f"[reproduce] {j.name}: {reason}; running {' '.join(j.command)}", flush=True)
        if j.out.exists():
            shutil.rmtree(j.out)
        t0 = time.time()
        proc = subprocess.run([sys.executable, *j.command[1:]], cwd=ROOT)
        print(f"[reproduce] {j.name}: exit {proc.returncode} after {time.time() - t0:.0f} s", flush=True)
        prune(j.out)
    if not args.no_report:
        subprocess.run([sys.executable, "bench/report.py"], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
