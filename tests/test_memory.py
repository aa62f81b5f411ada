"""bAbI-style memory stories: generator consistency, answers, verifier and the bAbI loader."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r3m import envs
from r3m.envs.families.memory import LEVELS, LOCATIONS, OBJECTS, PEOPLE, load_babi
from r3m.verifiers.memory import verify

N_PER_LEVEL = 200
_MOVE = re.compile(r"(\w+) (?:moved|went|went back|journeyed|travelled) to the (\w+)\.")
_GET = re.compile(r"(\w+) (?:got|grabbed|picked up|took) the (\w+)( there)?\.")
_DROP = re.compile(r"(\w+) (?:dropped|discarded|put down|left) the (\w+)( there)?\.")


def read_story(prompt: str) -> str:
    """An independent reader: replays the story, asserts it is consistent, answers the question."""
    *story, question = prompt.split("\n")
    at, holder, lies, history = {}, {}, {}, {o: [] for o in OBJECTS}
    for line in story:
        if m := _MOVE.fullmatch(line):
            person, place = m.groups()
            assert place in LOCATIONS
            at[person] = place
            for obj, h in holder.items():
                if h == person and history[obj][-1] != place:
                    history[obj].append(place)
        elif m := _GET.fullmatch(line):
            person, obj = m.group(1), m.group(2)
            assert obj not in holder and person in at, line  # nobody else holds it; she is somewhere
            assert lies.get(obj, at[person]) == at[person], line  # picked up where it lies
            holder[obj] = person
            lies.pop(obj, None)
            if not history[obj] or history[obj][-1] != at[person]:
                history[obj].append(at[person])
        elif m := _DROP.fullmatch(line):
            person, obj = m.group(1), m.group(2)
            assert holder.get(obj) == person, line  # only the holder drops
            del holder[obj]
            lies[obj] = at[person]
        else:
            raise AssertionError(f"unknown sentence {line!r}")
    if m := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
        h = history[m.group(1)]
        assert h.count(m.group(2)) == 1 and h.index(m.group(2)) > 0
        return h[h.index(m.group(2)) - 1]
    if m := re.fullmatch(r"Where is the (\w+)\?", question):
        obj = m.group(1)
        return at[holder[obj]] if obj in holder else lies[obj]
    m = re.fullmatch(r"Where is (\w+)\?", question)
    assert m and m.group(1) in PEOPLE
    return at[m.group(1)]


def test_verifier_is_case_and_space_insensitive():
    assert verify("garden", "  Garden \n").correct
    assert verify("garden", "GARDEN").correct
    for bad in ("kitchen", "garden.", "the garden", "", "   "):
        v = verify("garden", bad)
        assert not v.correct and v.score == 0.0 and v.reason
    assert "garden" not in verify("garden", "kitchen").reason  # the reason never leaks the answer


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_stories_are_consistent_and_answers_right(level):
    fam = envs.make_family("memory")
    tasks = set()
    for i in range(N_PER_LEVEL):
        inst = fam.instance(("train", "test")[i % 2], i, level)
        lo, hi = LEVELS[level].sentences
        assert lo <= inst.prompt.count("\n") <= hi and len(inst.prompt) <= fam.max_prompt_chars
        assert read_story(inst.prompt) == inst.answer and inst.answer in LOCATIONS
        assert fam.verify(inst, inst.answer).correct and fam.expert_actions(inst, True) == [inst.answer]
        assert fam.verify(inst, "garbage").score == 0.0
        tasks.add(inst.data["task"])
    assert tasks == set(LEVELS[level].tasks)


def test_determinism():
    fam = envs.make_family("memory")
    assert [fam.instance("train", i, 5, seed=3) for i in range(5)] == [
        fam.instance("train", i, 5, seed=3) for i in range(5)]
    assert fam.instance("train", 0, 5, seed=3) != fam.instance("train", 0, 5, seed=4)


BABI_SAMPLE = """\
1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Sandra moved to the garden.
6 Where is Daniel? \thallway\t4
1 Mary got the milk there.
2 John moved to the bedroom.
3 Mary travelled to the kitchen.
4 Where is the milk? \tkitchen\t1 3
5 Mary journeyed to the office.
6 Mary dropped the milk.
7 Where was the milk before the office? \tkitchen\t1 3 5
"""


def test_load_babi_sample(tmp_path):
    path = tmp_path / "qa_sample.txt"
    path.write_text(BABI_SAMPLE)
    for source in (path, str(path), BABI_SAMPLE.splitlines()):
        insts = load_babi(source)
        assert [i.answer for i in insts] == ["bathroom", "hallway", "kitchen", "kitchen"]
        assert [i.difficulty for i in insts] == [1, 1, 2, 3]
        assert insts[1].prompt == ("Mary moved to the bathroom.\nJohn went to the hallway.\n"
                                   "Daniel went back to the hallway.\nSandra moved to the garden.\n"
                                   "Where is Daniel?")
        assert insts[2].prompt.startswith("Mary got the milk there.\n")  # a new story began
        assert insts[3].data["supporting"] == (1, 3, 5)
    fam = envs.make_family("memory")
    assert all(fam.verify(i, i.answer).correct for i in insts)
    assert not fam.verify(insts[0], "kitchen").correct
    with pytest.raises(ValueError, match="line number"):
        load_babi(["Mary moved to the bathroom."])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(PEOPLE), st.sampled_from(LOCATIONS), st.booleans()),
                         min_size=1, max_size=8), min_size=1, max_size=4))
def test_load_babi_round_trips_generated_files(stories):
    """Any file in bAbI's format: one instance per question, prompt = that story's statements."""
    lines, expected = [], []
    for story in stories:
        n, said, last = 0, [], {}
        for person, place, ask in story:
            n += 1
            said.append(f"{person} moved to the {place}.")
            lines.append(f"{n} {said[-1]}")
            last[person] = (place, n)
            if ask:
                n += 1
                lines.append(f"{n} Where is {person}? \t{place}\t{last[person][1]}")
                expected.append(("\n".join(said + [f"Where is {person}?"]), place))
    insts = load_babi(lines)
    assert [(i.prompt, i.answer) for i in insts] == expected
    assert all(read_story(p) == a for p, a in expected)
