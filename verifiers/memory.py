"""Verifier of the ``memory`` family (bAbI-style stories): one-word answers."""

from __future__ import annotations

from r3m.verifiers import RIGHT, Verdict, never_raises, wrong


@never_raises
def verify(expected: str, answer: str) -> Verdict:
    """Correct iff ``answer`` is ``expected`` up to case and surrounding/repeated whitespace.

    No partial credit: the answer is one word (a location), right or wrong.
    """
    got = " ".join(answer.split()).lower()
    if not got:
        return wrong("empty answer")
    if got == " ".join(expected.split()).lower():
        return RIGHT
    return wrong(f"expected a different word than {got[:24]!r}")
