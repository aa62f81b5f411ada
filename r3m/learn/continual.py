"""Continual-learning measures over a sequence of tasks, and the write budget a model needs.

``R[i][j]`` is the accuracy on task j after training stage i (stages and tasks in the same order:
task j is learned at stage j), T the last stage. Following Lopez-Paz & Ranzato (2017, GEM):

- average accuracy ACC = mean_j R[T][j];
- backward transfer BWT = mean_{j<T} (R[T][j] - R[j][j]) (negative: forgetting);

and Chaudhry et al. (2018, RWalk): forgetting of task j < T = max_{j<=i<T} R[i][j] - R[T][j].

``writes_to_target``: from a sweep of the episodic memory's write threshold, the fewest writes
per sample from which on accuracy stays within ``tol`` of the unrestricted model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Matrix = Sequence[Sequence[float]]


def _check(R: Matrix) -> int:
    """T, the index of the last stage, after checking that R is square (a row per stage, a column per task)."""
    if not R or any(len(row) != len(R) for row in R):
        raise ValueError(f"need a square accuracy matrix (a row per stage, a column per task), got {R!r}")
    return len(R) - 1


def average_accuracy(R: Matrix) -> float:
    """ACC = mean over tasks of the accuracy after the last stage."""
    T = _check(R)
    return float(np.mean(R[T]))


def bwt(R: Matrix) -> float:
    """BWT = mean_{j<T} (R[T][j] - R[j][j]); 0.0 for a single stage (nothing to forget)."""
    T = _check(R)
    if T == 0:
        return 0.0
    return float(np.mean([R[T][j] - R[j][j] for j in range(T)]))


def forgetting(R: Matrix) -> list[float]:
    """Per task j < T: the best accuracy it had at any stage from j to T-1, minus its accuracy at T."""
    T = _check(R)
    return [float(max(R[i][j] for i in range(j, T)) - R[T][j]) for j in range(T)]


def writes_to_target(points: Sequence[tuple[float, float]], full_accuracy: float, tol: float = 0.01) -> float | None:
    """The fewest writes per sample w such that every point of the sweep with at least w writes per
    sample has accuracy >= ``full_accuracy - tol``; None when even the point with the most writes
    falls short. ``points``: (writes_per_sample, accuracy) pairs."""
    if not points:
        raise ValueError("writes_to_target needs at least one (writes, accuracy) point")
    target = full_accuracy - tol - 1e-12  # accuracies are means of 0/1: compare without float noise
    best = None
    for writes, acc in sorted(points, key=lambda p: (-p[0], -p[1])):  # from the most writes down
        if acc < target:
            break
        best = float(writes)
    return best


def ratio(after: float | None, before: float | None) -> float | None:
    """after / before (None when either is missing or before is 0)."""
    if after is None or before is None or before <= 0:
        return None
    return after / before
