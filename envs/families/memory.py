"""``memory``: bAbI stories, tasks 1-3 (one, two and three supporting facts), generated.

The prompt is a story, one sentence per line, then a question; the answer is one location::

    John got the football there.      <- John's location not stated yet: the football's is unknown
    Mary moved to the bathroom.
    John travelled to the garden.     <- now it is: the garden
    Where is the football?            -> garden

Vocabulary, templates and world rules are those of the published tasks (Weston et al. 2015,
"Towards AI-Complete Question Answering", generator github.com/facebookarchive/bAbI-tasks), so
``load_babi`` turns the released test files into instances of this family, scored by the same
verifier (for evaluation only: nothing here trains on bAbI files). As in bAbI's simulator the
world has a true state the story does not state: everyone and everything starts somewhere
(bAbI's world file fixes the start; here it is drawn per story), a person picks up an object
lying where she truly is, only its holder drops it, and it travels with its holder. So an
object can be picked up before its holder's location is stated; its location is then unknown
until that is stated. What the story has stated decides what is asked, and a question is asked
only when the story determines its answer:

- task 1 ``Where is Mary?``: her last move (stories of moves only);
- task 2 ``Where is the milk?``: its holder's stated location, or where it was dropped by
  someone whose location was stated;
- task 3 ``Where was the milk before the kitchen?``: the object's known locations over time
  (consecutive repeats merged, unknown periods skipped: ``Knowledge:get_value_history`` in the
  generator); as in the published ``WhereWasObject`` task the question names its latest known
  location and the answer is the one before. So when the object has been in the kitchen more
  than once, the answer is the place before its LAST visit there.

Levels (story sentences before the question; a trained band, one about twice as long, and the
published long stories). The published task 1 puts a question after every two sentences, five
per story: 2-10 sentences. Tasks 2 and 3 ask five questions per story at random points, so
their stories run long: up to about 90 sentences for task 2 and up to 320 for task 3
(End-To-End Memory Networks, Sukhbaatar et al. 2015, report stories of up to 320 sentences)::

    level  task  sentences         level  task  sentences
    1      1     2-10              4      1     11-20
    2      2     4-20              5      2     21-40
    3      3     6-30              6      3     31-60
                                   7      3     100-320 (published long stories)

Distractors (``with_distractors``, env argument ``distractors``): sentences with no world
information (``Mary is hungry.``, ``The weather was nice.``) inserted at about ``rate`` per story
sentence at seeded positions before the question; ``data["kinds"]`` marks each story line
``"fact"`` or ``"distractor"``. Streaming (``stream``): one story line per step, then the question.

View ``words`` (the default, ``WordsView``): the story as words (lower case, ``.`` and ``?`` as
words, anything outside the tasks' vocabulary ``<unk>``), each with its line's distance from the
last line, and the answer one choice among the six places, as memory networks read and answer
bAbI; spelled letter by letter (the character view ``chars``), a model that does not know the
place writes letter mixes and cannot reach even chance.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from typing import Iterable, NamedTuple

import numpy as np

from r3m.envs.base import Instance, StreamStep, TaskFamily
from r3m.envs.text_env import TextTaskEnv
from r3m.envs.views import CharView, SymbolView, Token
from r3m.verifiers import Verdict
from r3m.verifiers.memory import verify

PEOPLE = ("Mary", "John", "Daniel", "Sandra")
LOCATIONS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("apple", "football", "milk")
MOVE = ("moved to the", "went to the", "went back to the", "journeyed to the", "travelled to the")
GET = ("got the", "grabbed the", "picked up the", "took the")
DROP = ("dropped the", "discarded the", "put down the", "left the")
# Distractors: a person's state or the weather; never a place, an object, or a verb of the story.
PERSON_NOISE = ("is hungry.", "is tired.", "is thirsty.", "is bored.", "yawned.", "smiled.", "sighed.",
                "laughed.")
WORLD_NOISE = ("The weather was nice.", "It started to rain.", "The sun came out.", "It was a quiet day.")
MAX_DISTRACTOR_RATE = 1.0


class Level(NamedTuple):
    tasks: tuple[int, ...]
    sentences: tuple[int, int]  # inclusive range, distractors not counted


LEVELS = {
    1: Level((1,), (2, 10)),
    2: Level((2,), (4, 20)),
    3: Level((3,), (6, 30)),
    4: Level((1,), (11, 20)),
    5: Level((2,), (21, 40)),
    6: Level((3,), (31, 60)),
    7: Level((3,), (100, 320)),
}


def _longest(*parts: Iterable[str]) -> int:
    """Length of the longest sentence made of one choice from each part, joined by spaces."""
    return sum(max(len(p) for p in part) for part in parts) + len(parts) - 1


FACT_CHARS = max(_longest(PEOPLE, GET + DROP, OBJECTS, ("there.",)), _longest(PEOPLE, MOVE, LOCATIONS) + 1)
NOISE_CHARS = max(_longest(PEOPLE, PERSON_NOISE), _longest(WORLD_NOISE))
QUESTION_CHARS = len("Where was the  before the ?") + max(map(len, OBJECTS)) + max(map(len, LOCATIONS))
LINE_CHARS = max(FACT_CHARS, NOISE_CHARS, QUESTION_CHARS)
MAX_LINES = math.ceil(max(lv.sentences[1] for lv in LEVELS.values()) * (1 + MAX_DISTRACTOR_RATE)) + 1


class World:
    """A story's world: the true state, and what the story has stated about it."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.true_at = {p: _pick(rng, LOCATIONS) for p in PEOPLE}  # never shown
        self.true_lies = {o: _pick(rng, LOCATIONS) for o in OBJECTS}  # objects nobody holds
        self.holder: dict[str, str] = {}
        self.at: dict[str, str] = {}  # stated locations of people
        self.lies: dict[str, str] = {}  # stated places of objects nobody holds
        self.history: dict[str, list[str]] = {o: [] for o in OBJECTS}  # known locations over time
        # the supporting facts: story lines (0-based) that the stated state rests on
        self.line = -1
        self.at_line: dict[str, int] = {}  # the move that stated where a person is
        self.holder_line: dict[str, int] = {}  # the line that put an object in a hand
        self.lies_lines: dict[str, frozenset[int]] = {}  # the drop, and the dropper's move
        self.history_lines: dict[str, list[frozenset[int]]] = {o: [] for o in OBJECTS}

    def support(self, obj: str) -> frozenset[int]:
        """The lines that state where ``obj`` is now (``where``): its pick-up and its holder's
        latest move, or its drop and where the dropper then was."""
        if obj in self.holder:
            person = self.holder[obj]
            return frozenset({self.holder_line[obj], *([self.at_line[person]] if person in self.at_line else [])})
        return self.lies_lines.get(obj, frozenset())

    def where(self, obj: str) -> str | None:
        """Where the story says ``obj`` is, or None when it does not determine it."""
        return self.at.get(self.holder[obj]) if obj in self.holder else self.lies.get(obj)

    def step(self, rng: np.random.Generator, objects: bool) -> str:
        """Apply one random valid event and return its sentence."""
        self.line += 1
        person = _pick(rng, PEOPLE)
        here = self.true_at[person]
        held = [o for o in OBJECTS if self.holder.get(o) == person]
        free = [o for o in OBJECTS if self.true_lies.get(o) == here]
        u = rng.random() if objects else 0.0
        kind = "move" if u < 0.5 else "get" if u < 0.8 else "drop"  # 0.5, 0.3, 0.2
        if kind == "get" and free:
            obj = _pick(rng, free)
            self.holder[obj] = person
            self.holder_line[obj] = self.line
            del self.true_lies[obj]
            self.lies.pop(obj, None)
            self.lies_lines.pop(obj, None)
            sentence = f"{person} {_pick(rng, GET)} {obj}{self._there(rng)}."
        elif kind == "drop" and held:
            obj = _pick(rng, held)
            del self.holder[obj]
            self.true_lies[obj] = here
            if person in self.at:  # else bAbI's knowledge forgets where it is, and so do we
                self.lies[obj] = self.at[person]
                self.lies_lines[obj] = frozenset({self.line, self.at_line[person]})
            sentence = f"{person} {_pick(rng, DROP)} {obj}{self._there(rng)}."
        else:
            place = _pick(rng, [p for p in LOCATIONS if p != here])
            self.true_at[person] = self.at[person] = place
            self.at_line[person] = self.line
            sentence = f"{person} {_pick(rng, MOVE)} {place}."
        self._record()
        return sentence

    def _record(self) -> None:
        for obj, visits in self.history.items():
            place = self.where(obj)
            if place is not None and (not visits or visits[-1] != place):
                visits.append(place)
                self.history_lines[obj].append(self.support(obj))

    @staticmethod
    def _there(rng: np.random.Generator) -> str:
        return " there" if rng.random() < 0.5 else ""


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _question(rng: np.random.Generator, world: World, task: int) -> tuple[str, str, tuple[int, ...]] | None:
    """A question the story determines, its answer and its supporting facts (1-based story line
    numbers, as bAbI numbers them); None when there is none."""
    if task == 1:
        options = [(f"Where is {p}?", world.at[p], {world.at_line[p]}) for p in PEOPLE if p in world.at]
    elif task == 2:
        options = [(f"Where is the {o}?", world.where(o), world.support(o)) for o in OBJECTS if world.where(o)]
    else:  # the published question: before its latest known location (so before the last visit)
        options = [(f"Where was the {o} before the {h[-1]}?", h[-2],
                    world.history_lines[o][-2] | world.history_lines[o][-1])
                   for o, h in world.history.items() if len(h) >= 2]
    if not options:
        return None
    question, answer, lines = options[int(rng.integers(len(options)))]
    return question, answer, tuple(sorted(i + 1 for i in lines))


