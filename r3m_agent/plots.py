"""The run's figures (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy_vs_k(curves: Mapping[str, Mapping[int, float]], baseline: Mapping[str, float], path: Path,
                       harder: Mapping[str, Mapping[int, float]] | None = None) -> None:
    """Accuracy against refinement steps K per family (log2 x), dense baseline dashed."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (fam, curve) in enumerate(curves.items()):
        ks = sorted(curve)
        color = f"C{i}"
        ax.plot(ks, [curve[k] for k in ks], "o-", color=color, label=f"R3M {fam}")
        if harder and fam in harder:
            ax.plot(ks, [harder[fam][k] for k in ks], "s:", color=color, alpha=0.7, label=f"R3M {fam} (harder level)")
        if fam in baseline:
            ax.axhline(baseline[fam], color=color, ls="--", lw=1, label=f"dense {fam} (same params)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("refinement steps K")
    ax.set_ylabel("exact accuracy (test split)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_halting_steps(steps: Mapping[str, Mapping[int, Sequence[float]]], path: Path) -> None:
    """Histogram of halting steps by difficulty level, one panel per family."""
    fams = list(steps)
    fig, axes = plt.subplots(1, max(1, len(fams)), figsize=(5 * max(1, len(fams)), 3.6), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        by_level = steps[fam]
        top = max((max(v) for v in by_level.values() if v), default=1)
        bins = [b + 0.5 for b in range(0, int(top) + 1)]
        ax.hist([list(v) for v in by_level.values()], bins=bins, label=[f"level {lv}" for lv in by_level])
        ax.set_title(f"{fam}: halting steps by difficulty")
        ax.set_xlabel("steps used")
        ax.set_ylabel("episodes")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
