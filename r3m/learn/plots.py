"""The runs' figures. matplotlib's object-oriented ``Figure`` renders without pyplot, so nothing
here selects a global backend (headless machines and notebooks alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator


def plot_accuracy_vs_k(curves: Mapping[str, Mapping[int, float]], baseline: Mapping[str, float], path: Path,
                       harder: Mapping[str, Mapping[int, float]] | None = None) -> None:
    """Accuracy against refinement steps K per family (log2 x), dense baseline dashed."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for i, (fam, curve) in enumerate(curves.items()):
        ks = sorted(curve)
        color = f"C{i}"
        ax.plot(ks, [curve[k] for k in ks], "o-", color=color, label=f"R3M {fam}")
        if harder and fam in harder:
            ax.plot(ks, [harder[fam][k] for k in ks], "s:", color=color, alpha=0.7, label=f"R3M {fam} (harder level)")
        if fam in baseline:
            ax.axhline(baseline[fam], color=color, ls="--", lw=1, label=f"dense {fam} (same params)")
    ax.set_xscale("log", base=2)
    ks = sorted({k for curve in curves.values() for k in curve})
    ax.xaxis.set_major_locator(FixedLocator(ks))  # K is an integer: tick exactly the evaluated values
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("refinement steps K")
    ax.set_ylabel("exact accuracy (test split)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_halting_steps(steps: Mapping[str, Mapping[int, Sequence[float]]], path: Path) -> None:
    """Histogram of halting steps by difficulty level, one panel per family."""
    fams = list(steps)
    fig = Figure(figsize=(5 * max(1, len(fams)), 3.6))
    axes = fig.subplots(1, max(1, len(fams)), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        by_level = steps[fam]
        top = max((max(v) for v in by_level.values() if v), default=1)
        bins = [b + 0.5 for b in range(0, int(top) + 1)]
        ax.hist([list(v) for v in by_level.values()], bins=bins, label=[f"level {lv}" for lv in by_level])
        ax.set_title(f"{fam}: halting steps by difficulty")
        ax.set_xlabel("steps used")
        ax.set_ylabel("episodes")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_reward_curve(history: Sequence[Mapping[str, float]], start: float, end: float, path: Path) -> None:
    """Sampled training reward and pass@1 per RL iteration, with the test reward before and after."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    its = np.arange(1, len(history) + 1)
    for key, label in (("rl/reward", "train reward (sampled)"), ("rl/pass@1", "train pass@1 (sampled)")):
        ax.plot(its, [h[key] for h in history], label=label, alpha=0.8)
    ax.axhline(start, color="grey", ls="--", lw=1, label=f"test reward at start ({start:.3f})")
    ax.axhline(end, color="black", ls=":", lw=1, label=f"test reward at end ({end:.3f})")
    ax.set_xlabel("RL iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("reward / success")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_training_curve(episodes: Sequence[tuple[int, float]], path: Path, title: str, window: int = 100) -> None:
    """Episode reward against env steps (each episode a dot, a moving mean over ``window`` episodes)."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    if episodes:
        steps, rewards = np.array(episodes, dtype=float).T
        ax.plot(steps, rewards, ".", alpha=0.15, ms=3, label="episode reward")
        w = min(window, len(rewards))
        smooth = np.convolve(rewards, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], smooth, "-", label=f"mean of the last {w} episodes")
        ax.legend(fontsize=7)
    ax.set_title(title)
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode reward")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_accuracy_vs_writes(sweeps: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> None:
    """Accuracy against memory writes per sample, one curve per family (the write gate's threshold
    rising from point to point); see ``accuracy_vs_writes_figure``."""
    accuracy_vs_writes_figure(sweeps).savefig(path, dpi=120)


def accuracy_vs_writes_figure(sweeps: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """The figure of ``plot_accuracy_vs_writes``. Sweeps often sit on one point (a closed write gate
    writes nothing at any threshold; an unlearned task scores chance at all of them), so the
    thresholds that land on the same point share one label (a sweep on one point is labelled in the
    legend), each curve's labels sit at their own height, and the writes axis starts at 0 and spans at
    least one write."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    markers = "osD^v<>"
    for i, (fam, sweep) in enumerate(sweeps.items()):
        points: dict[tuple[float, float], list[float]] = {}
        for p in sweep:
            points.setdefault((round(p["writes_per_sample"], 4), round(p["accuracy"], 4)), []).append(p["threshold"])
        xs, ys = [p["writes_per_sample"] for p in sweep], [p["accuracy"] for p in sweep]
        alone = f" (every threshold: {xs[0]:.2f} writes, {100 * ys[0]:.1f}%)" if len(points) == 1 and sweep else ""
        ax.plot(xs, ys, markers[i % len(markers)] + "-", color=f"C{i}", label=fam + alone, alpha=0.8,
                ms=8 - 1.5 * min(i, 3))  # later curves drawn smaller, so a curve on top of another shows both
        for (x, y), thresholds in points.items() if not alone else ():  # one point: the legend says it
            ax.annotate("t=" + ", ".join(f"{t:g}" for t in thresholds), (x, y), fontsize=6, color=f"C{i}",
                        textcoords="offset points", xytext=(6, 4 + 9 * i), va="bottom")
    top = max((p["writes_per_sample"] for sweep in sweeps.values() for p in sweep), default=0.0)
    ax.set_xlim(-0.02 * max(top, 1.0), max(top * 1.25, 1.0))
    ax.set_xlabel("memory writes per sample")
    ax.set_ylabel("exact accuracy (test split, trained levels)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_accuracy_matrix(matrices: Mapping[str, Sequence[Sequence[float]]], tasks: Sequence[str], path: Path) -> None:
    """Heat maps of R (rows: after stage i; columns: accuracy on task j), one panel per arm."""
    from r3m.learn.continual import average_accuracy, bwt

    arms = list(matrices)
    fig = Figure(figsize=(3.6 * max(1, len(arms)), 3.6))
    axes = fig.subplots(1, max(1, len(arms)), squeeze=False)[0]
    for n, (ax, arm) in enumerate(zip(axes, arms)):
        R = np.asarray(matrices[arm], dtype=float)
        image = ax.imshow(R, vmin=0.0, vmax=1.0, cmap="viridis")
        for i in range(R.shape[0]):
            for j in range(R.shape[1]):
                ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if R[i, j] < 0.6 else "black")
        ax.set_title(f"{arm}\nBWT {bwt(R.tolist()):+.3f}, ACC {average_accuracy(R.tolist()):.3f}", fontsize=8)
        ax.set_xticks(range(len(tasks)), labels=list(tasks), fontsize=7, rotation=30)
        ax.set_yticks(range(len(tasks)), labels=[f"after {t}" for t in tasks] if n == 0 else [], fontsize=7)
        ax.set_xlabel("accuracy on task")
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_loss_curves(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: Path, title: str = "") -> None:
    """Training loss against the step, one line per phase (log y where every loss is positive)."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for label, (steps, losses) in curves.items():
        ax.plot(steps, losses, "o-", label=label, lw=1.2, ms=2.5)  # a marker: a phase logged once still shows
    values = [v for _, losses in curves.values() for v in losses]
    if values and min(values) > 0:
        ax.set_yscale("log")
    if not curves:
        ax.text(0.5, 0.5, "no logged training steps", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimiser step (RL: iteration)")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_tool_use(success: Mapping[str, Mapping[str, float]], tools: Mapping[str, float | None], path: Path) -> None:
    """Stage 3: test success with and without tools at each measured point (``success``: point ->
    {"with_tools", "without_tools"}), and tool precision and recall (a missing value is named, not drawn)."""
    fig = Figure(figsize=(8.0, 3.6))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    points = list(success)
    x = np.arange(len(points))
    for i, key in enumerate(("with_tools", "without_tools")):
        vals = [success[p].get(key) or 0.0 for p in points]
        left.bar(x + (i - 0.5) * 0.38, vals, 0.38, label=key.replace("_", " "))
    left.set_xticks(x, points, fontsize=8)
    left.set_ylim(0, 1.05)
    left.set_ylabel("test success")
    left.legend(fontsize=7)
    left.grid(alpha=0.3, axis="y")
    names = list(tools)
    right.bar(range(len(names)), [tools[n] or 0.0 for n in names], color="C2")
    for i, n in enumerate(names):
        if tools[n] is None:
            right.text(i, 0.02, "not\nmeasurable", ha="center", fontsize=7, rotation=90)
    right.set_xticks(range(len(names)), names, fontsize=8)
    right.set_ylim(0, 1.05)
    right.set_title("need-based tool use", fontsize=9)
    right.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