def _distractor_rng(key: str, rate: float) -> np.random.Generator:
    """Seeded by the instance and the rate alone, so the same seed gives the same story."""
    digest = hashlib.sha256(f"{rate!r}\n{key}".encode("utf-8", "replace")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


_WORD = re.compile(r"[A-Za-z]+|[.?]")
QUESTION_WORDS = ("where", "is", "was", "the", "before")
LINE_AGES = 64  # a line's distance from the last line, "64 or more" beyond


def _words(*texts: str) -> list[str]:
    return [w.lower() for t in texts for w in _WORD.findall(t)]


VOCABULARY = tuple(dict.fromkeys(_words(*PEOPLE, *LOCATIONS, *OBJECTS, *MOVE, *GET, *DROP, *PERSON_NOISE,
                                        *WORLD_NOISE, "there", *QUESTION_WORDS, "?")))


class WordsView(SymbolView):
    """Words in (with each line's age), one place out (see the module docstring)."""

    name = "words"
    symbols = VOCABULARY + ("<unk>",)
    out_symbols = LOCATIONS
    coords = (LINE_AGES,)
    slots = 1
    summary = True  # the answer slot starts from the question's words (bench/memory_read_path.py)
    write = "mean"  # a write keeps the sentence's words, not the <sep> state (r3m_agent.blocks.turn_state)

    def tokens(self, prompt: str) -> list[Token]:
        lines = prompt.split("\n")
        known = set(VOCABULARY)
        return [Token(w if w in known else "<unk>", (min(len(lines) - j, LINE_AGES),))
                for j, line in enumerate(lines) for w in _words(line)]

    def target(self, observation: str, answer: str) -> tuple[str, ...] | None:
        if not answer.strip():  # a streamed story line: any action is accepted, nothing to learn
            return None
        place = answer.strip().lower()
        if place not in LOCATIONS:
            raise ValueError(f"memory words view: the answer {answer!r} is not one of the places {LOCATIONS}")
        return (place,)

    def decode(self, observation: str, outputs) -> str:
        return outputs[0] if outputs else ""


class WordsSepView(WordsView):
    """The words view with each write keeping the decision point's (``<sep>``) state instead of the
    sentence's mean: the write's ablation (``--view words-sep``)."""

    name = "words-sep"
    write = "decision"


class MemoryFamily(TaskFamily):
    name = "memory"
    levels = tuple(LEVELS)
    max_prompt_chars = MAX_LINES * (LINE_CHARS + 1)
    max_answer_chars = 16
    streams = True
    max_stream_chars = LINE_CHARS
    max_distractor_rate = MAX_DISTRACTOR_RATE

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        level = LEVELS[difficulty]
        for _ in range(10_000):
            task = int(level.tasks[rng.integers(len(level.tasks))])
            world = World(rng)
            n = int(rng.integers(level.sentences[0], level.sentences[1] + 1))
            story = [world.step(rng, objects=task > 1) for _ in range(n)]
            qa = _question(rng, world, task)
            if qa is not None:
                prompt = "\n".join(story + [qa[0]])
                return Instance(self.name, difficulty, prompt, qa[1], key=prompt,
                                data={"expected": qa[1], "task": task, "kinds": ("fact",) * n,
                                      "supporting": qa[2]})
        raise RuntimeError(f"memory: no story with a task-{level.tasks} question in 10000 draws")

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return verify(instance.data["expected"], answer)

    def views(self):
        return {"words": WordsView(), "words-sep": WordsSepView(), "chars": CharView("fill")}

    def file_formats(self):
        """bAbI's text files (``train/evaluate.py --babi FILE``), read by ``load_babi``; each
        instance's group is its bAbI task."""
        return {"babi": (load_babi, lambda inst: inst.data["task"])}

    def stream(self, instance: Instance) -> list[StreamStep]:
        """One story line per step (any action accepted), then the question (scored)."""
        *story, question = instance.prompt.split("\n")
        kinds = instance.data.get("kinds") or ("fact",) * len(story)
        supporting = set(instance.data.get("supporting", ()))  # numbers of story (fact) lines, from 1
        facts = np.cumsum([kind == "fact" for kind in kinds])  # each line's fact number (distractors: none)
        steps = [StreamStep(line, kind, None, kind == "fact" and int(n) in supporting)
                 for line, kind, n in zip(story, kinds, facts)]
        return steps + [StreamStep(question, "question", instance.answer)]

    def with_distractors(self, instance: Instance, rate: float) -> Instance:
        """``instance`` with ``rate`` distractors per story sentence on average (stochastic
        rounding of ``rate * sentences``), each before a seeded story position or the question."""
        if not 0 <= rate <= MAX_DISTRACTOR_RATE:
            raise ValueError(f"memory: distractor rate must be in [0, {MAX_DISTRACTOR_RATE}], got {rate!r}")
        if rate == 0:
            return instance
        *story, question = instance.prompt.split("\n")
        kinds = tuple(instance.data.get("kinds") or ("fact",) * len(story))
        if "distractor" in kinds:
            raise ValueError(f"memory: instance {instance.key!r} already has distractors")
        rng = _distractor_rng(instance.key, rate)
        count = int(rate * len(story) + rng.random())
        before = np.sort(rng.integers(0, len(story) + 1, size=count))  # story index it precedes
        lines, new_kinds, k = [], [], 0
        for i, line in enumerate(story + [question]):
            while k < count and before[k] == i:
                lines.append(_noise(rng))
                new_kinds.append("distractor")
                k += 1
            lines.append(line)
            new_kinds.append(kinds[i] if i < len(story) else "question")
        data = {**instance.data, "kinds": tuple(new_kinds[:-1]), "distractors": float(rate)}
        return Instance(instance.family, instance.difficulty, "\n".join(lines), instance.answer,
                        key=instance.key, data=data)


def _noise(rng: np.random.Generator) -> str:
    if rng.random() < 0.75:
        return f"{_pick(rng, PEOPLE)} {_pick(rng, PERSON_NOISE)}"
    return _pick(rng, WORLD_NOISE)


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
    task the question's form implies (1-3); ``data["supporting"]`` keeps the supporting facts as
    line numbers of the prompt's story (1-based; the file's numbers count questions too).
    """
    if isinstance(path_or_lines, (str, os.PathLike)):
        with open(path_or_lines, encoding="utf-8") as f:
            lines = f.read().splitlines()
    else:
        lines = list(path_or_lines)
    out, story, line_of = [], [], {}
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        num, _, text = line.strip(" ").partition(" ")
        if not re.fullmatch(r"[0-9]+", num):  # ASCII digits only (str.isdigit takes any script's)
            raise ValueError(f"bAbI line {lineno}: expected a line number, got {line[:40]!r}")
        if int(num) == 1:
            story, line_of = [], {}
        if "\t" not in text:
            story.append(text.strip())
            line_of[int(num)] = len(story)  # the file numbers questions too; the prompt leaves them out
            continue
        question, answer, *support = [part.strip() for part in text.split("\t")]
        prompt = "\n".join(story + [question])
        out.append(Instance("memory", _task_of(question), prompt, answer, key=prompt, data={
            "expected": answer, "task": _task_of(question),
            "supporting": tuple(line_of[int(s)] for s in " ".join(support).split() if int(s) in line_of),
        }))
    return out


def export_babi(instances: Iterable[Instance]) -> list[str]:
    """``instances`` as a file in bAbI's format, one story per instance (its lines numbered from 1,
    then the question with the answer and the supporting line numbers where known): what
    ``load_babi`` reads back as the same prompts and answers."""
    lines = []
    for inst in instances:
        *story, question = inst.prompt.split("\n")
        lines += [f"{n} {text}" for n, text in enumerate(story, 1)]
        kinds = inst.data.get("kinds") or ("fact",) * len(story)
        line_of_fact = [n for n, kind in enumerate(kinds, 1) if kind == "fact"]  # distractors are lines too
        support = " ".join(str(line_of_fact[f - 1]) for f in inst.data.get("supporting", ()) if f <= len(line_of_fact))
        lines.append(f"{len(story) + 1} {question} \t{inst.answer}\t{support}".rstrip())
    return lines


class MemoryEnv(TextTaskEnv):
    """bAbI story questions as a text episode (tasks and levels in ``envs.families.memory``).

    ## Observation
    The prompt: a story of 2-320 sentences by level, one per line (``Mary moved to the
    bathroom.``, ``John got the football there.``, ``John dropped the football.``), then a
    question on the last line (``Where is Mary?``, ``Where is the football?``, ``Where was the
    football before the kitchen?``). With ``distractors=rate`` (0 to 1) about ``rate`` sentences
    with no world information (``Mary is hungry.``) per story sentence are mixed in.

    With ``stream=True`` the story is NOT in the prompt: each observation is one line, the
    story's lines in order (kind ``"fact"`` or ``"distractor"`` in ``info["stream_kind"]``),
    then the question (kind ``"question"``); at most ``max_stream_chars`` characters.

    ## Action
    The final answer: one location word (``garden``). No tool applies: the expert answers
    directly (a tool call still runs the named registered tool and counts against the budget).
    In stream mode every story line takes one action, accepted whatever it is; the expert's
    no-op there is the empty string ``""``.

    Printable ASCII only, the answer at most 16 characters (``max_answer_chars``) once
    surrounding whitespace is stripped: other text ends the episode with reward 0
    (``TextTaskEnv``).

    ## Reward
    1 if the word matches, ignoring case and surrounding whitespace, else 0 (no partial credit).
    0 for every story line in stream mode.

    ## Episode End
    Terminated after the answer to the question; truncated (reward 0) past the call budget.
    """

    def __init__(self, family: str | TaskFamily = "memory", **kwargs):
        super().__init__(family, **kwargs)
