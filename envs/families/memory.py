"""``memory``: bAbI-style stories (tasks 1-3: one, two and three supporting facts).

The prompt is a story, one sentence per line, then a question; the answer is one location::

    Mary moved to the bathroom.
    John got the football there.      <- only when John's location is known
    John travelled to the garden.
    Where is the football?            -> garden

Vocabulary and templates are bAbI's (Weston et al. 2015), so ``load_babi`` turns the real
test files into instances of this family, scored by the same verifier. People move between
rooms and get and drop objects in a consistent world: an object has at most one holder, only
its holder drops it, it is picked up only where it lies (or, before anyone has held it, by
anyone whose location is known), and it travels with its holder.

Questions: task 1 ``Where is Mary?`` (her last move); task 2 ``Where is the milk?`` (its holder's
last move, or where it was dropped); task 3 ``Where was the milk before the kitchen?`` (the
place before its only visit to the kitchen in its history of locations).

Levels (sentences before the question):
    1: task 1, 2-6        2: task 2, 4-8        3: task 3, 6-10
    4: task 2 or 3, 10-16                       5: task 3, 14-20
"""

from __future__ import annotations

import os
import re
from typing import Iterable, NamedTuple

import numpy as np

from r3m.envs.base import Instance, TaskFamily
from r3m.envs.text_env import TextTaskEnv
from r3m.verifiers import Verdict
from r3m.verifiers.memory import verify

PEOPLE = ("Mary", "John", "Daniel", "Sandra")
LOCATIONS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("apple", "football", "milk")
MOVE = ("moved to the", "went to the", "went back to the", "journeyed to the", "travelled to the")
GET = ("got the", "grabbed the", "picked up the", "took the")
DROP = ("dropped the", "discarded the", "put down the", "left the")


class Level(NamedTuple):
    tasks: tuple[int, ...]
    sentences: tuple[int, int]  # inclusive range


LEVELS = {
    1: Level((1,), (2, 6)),
    2: Level((2,), (4, 8)),
    3: Level((3,), (6, 10)),
    4: Level((2, 3), (10, 16)),
    5: Level((3,), (14, 20)),
}


class World:
    """The story's state: who is where, who holds what, where each object has been."""

    def __init__(self) -> None:
        self.at: dict[str, str] = {}
        self.holder: dict[str, str] = {}
        self.lies: dict[str, str] = {}  # dropped objects
        self.history: dict[str, list[str]] = {o: [] for o in OBJECTS}

    def where(self, obj: str) -> str | None:
        return self.at.get(self.holder[obj]) if obj in self.holder else self.lies.get(obj)

    def _visit(self, obj: str, place: str) -> None:
        if not self.history[obj] or self.history[obj][-1] != place:
            self.history[obj].append(place)

    def step(self, rng: np.random.Generator, objects: bool) -> str:
        """Apply one random valid event and return its sentence."""
        person = PEOPLE[rng.integers(len(PEOPLE))]
        here = self.at.get(person)
        held = [o for o in OBJECTS if self.holder.get(o) == person]
        free = [o for o in OBJECTS if o not in self.holder and self.lies.get(o, here) == here]
        kind = rng.choice(["move", "get", "drop"], p=[0.5, 0.3, 0.2]) if objects else "move"
        if kind == "get" and here is not None and free:
            obj = free[rng.integers(len(free))]
            self.holder[obj] = person
            self.lies.pop(obj, None)
            self._visit(obj, here)
            return f"{person} {GET[rng.integers(len(GET))]} {obj}{self._there(rng)}."
        if kind == "drop" and held:
            obj = held[rng.integers(len(held))]
            del self.holder[obj]
            self.lies[obj] = here
            return f"{person} {DROP[rng.integers(len(DROP))]} {obj}{self._there(rng)}."
        place = str(rng.choice([p for p in LOCATIONS if p != here]))
        self.at[person] = place
        for obj in held:
            self._visit(obj, place)
        return f"{person} {MOVE[rng.integers(len(MOVE))]} {place}."

    @staticmethod
    def _there(rng: np.random.Generator) -> str:
        return " there" if rng.random() < 0.5 else ""


