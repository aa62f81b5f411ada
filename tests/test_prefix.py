"""The prefix (running parity) family and its verifier."""

from __future__ import annotations

from r3m import envs
from r3m.verifiers.prefix import prefix_parity, verify


def test_prefix_parity_examples():
    assert prefix_parity("0110100") == "0100111"
    assert prefix_parity("1") == "1" and prefix_parity("") == ""


def test_verifier_cases_and_partial_credit():
    assert verify("0110", "0100").correct and verify("0110", " 01 00\n").correct
    v = verify("0110", "0101")
    assert not v.correct and v.score == 0.75
    assert verify("0110", "010").score == 0.0 and verify("0110", "01a0").score == 0.0
    assert verify("01x", "000").score == 0.0 and "malformed" in verify("", "0").reason


def test_levels_set_the_length_and_answers_verify():
    fam = envs.make_family("prefix")
    for level, (lo, hi) in {1: (6, 8), 3: (14, 16), 5: (24, 32)}.items():
        for i in range(50):
            inst = fam.instance("train", i, level)
            assert lo <= len(inst.data["bits"]) <= hi and inst.prompt == "prefix: " + inst.data["bits"]
            assert fam.verify(inst, inst.answer).correct
