"""The instruct family: constraints are checked, not strings; oracle replies meet them."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r3m.envs.families.instruct import (
    CATEGORIES,
    LEVELS,
    MAX_PROMPT,
    MAX_REPLY,
    REQUESTS,
    InstructFamily,
    apply_modifiers,
    sentences,
)
from r3m.verifiers.instruct import SpecError, load_spec, verify

FAMILY = InstructFamily()
PRINTABLE = {chr(c) for c in range(32, 127)}


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_oracle_meets_the_constraints_and_sizes(level):
    kinds = Counter()
    for i in range(200):
        inst = FAMILY.instance(("train", "test")[i % 2], i, level)
        assert FAMILY.verify(inst, inst.answer).correct, (inst.prompt, inst.answer)
        assert FAMILY.verify(inst, "garbage !!").score == 0.0
        assert FAMILY.expert_actions(inst, use_tools=True) == [inst.answer]
        assert len(inst.prompt) <= MAX_PROMPT and len(inst.answer) <= MAX_REPLY
        assert set(inst.prompt + inst.answer) <= PRINTABLE and inst.key == inst.prompt
        assert len(inst.data["mods"]) - (inst.data["request"] == "shout") == LEVELS[level].mods
        json.dumps(dict(inst.data))  # pure data
        kinds[inst.data["request"]] += 1
    assert len(kinds) == len(REQUESTS) if level < 5 else len(kinds) >= len(REQUESTS) - 1


def test_determinism_and_seeds():
    a = [FAMILY.instance("train", i, 4, seed=5) for i in range(50)]
    assert a == [FAMILY.instance("train", i, 4, seed=5) for i in range(50)]
    assert [x.prompt for x in a] != [FAMILY.instance("train", i, 4, seed=6).prompt for i in range(50)]


def _spec(content, *mods):
    return {"content": content, "mods": list(mods)}


FRUITS = {"check": "items", "n": 3, "pool": CATEGORIES["fruits"]}
HELLO = _spec({"check": "words", "words": ["hello", "anna"]},
              {"kind": "upper"}, {"kind": "end", "word": "done"})


@pytest.mark.parametrize("spec, answer, correct, score", [
    (_spec(FRUITS), "apple, pear, fig", True, 1.0),
    (_spec(FRUITS), "Kiwi, lemon and plum.", True, 1.0),
    (_spec(FRUITS), "apple, pear", False, 0.0),
    (_spec(FRUITS), "apple, pear, pear", False, 0.0),
    (_spec(FRUITS), "apple, pear, carrot", False, 0.0),
    (_spec({"check": "number", "value": 5}), "5", True, 1.0),
    (_spec({"check": "number", "value": 5}), "It has five letters.", True, 1.0),
    (_spec({"check": "number", "value": 5}), "4 or 5", False, 0.0),
    (_spec({"check": "number", "value": 5}), "one two three four five six seven eight 5", False, 0.0),
    (_spec({"check": "mention", "word": "paris", "avoid": ["rome"]}), "Tom lives in Paris.", True, 1.0),
    (_spec({"check": "mention", "word": "paris", "avoid": ["rome"]}), "Paris or Rome", False, 0.0),
    (_spec({"check": "words", "words": ["no"]}), "  No.\n", True, 1.0),
    (_spec({"check": "words", "words": ["no"]}), "yes", False, 0.0),
    (HELLO,
     "HELLO ANNA, DONE", True, 1.0),
    (HELLO,
     "Hello Anna, done", False, 2 / 3),
    (HELLO,
     "HELLO ANNA", False, 2 / 3),
    (HELLO,
     "hello anna", False, 1 / 3),
    (HELLO,
     "HELLO TOM, DONE", False, 0.0),
    (_spec({"check": "words", "words": ["yes"]}, {"kind": "quote"}, {"kind": "start", "word": "sure"}),
     '"Sure, yes"', True, 1.0),
    (_spec({"check": "words", "words": ["yes"]}, {"kind": "quote"}, {"kind": "start", "word": "sure"}),
     'Sure, yes', False, 2 / 3),
    (_spec({"check": "words", "words": ["yes"]}, {"kind": "lower"}), "yes", True, 1.0),
    (_spec({"check": "words", "words": ["yes"]}, {"kind": "lower"}), "Yes", False, 0.5),
])
def test_verifier_cases(spec, answer, correct, score):
    verdict = verify(spec, answer)
    assert (verdict.correct, verdict.score) == (correct, pytest.approx(score)), verdict.reason
    assert verify(json.dumps(spec), answer) == verdict


def test_any_reply_meeting_the_constraints_is_correct():
    """Replies other than the oracle's: other items, other wording, same constraints."""
    checked = 0
    for i in range(300):
        inst = FAMILY.instance("train", i, 1)
        content = inst.data["content"]
        if content["check"] == "items":
            others = [w for w in content["pool"] if w not in inst.answer.lower()][: content["n"]]
            assert FAMILY.verify(inst, " and ".join(others)).correct
        elif content["check"] == "number":
            assert FAMILY.verify(inst, f"The answer is {content['value']}.").correct
            assert not FAMILY.verify(inst, f"The answer is {content['value'] + 1}.").correct
        elif content["check"] == "mention":
            assert FAMILY.verify(inst, f"In {content['word'].title()}, I think.").correct
        else:
            continue
        checked += 1
    assert checked > 50


def test_apply_modifiers():
    mods = [{"kind": "start", "word": "sure"}, {"kind": "end", "word": "bye"}, {"kind": "quote"}]
    assert apply_modifiers("hello Anna", mods) == '"Sure, hello Anna, bye"'
    assert apply_modifiers("yes", [{"kind": "upper"}]) == "YES"


@pytest.mark.parametrize("spec", [
    "{", "[]", "null", json.dumps({"content": {"check": "eval", "code": "1"}}),
    {"content": {"check": "words"}},
    {"content": {"check": "items", "n": 2, "pool": []}, "mods": [{"kind": "x"}]},
    {"content": {"check": "number", "value": 1}, "mods": [{"kind": "end"}]}, {}, {"mods": []},
])
def test_bad_specs_score_zero(spec):
    verdict = verify(spec, "anything")
    assert not verdict.correct and verdict.score == 0.0 and verdict.reason


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=8), kids, max_size=4)))
def test_load_spec_only_raises_spec_error(data):
    for spec in (data, {"content": data, "mods": data}, json.dumps(data)):
        try:
            load_spec(spec)
        except SpecError:
            pass
        verdict = verify(spec, "x")
        assert 0.0 <= verdict.score <= 1.0 and verdict.reason


def test_sentences_are_plain_english():
    rng = np.random.default_rng(0)
    out = sentences(rng, 300)
    assert out == sentences(np.random.default_rng(0), 300) and len(set(out)) > 150
    for s in out:
        assert s[0].isupper() and s.endswith(".") and set(s) <= PRINTABLE and " a a" not in s
        assert not any(f" a {v}" in s for v in "aeiou")