def _question(rng: np.random.Generator, world: World, task: int) -> tuple[str, str] | None:
    if task == 1:
        options = [(f"Where is {p}?", world.at[p]) for p in PEOPLE if p in world.at]
    elif task == 2:
        options = [(f"Where is the {o}?", world.where(o)) for o in OBJECTS if world.where(o)]
    else:
        options = []
        for o, h in world.history.items():
            for i in range(1, len(h)):
                if h.count(h[i]) == 1:
                    options.append((f"Where was the {o} before the {h[i]}?", h[i - 1]))
    if not options:
        return None
    return options[rng.integers(len(options))]


class MemoryFamily(TaskFamily):
    name = "memory"
    max_prompt_chars = 1024
    max_answer_chars = 16

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        level = LEVELS[difficulty]
        for _ in range(10_000):
            task = int(level.tasks[rng.integers(len(level.tasks))])
            world = World()
            n = int(rng.integers(level.sentences[0], level.sentences[1] + 1))
            story = [world.step(rng, objects=task > 1) for _ in range(n)]
            qa = _question(rng, world, task)
            if qa is not None:
                prompt = "\n".join(story + [qa[0]])
                return Instance(self.name, difficulty, prompt, qa[1], key=prompt,
                                data={"expected": qa[1], "task": task})
        raise RuntimeError(f"memory: no story with a task-{level.tasks} question in 10000 draws")

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return verify(instance.data["expected"], answer)


def _task_of(question: str) -> int:
    if question.startswith("Where was "):
        return 3
    if question.startswith("Where is the "):
        return 2
    return 1


def load_babi(path_or_lines: str | os.PathLike | Iterable[str]) -> list[Instance]:
    """Instances from a bAbI file (``"1 Mary moved to the bathroom."``, question lines
    ``"3 Where is Mary? \\tbathroom\\t1"``); a line numbered 1 starts a new story.

    Each question becomes one instance whose prompt is the story's statements so far (earlier
    questions left out) and the question, in this family's format; ``difficulty`` is the bAbI
    task the question's form implies (1-3); ``data`` keeps the supporting fact numbers.
    """
    if isinstance(path_or_lines, (str, os.PathLike)):
        with open(path_or_lines, encoding="utf-8") as f:
            lines = f.read().splitlines()
    else:
        lines = list(path_or_lines)
    out, story = [], []
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        num, _, text = line.strip(" ").partition(" ")
        if not re.fullmatch(r"[0-9]+", num):  # ASCII digits only (str.isdigit takes any script's)
            raise ValueError(f"bAbI line {lineno}: expected a line number, got {line[:40]!r}")
        if int(num) == 1:
            story = []
        if "\t" not in text:
            story.append(text.strip())
            continue
        question, answer, *support = [part.strip() for part in text.split("\t")]
        prompt = "\n".join(story + [question])
        out.append(Instance("memory", _task_of(question), prompt, answer, key=prompt, data={
            "expected": answer, "task": _task_of(question),
            "supporting": tuple(int(s) for s in " ".join(support).split()),
        }))
    return out


class MemoryEnv(TextTaskEnv):
    """bAbI-style story questions as a text episode (levels in ``envs.families.memory``).

    ## Observation
    The prompt: a story of 2-20 sentences, one per line (``Mary moved to the bathroom.``,
    ``John got the football there.``, ``John dropped the football.``), then a question on the
    last line (``Where is Mary?``, ``Where is the football?``, ``Where was the football before
    the kitchen?``); at most 1024 characters. No tool applies.

    ## Action
    The final answer: one location word (``garden``). No tool applies: the expert answers
    directly (a tool call still runs the named registered tool and counts against the budget).

    Printable ASCII only, the answer at most 16 characters (``max_answer_chars``) once
    surrounding whitespace is stripped: other text ends the episode with reward 0
    (``TextTaskEnv``).

    ## Reward
    1 if the word matches, ignoring case and surrounding whitespace, else 0 (no partial credit).

    ## Episode End
    Terminated after the final answer; truncated (reward 0) past the call budget.
    """

    def __init__(self, family: str | TaskFamily = "memory", **kwargs):
        super().__init__(family, **kwargs)
