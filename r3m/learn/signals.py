"""The research plan's early-warning signals, detected from a run's measurements.

Each check returns ``Signal``s naming what went wrong and the remedy the plan gives, so a
run reports them in its log and in ``metrics.json`` instead of leaving them to be noticed.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import numpy as np


class Signal(NamedTuple):
    name: str
    message: str
    remedy: str

    def as_dict(self) -> dict[str, str]:
        return self._asdict()


def k_curve(accuracy_vs_k: Mapping[str, Mapping[int, float]], k_low: int = 1, k_high: int = 8,
            min_gain: float = 0.02, overthink_tol: float = 0.01) -> list[Signal]:
    """No family gains from more steps; or accuracy drops beyond the training K ("overthinking")."""
    signals = []
    gains = {f: acc[k_high] - acc[k_low] for f, acc in accuracy_vs_k.items() if k_low in acc and k_high in acc}
    if gains and max(gains.values()) < min_gain:
        signals.append(Signal(
            "no_k_helps",
            f"accuracy at K={k_high} is not above K={k_low} on any family (gains {_fmt(gains)})",
            "use families/levels that need several sequential steps, train with the progressive "
            "(random-K) loss, and raise K_train"))
    for fam, acc in accuracy_vs_k.items():
        beyond = [k for k in acc if k > k_high]
        if k_high in acc and beyond and min(acc[k] for k in beyond) < acc[k_high] - overthink_tol:
            worst = min(beyond, key=lambda k: acc[k])
            signals.append(Signal(
                "overthinking",
                f"{fam}: accuracy falls from {acc[k_high]:.3f} at K={k_high} to {acc[worst]:.3f} at K={worst}",
                "train with a random K / progressive loss (Deep Thinking) so every exit is a fixed point"))
    return signals


def exit_criterion(curve: Mapping, longer: Mapping | None, k_low: int = 1, k_mid: int = 8, k_high: int = 16,
                   min_gain: float = 0.10, tol: float = 0.01, longer_min: float = 0.90, longer_k: int | None = None,
                   longer_name: str = "longer") -> dict:
    """Stage 1's exit criterion on one family's accuracy-vs-K curve: K=k_mid at least K=k_low +
    ``min_gain``, K=k_high at least K=k_mid - ``tol``, and the longer untrained instances
    (``longer``: their accuracy-vs-K curve; the plan's test is strings twice the longest trained)
    at least ``longer_min`` at K=``longer_k`` (default k_high; a K that grows with the length).
    Keys may be ints or strings (JSON); a missing K fails its check."""
    def at(c, k):
        if c is None:
            return None
        return c.get(k, c.get(str(k)))

    longer_k = k_high if longer_k is None else longer_k
    a, b, c, d = at(curve, k_low), at(curve, k_mid), at(curve, k_high), at(longer, longer_k)
    checks = {"k_helps": a is not None and b is not None and b >= a + min_gain,
              "no_overthinking": b is not None and c is not None and c >= b - tol,
              longer_name: d is not None and d >= longer_min}
    return {f"K{k_low}": a, f"K{k_mid}": b, f"K{k_high}": c, f"{longer_name}_K{longer_k}": d, "checks": checks,
            "passed": all(checks.values())}


def halting_collapse(steps: Sequence[int], first_step_max: float = 0.9) -> list[Signal]:
    """Almost every sample halts at step 1."""
    if not steps:
        return []
    frac = sum(1 for s in steps if s <= 1) / len(steps)
    if frac <= first_step_max:
        return []
    return [Signal("halting_collapse", f"{frac:.0%} of samples halt at the first step",
                   "supervise halting (train the halting head on step losses), raise the penalty "
                   "shaping toward more steps (smaller lambda_p / larger beta), keep the halting bias negative")]


def write_spam(write_rate: float, saturated: float = 0.95) -> list[Signal]:
    """The write gate is (almost) always open: ``write_rate`` = writes per refinement step."""
    if write_rate <= saturated:
        return []
    return [Signal("write_spam", f"the write gate opens at {write_rate:.0%} of refinement steps",
                   "turn on the write-budget penalty (--write-penalty) or lower the write budget")]


def spike_stats(grad_norms: Sequence[float], spike_factor: float = 10.0) -> dict[str, float]:
    """The median gradient norm of a phase and how many norms exceed ``spike_factor`` times it
    (a description of the phase, not a warning: every healthy run has such isolated spikes)."""
    finite = sorted(g for g in grad_norms if math.isfinite(g))
    if not finite:
        return {"median": 0.0, "spikes": 0}
    median = finite[len(finite) // 2]
    return {"median": median, "spikes": sum(1 for g in finite if g > spike_factor * median)}


def instability(grad_norms: Sequence[float], nan_steps: int, *, losses: Sequence[float] | None = None,
                grad_clip: float = 1.0, window: int = 50, factor: float = 10.0, phase: str = "",
                restarts: Sequence[int] = ()) -> list[Signal]:
    """NaN/inf steps; gradient norms that stay high; a loss that climbs back toward its start.

    Isolated spikes are not instability: a healthy run's gradient norm falls by orders of magnitude
    as its loss does, and every batch of unlearned cases (a level the curriculum just unlocked, a few
    hard instances) spikes far above the late median, so "norms above 10x the median" fired on
    every run (557 times on the default one at 100% accuracy). What is compared here is the median
    of a ``window`` of steps, a robust scale that a few spikes cannot move: with the lowest window
    median seen at least one window earlier (the phase's settled scale), and with ``grad_clip`` (a
    median above it means most of those updates were cut by clipping). ``losses`` are judged the same
    way against the first window: a loss that gives back more than half of what it gained (and at
    least doubles) has diverged; what it gained is counted from the higher of its stretch's start and
    the phase's (a stretch that starts near its floor, because the model already does most of a newly
    unlocked level, has little to give back: the default run's prefix loss wandering from 0.024 to
    0.056 at 100% accuracy is noise, not divergence). Phases shorter than two windows are judged on NaN steps alone.
    ``restarts``: steps where the task changed (a curriculum unlocked a harder level): the loss and
    the norms of new cases rise there by design, so each stretch between restarts is judged on its
    own (measured: arithmetic's level 2 unlocking took the loss from 0.01 back to 0.9)."""
    signals = []
    where = f"{phase}: " if phase else ""
    if nan_steps:
        signals.append(Signal("nan", f"{where}{nan_steps} steps had NaN/inf loss or gradients (skipped)",
                              "lower the learning rate, use a smaller eta, tighten norms and gradient clipping"))
    cuts = sorted({0, *(int(r) for r in restarts if 0 < r < len(grad_norms)), len(grad_norms)})
    norms = [g if math.isfinite(g) else float("nan") for g in grad_norms]
    rise = _first(lambda part: _sustained_rise(part, window, factor, floor=max(grad_clip, 0.0)), norms, cuts)
    if rise is not None:
        at, median, settled = rise
        clipped = f", {np.mean(np.asarray(norms[at:at + window]) > grad_clip):.0%} of them clipped at {grad_clip:g}" \
            if grad_clip > 0 else ""
        signals.append(Signal(
            "grad_spikes",
            f"{where}the gradient norm stayed high over steps {at + 1}-{at + window}: median {median:.3g}, "
            f"{median / settled:.0f}x the phase's settled scale ({settled:.3g}){clipped}",
            "use a smaller eta (slower mixing), tighter norms / gradient clipping, or a lower learning rate"))
    if losses is not None:
        finite = [v for v in losses if math.isfinite(v)]
        phase_start = float(np.median(finite[:window])) if len(finite) >= window else None
        blowup = _first(lambda part: _loss_blowup(part, window, phase_start), list(losses), cuts)
        if blowup is not None:
            at, median, best, start = blowup
            signals.append(Signal(
                "loss_blowup",
                f"{where}the loss climbed back to {median:.3g} over steps {at + 1}-{at + window} (median), from a "
                f"best of {best:.3g}, more than half way back to its start ({start:.3g})",
                "lower the learning rate or lengthen the warmup, tighten gradient clipping; resume from a checkpoint "
                "saved before the climb"))
    return signals


def _first(check, values: Sequence[float], cuts: Sequence[int]):
    """``check`` on each stretch of ``values`` between ``cuts`` (non-finite values left out); the
    first finding, its step counted from the phase's start."""
    for lo, hi in zip(cuts, cuts[1:]):
        part = [v for v in values[lo:hi] if math.isfinite(v)]
        found = check(part)
        if found is not None:
            return (found[0] + lo, *found[1:])
    return None


def _window_medians(values: Sequence[float], window: int) -> np.ndarray:
    return np.median(np.lib.stride_tricks.sliding_window_view(np.asarray(values, dtype=float), window), axis=1)


def _sustained_rise(norms: Sequence[float], window: int, factor: float,
                    floor: float) -> tuple[int, float, float] | None:
    """The first window whose median norm is above ``floor`` and ``factor`` times the lowest median
    of the windows that ended before it began: (its first step, its median, that settled median)."""
    if len(norms) < 2 * window:
        return None
    medians = _window_medians(norms, window)
    settled = np.maximum(np.minimum.accumulate(medians)[: len(medians) - window], 1e-12)
    later = medians[window:]
    bad = np.flatnonzero((later > factor * settled) & (later > floor))
    if not bad.size:
        return None
    i = int(bad[0])
    return i + window, float(later[i]), float(settled[i])


def _loss_blowup(losses: Sequence[float], window: int,
                 phase_start: float | None = None) -> tuple[int, float, float, float] | None:
    """The first window whose median loss exceeds both twice the best earlier window median and that
    best plus half the progress from the start (the first window's median, or ``phase_start`` when
    higher): (its first step, its median, best, start)."""
    if len(losses) < 2 * window:
        return None
    medians = _window_medians(losses, window)
    start = max(float(medians[0]), phase_start if phase_start is not None else -math.inf)
    best = np.minimum.accumulate(medians)[: len(medians) - window]
    later = medians[window:]
    bad = np.flatnonzero((later > 2 * best) & (later > best + 0.5 * (start - best)))
    if not bad.size:
        return None
    i = int(bad[0])
    return i + window, float(later[i]), float(best[i]), start


def _fmt(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}: {v:+.3f}" for k, v in values.items())
