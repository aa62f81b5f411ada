"""Verifier of the ``prefix`` family: running parity (prefix sums mod 2) of a bit string."""

from __future__ import annotations

from r3m.verifiers import RIGHT, Verdict, never_raises, wrong


def prefix_parity(bits: str) -> str:
    """``"0110"`` -> ``"0100"``: bit i of the output is the parity of bits 0..i of the input."""
    out, acc = [], 0
    for b in bits:
        acc ^= b == "1"
        out.append("1" if acc else "0")
    return "".join(out)


@never_raises
def verify(bits: str, answer: str) -> Verdict:
    """Correct iff ``answer`` (whitespace ignored) is the running parity of ``bits``.

    Partial credit: the fraction of positions right, when the answer is a bit string of the
    right length; 0 otherwise.
    """
    if not bits or set(bits) - {"0", "1"}:
        return wrong("malformed problem: expected a non-empty bit string")
    got = "".join(answer.split())
    want = prefix_parity(bits)
    if got == want:
        return RIGHT
    if len(got) != len(want) or set(got) - {"0", "1"}:
        return wrong(f"expected {len(want)} bits (0/1), got {len(got)} characters")
    right = sum(a == b for a, b in zip(got, want))
    return wrong(f"{len(want) - right} of {len(want)} bits wrong", right / len(want))
