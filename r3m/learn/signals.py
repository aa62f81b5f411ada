"""The research plan's early-warning signals, detected from a run's measurements.

Each check returns ``Signal``s naming what went wrong and the remedy the plan gives, so a
run reports them in its log and in ``metrics.json`` instead of leaving them to be noticed.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence


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
                   min_gain: float = 0.10, tol: float = 0.01, longer_min: float = 0.85) -> dict:
    """Stage 1's exit criterion on one family's accuracy-vs-K curve: K=k_mid at least K=k_low +
    ``min_gain``, K=k_high at least K=k_mid - ``tol``, and the longer untrained level at least
    ``longer_min`` at K=k_high. Keys may be ints or strings (JSON); a missing K fails its check."""
    def at(c, k):
        if c is None:
            return None
        return c.get(k, c.get(str(k)))

    a, b, c, d = at(curve, k_low), at(curve, k_mid), at(curve, k_high), at(longer, k_high)
    checks = {"k_helps": a is not None and b is not None and b >= a + min_gain,
              "no_overthinking": b is not None and c is not None and c >= b - tol,
              "longer": d is not None and d >= longer_min}
    return {f"K{k_low}": a, f"K{k_mid}": b, f"K{k_high}": c, f"longer_K{k_high}": d, "checks": checks,
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
    """The median gradient norm of a phase and how many norms exceed ``spike_factor`` times it."""
    finite = sorted(g for g in grad_norms if math.isfinite(g))
    if not finite:
        return {"median": 0.0, "spikes": 0}
    median = finite[len(finite) // 2]
    return {"median": median, "spikes": sum(1 for g in finite if g > spike_factor * median)}


def instability(grad_norms: Sequence[float], nan_steps: int, spike_factor: float = 10.0,
                phase: str = "") -> list[Signal]:
    """NaN/inf losses or gradients, or gradient-norm spikes far above the median of the same phase
    (one model: pooling models with different gradient scales would call every norm a spike)."""
    signals = []
    where = f"{phase}: " if phase else ""
    if nan_steps:
        signals.append(Signal("nan", f"{where}{nan_steps} steps had NaN/inf loss or gradients (skipped)",
                              "lower the learning rate, use a smaller eta, tighten norms and gradient clipping"))
    finite = [g for g in grad_norms if math.isfinite(g)]
    if len(finite) >= 20:
        stats = spike_stats(finite, spike_factor)
        if stats["spikes"]:
            signals.append(Signal(
                "grad_spikes", f"{where}{stats['spikes']} gradient norms above {spike_factor:g}x the median "
                               f"({stats['median']:.3g})",
                "use a smaller eta (slower mixing), tighter norms / gradient clipping, or a lower learning rate"))
    return signals


def _fmt(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}: {v:+.3f}" for k, v in values.items())
