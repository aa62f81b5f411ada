"""Verifiers: pure functions from (problem, answer text) to a ``Verdict``.

Rules every verifier follows (tests/test_verifiers.py fuzzes them):
- no randomness, no I/O, no torch: the env reward and every evaluation call the same function;
- never raises, whatever string it gets: bad input is ``Verdict(False, 0.0, reason)``;
- ``score`` is in [0, 1]; each family documents its partial credit; ``correct`` implies score 1.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

MAX_ANSWER_CHARS = 100_000


class Verdict(NamedTuple):
    correct: bool
    score: float
    reason: str


def wrong(reason: str, score: float = 0.0) -> Verdict:
    return Verdict(False, float(score), reason)


RIGHT = Verdict(True, 1.0, "correct")


def never_raises(fn: Callable[..., Verdict]) -> Callable[..., Verdict]:
    """Turn any exception inside a verifier into a zero verdict, and reject non-str / huge answers."""

    @functools.wraps(fn)
    def wrapper(problem, answer, *args, **kwargs) -> Verdict:
        if not isinstance(answer, str):
            return wrong(f"answer must be a string, got {type(answer).__name__}")
        if len(answer) > MAX_ANSWER_CHARS:
            return wrong(f"answer too long ({len(answer)} characters)")
        try:
            verdict = fn(problem, answer, *args, **kwargs)
        except Exception as exc:
            return wrong(f"unparseable answer ({type(exc).__name__}: {str(exc)[:80]})")
        score = min(1.0, max(0.0, float(verdict.score)))
        return Verdict(bool(verdict.correct), 1.0 if verdict.correct else score, verdict.reason)

    return wrapper


def normalize(text: str) -> str:
    """Collapse whitespace; the shared tolerance for free-form answers."""
    return " ".join(text.split())
