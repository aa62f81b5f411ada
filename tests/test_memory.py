"""bAbI-style memory stories: generator consistency, answers, verifier and the bAbI loader."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r3m import envs
from r3m.envs.families import memory
from r3m.envs.families.memory import LEVELS, LOCATIONS, OBJECTS, PEOPLE, load_babi
from r3m.verifiers.memory import verify

N_PER_LEVEL = 100
_MOVE = re.compile(r"(\w+) (?:moved|went|went back|journeyed|travelled) to the (\w+)\.")
_GET = re.compile(r"(\w+) (?:got|grabbed|picked up|took) the (\w+)( there)?\.")
_DROP = re.compile(r"(\w+) (?:dropped|discarded|put down|left) the (\w+)( there)?\.")
_NOISE = re.compile(r"(?:\w+ (?:is hungry|is tired|is thirsty|is bored|yawned|smiled|sighed|laughed)"
                    r"|The weather was nice|It started to rain|The sun came out|It was a quiet day)\.")


class Reader:
    """An independent reader: replays a story, asserts that some hidden world fits it, and infers
    what it can (a person who picks up an object known to lie somewhere is there)."""

    def __init__(self) -> None:
        self.at, self.implied, self.holder, self.lies = {}, {}, {}, {}
        self.history = {o: [] for o in OBJECTS}
        self.early = set()  # objects picked up before the getter's location was stated

    def loc(self, person):
        return self.at.get(person) or self.implied.get(person)

    def where(self, obj):
        return self.loc(self.holder[obj]) if obj in self.holder else self.lies.get(obj)

    def read(self, line: str) -> None:
        if m := _MOVE.fullmatch(line):
            person, place = m.groups()
            assert place in LOCATIONS and place != self.loc(person), line  # a move goes elsewhere
            self.at[person] = place
            self.implied.pop(person, None)
        elif m := _GET.fullmatch(line):
            person, obj = m.group(1), m.group(2)
            assert obj not in self.holder, line  # nobody else holds it
            here, there = self.loc(person), self.lies.get(obj)
            assert here is None or there is None or here == there, line  # picked up where it lies
            if here is None and there is not None:
                self.implied[person] = there
            if person not in self.at:
                self.early.add(obj)
            self.holder[obj] = person
            self.lies.pop(obj, None)
        elif m := _DROP.fullmatch(line):
            person, obj = m.group(1), m.group(2)
            assert self.holder.get(obj) == person, line  # only the holder drops
            del self.holder[obj]
            self.lies[obj] = self.loc(person)
        else:
            raise AssertionError(f"unknown sentence {line!r}")
        for obj, visits in self.history.items():
            place = self.where(obj)
            if place is not None and (not visits or visits[-1] != place):
                visits.append(place)

    def answer(self, question: str) -> str:
        if m := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
            visits, place = self.history[m.group(1)], m.group(2)
            last = len(visits) - 1 - visits[::-1].index(place)  # the LAST visit to the place
            assert last > 0 and last == len(visits) - 1, (visits, place)  # published: its latest place
            return visits[last - 1]
        if m := re.fullmatch(r"Where is the (\w+)\?", question):
            return self.where(m.group(1))
        m = re.fullmatch(r"Where is (\w+)\?", question)
        assert m and m.group(1) in PEOPLE
        return self.at[m.group(1)]


def read_story(prompt: str, kinds=None) -> tuple[str, Reader]:
    """The reader's answer to the prompt's question (distractors, marked in ``kinds``, skipped)."""
    *story, question = prompt.split("\n")
    kinds = kinds or ("fact",) * len(story)
    assert len(kinds) == len(story)
    reader = Reader()
    for line, kind in zip(story, kinds):
        if kind == "distractor":
            assert _NOISE.fullmatch(line) and not any(w in line for w in LOCATIONS + OBJECTS), line
        else:
            assert kind == "fact" and not _NOISE.fullmatch(line), line
            reader.read(line)
    return reader.answer(question), reader


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
    tasks, lengths = set(), []
    lo, hi = LEVELS[level].sentences
    for i in range(N_PER_LEVEL if level < 7 else N_PER_LEVEL // 4):
        inst = fam.instance(("train", "test")[i % 2], i, level)
        lengths.append(inst.prompt.count("\n"))
        assert lo <= lengths[-1] <= hi and len(inst.prompt) <= fam.max_prompt_chars
        assert read_story(inst.prompt, inst.data["kinds"])[0] == inst.answer and inst.answer in LOCATIONS
        assert fam.verify(inst, inst.answer).correct and fam.expert_actions(inst, True) == [inst.answer]
        assert fam.verify(inst, "garbage").score == 0.0
        tasks.add(inst.data["task"])
    assert tasks == set(LEVELS[level].tasks)
    assert min(lengths) < lo + (hi - lo) / 3 and max(lengths) > hi - (hi - lo) / 3  # the band is used


def test_level_table_is_the_documented_one():
    """Each task: a trained band, a band about twice as long past it, and task 3 at published lengths."""
    rows = re.findall(r"(\d)\s+(\d)\s+(\d+)-(\d+)", memory.__doc__)
    assert {int(lv): ((int(t),), (int(a), int(b))) for lv, t, a, b in rows} == LEVELS
    for trained, longer in ((1, 4), (2, 5), (3, 6)):
        assert LEVELS[trained].tasks == LEVELS[longer].tasks
        (_, b), (c, d) = LEVELS[trained].sentences, LEVELS[longer].sentences
        assert c == b + 1 and d == 2 * b
    assert LEVELS[7].tasks == (3,) and LEVELS[7].sentences[1] > 200
    assert LEVELS[1].sentences == (2, 10)  # the published task 1: a question after every 2 sentences, 5 per story


def test_objects_are_picked_up_before_the_holder_is_placed():
    """As in the published tasks: the object's place is then unknown until the holder's is stated,
    and asked about only once it is."""
    fam = envs.make_family("memory")
    asked_early = 0
    for i in range(300):
        inst = fam.instance("train", i, 2)
        answer, reader = read_story(inst.prompt)
        obj = re.fullmatch(r"Where is the (\w+)\?", inst.prompt.split("\n")[-1]).group(1)
        asked_early += obj in reader.early
        assert answer == inst.answer
    assert asked_early >= 10
    story = "John got the milk there.\nMary moved to the bathroom.\nJohn travelled to the garden."
    reader = read_story(story + "\nWhere is the milk?")[1]
    assert reader.early == {"milk"} and reader.history["milk"] == ["garden"]


def test_where_was_uses_the_last_visit():
    """Task 3 when the object has been in the named place before: the place before its LAST visit,
    found in generated stories and scored right (and the place before the first visit scored wrong)."""
    fam = envs.make_family("memory")
    found = 0
    for i in range(200):
        inst = fam.instance("train", i, 6)
        answer, reader = read_story(inst.prompt)
        obj, place = re.fullmatch(r"Where was the (\w+) before the (\w+)\?", inst.prompt.split("\n")[-1]).groups()
        visits = reader.history[obj]
        first = visits.index(place)
        if first > 0 and visits[first - 1] != answer:
            found += 1
            assert answer == inst.answer == visits[-2] and visits[-1] == place
            assert fam.verify(inst, answer).correct and not fam.verify(inst, visits[first - 1]).correct
    assert found >= 5


def test_distractors_change_no_answer():
    fam = envs.make_family("memory")
    for i in range(60):
        inst = fam.instance("test", i, 1 + i % 7)
        assert fam.with_distractors(inst, 0.0) is inst
        noisy = fam.with_distractors(inst, 0.5)
        assert noisy == fam.with_distractors(inst, 0.5) and noisy != fam.with_distractors(inst, 1.0)
        assert (noisy.key, noisy.answer, noisy.difficulty) == (inst.key, inst.answer, inst.difficulty)
        kinds = noisy.data["kinds"]
        facts = [line for line, kind in zip(noisy.prompt.split("\n"), kinds) if kind == "fact"]
        assert "\n".join(facts + [noisy.prompt.split("\n")[-1]]) == inst.prompt  # the story, in order
        n = len(facts)
        assert kinds.count("distractor") in (int(0.5 * n), -(-n // 2))  # about one per two sentences
        assert read_story(noisy.prompt, kinds)[0] == inst.answer
        full = fam.with_distractors(inst, 1.0)
        assert len(full.prompt) <= fam.max_prompt_chars and full.data["kinds"].count("distractor") == n
    with pytest.raises(ValueError, match="already has distractors"):
        fam.with_distractors(noisy, 0.5)
    with pytest.raises(ValueError, match="rate"):
        fam.with_distractors(inst, 1.5)


def test_longest_prompt_fits():
    """The derived bound holds for a story of the most, and longest, sentences, at the highest rate."""
    fam = envs.make_family("memory")
    longest = max((fam.instance("train", i, 7) for i in range(40)), key=lambda inst: len(inst.prompt))
    assert len(fam.with_distractors(longest, 1.0).prompt) <= fam.max_prompt_chars
    assert fam.max_prompt_chars >= (2 * LEVELS[7].sentences[1] + 1) * 37  # 37: a longest line and newline
    assert max(len(line) for line in longest.prompt.split("\n")) <= fam.max_stream_chars


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
        # supporting facts become line numbers of the prompt's story (the file counts questions too)
        assert insts[1].data["supporting"] == (3,) and insts[3].data["supporting"] == (1, 3, 4)
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
            if last.get(person, (None,))[0] == place:
                continue  # bAbI never moves someone to where they are
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
    assert all(read_story(p)[0] == a for p, a in expected)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_supporting_facts_are_the_lines_the_answer_rests_on(level):
    """Task 1: the person's latest move, naming the answer; tasks 2-3: lines naming the object and
    the answer place; every supporting line is a story line; the file round trip keeps them."""
    fam = envs.make_family("memory")
    for i in range(N_PER_LEVEL):
        inst = fam.instance("test", i, level)
        *story, question = inst.prompt.split("\n")
        support = inst.data["supporting"]
        assert support and all(1 <= n <= len(story) for n in support) and list(support) == sorted(set(support))
        said = [story[n - 1] for n in support]
        if inst.data["task"] == 1:
            person = question.split()[-1].rstrip("?")
            (line,) = said
            assert _MOVE.fullmatch(line) and line.startswith(person + " ") and line.endswith(f" {inst.answer}.")
            assert not any(_MOVE.fullmatch(x) and x.startswith(person + " ") for x in story[support[0]:])
        else:
            obj = question.split()[3].rstrip("?")
            assert any(f" {obj}" in line for line in said) and any(f" {inst.answer}." in line for line in said)
        (back,) = load_babi(memory.export_babi([inst]))
        assert back.data["supporting"] == support


def test_distractors_keep_the_supporting_facts_and_the_stream_marks_them():
    """With distractors between the lines, the stream marks exactly the supporting facts (not a
    distractor), and an exported file numbers them as lines of the longer story."""
    fam = envs.make_family("memory")
    for i in range(40):
        plain = fam.instance("train", i, 2)
        noisy = fam.with_distractors(plain, 1.0)
        steps = fam.stream(noisy)
        marked = [s.observation for s in steps if s.support]
        story = plain.prompt.split("\n")[:-1]
        assert marked == [story[n - 1] for n in plain.data["supporting"]]
        assert all(s.kind == "fact" for s in steps if s.support)
        (back,) = load_babi(memory.export_babi([noisy]))
        lines = back.prompt.split("\n")
        assert [lines[n - 1] for n in back.data["supporting"]] == marked
