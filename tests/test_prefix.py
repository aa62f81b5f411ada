"""The prefix (running parity) family and its verifier."""

from __future__ import annotations

import pytest

from r3m import envs
from r3m.envs.families.prefix import PrefixFamily
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


def test_whole_prompt_instances_are_unchanged():
    """Streaming added nothing to generation: the same seeds give the instances they always gave."""
    fam = envs.make_family("prefix")
    got = [fam.instance("train", i, lvl).prompt for i, lvl in ((0, 1), (1, 3), (2, 5))]
    assert got == ["prefix: 11000000", "prefix: 0001110100000000", "prefix: 1001111111011110001011111"]
    assert fam.instance("test", 0, 2).prompt == "prefix: 111000111000"


@pytest.mark.parametrize("chunk", [1, 3, 4, 32])
def test_stream_chunks_carry_the_parity(chunk):
    fam = PrefixFamily(chunk=chunk)
    for i in range(30):
        inst = fam.instance("train", i, 1 + i % 5)
        bits, steps = inst.data["bits"], fam.stream(inst)
        assert len(steps) == -(-len(bits) // chunk) and {s.kind for s in steps} == {"chunk"}
        assert steps[0].observation == "prefix: " + bits[:chunk]
        assert "".join(s.observation for s in steps[1:]) == bits[chunk:]  # later chunks: bits only
        assert all(len(s.observation) <= fam.max_stream_chars for s in steps)
        assert "".join(s.expected for s in steps) == inst.answer
        for k, step in enumerate(steps):  # each chunk's answer continues from the earlier bits' parity
            carry = bits[:k * chunk].count("1") % 2
            assert step.expected == prefix_parity(str(carry) + bits[k * chunk:(k + 1) * chunk])[1:]
        assert fam.verify_stream(inst, [s.expected for s in steps]).correct


def test_stream_verdict_is_the_verifier_on_the_joined_answers():
    fam = PrefixFamily(chunk=4)
    inst = next(fam.instance("train", i, 2) for i in range(100) if len(fam.instance("train", i, 2).data["bits"]) == 12)
    answers = [s.expected for s in fam.stream(inst)]
    flipped = answers[:1] + ["".join("1" if b == "0" else "0" for b in answers[1])] + answers[2:]
    verdict = fam.verify_stream(inst, flipped)
    assert not verdict.correct and verdict.score == 8 / 12
    assert fam.verify_stream(inst, answers[:2]).score == 0.0  # a missing chunk: wrong length
    with pytest.raises(ValueError, match="chunk"):
        PrefixFamily(chunk=0)
