"""Task families: seeded generators, oracle answers, expert demonstrations and verifiers.

A family turns ``(seed, split, index, difficulty)`` into one ``Instance``, always the same one.
Train and test can never share an instance: each instance has a ``key`` (its canonical content,
or for Sudoku the bank puzzle it was transformed from), and the key's hash alone decides the
split it belongs to; the generator redraws until the key falls in the requested split.
"""

from __future__ import annotations

import abc
import hashlib
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, NamedTuple, Sequence, Union

import numpy as np

from r3m import tools
from r3m.envs.ascii import PRINTABLE  # noqa: F401  (re-exported: the contract's alphabet)
from r3m.verifiers import Verdict, wrong

if TYPE_CHECKING:
    from r3m.envs.views import View

SPLITS = {"train": 0, "test": 1}
TEST_EVERY = 5  # one key in five is a test key
MAX_REDRAWS = 10_000
DECODES = ("fill", "causal")


def split_of(key: str) -> str:
    """The split a content key belongs to (a pure function of the key)."""
    digest = hashlib.sha256(key.encode("utf-8", "replace")).digest()
    return "test" if int.from_bytes(digest[:8], "little") % TEST_EVERY == 0 else "train"


@dataclass(frozen=True)
class Instance:
    """One task instance. ``answer`` and ``data`` hold the oracle: never put them in observations."""

    family: str
    difficulty: int
    prompt: str
    answer: str
    key: str
    data: Mapping[str, Any] = field(default_factory=dict)


class StreamStep(NamedTuple):
    """One step of a streamed episode (``TextTaskEnv(stream=True)``): the only text the policy sees then.

    ``kind`` names what it is (the memory family: ``"fact"``, ``"distractor"``, ``"question"``; prefix:
    ``"chunk"``); ``expected`` is what the expert answers at a scored step, None at a step that
    accepts any action (the expert's no-op there is ``NOOP``, the empty string); ``support`` marks
    a step the scored answer rests on, where the family knows (diagnostics of what memory keeps).
    """

    observation: str
    kind: str
    expected: str | None
    support: bool = False  # a fact the scored answer rests on (the memory family's supporting facts)


NOOP = ""  # the expert's action at a stream step that is not scored


class TaskFamily(abc.ABC):
    """Subclass this to add a task; see the README's plug-in guide.

    Class attributes: ``name``; ``levels`` (difficulty knob values, easiest first);
    ``tool`` (registered tool whose demonstration applies, or None); ``answer_len``
    (fixed answer width for fill decoding, e.g. 81 for Sudoku; None for free-form);
    ``max_prompt_chars`` and ``max_answer_chars`` (bounds that size the env's spaces and that
    the env enforces); ``max_tool_args_chars`` (bound on the ARGS the expert writes in a call,
    None: ``max_prompt_chars``); ``decode`` (how a model writes the answer: ``"fill"``, into
    fixed answer slots, or ``"causal"``, token by token); ``numeric_env`` (a numeric Gymnasium
    env id of the same task for off-the-shelf RL baselines, or None).

    Everything a family writes (prompts, answers, tool ARGS) is printable ASCII
    (``envs.ascii.PRINTABLE``); apply ``r3m.envs.ascii_fold`` to text from other sources.

    Streaming (``TextTaskEnv(stream=True)``: the past is not in the observation, so only a memory
    carried across turns can answer): ``streams`` says the family implements ``stream``, and
    ``max_stream_chars`` bounds one step's text (set in ``__init__`` when it depends on an option).
    Distractors (``TextTaskEnv(distractors=rate)``): ``max_distractor_rate`` is the largest rate
    ``with_distractors`` accepts and ``max_prompt_chars`` allows (0: none).

    Augmentation (``TextTaskEnv(augment=False)``): ``augmentation`` names the validity-preserving
    transforms ``generate`` draws on the fly around stored instances ("": none); ``augmented(False)``
    is the family without them (the ablation).
    """

    name: ClassVar[str]
    levels: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 5)
    tool: ClassVar[str | None] = None
    answer_len: ClassVar[int | None] = None
    max_prompt_chars: ClassVar[int] = 1024
    max_answer_chars: ClassVar[int] = 256
    max_tool_args_chars: ClassVar[int | None] = None
    decode: ClassVar[str] = "fill"
    numeric_env: ClassVar[str | None] = None
    streams: ClassVar[bool] = False
    max_stream_chars: int = 0
    max_distractor_rate: ClassVar[float] = 0.0
    augmentation: ClassVar[str] = ""

    @abc.abstractmethod
    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        """Draw one instance at ``difficulty`` using only ``rng``."""

    @abc.abstractmethod
    def verify(self, instance: Instance, answer: str) -> Verdict:
        """Score ``answer`` by calling this family's pure verifier on the instance's data."""

    def payload_chars(self, levels: Sequence[int] | None = None) -> int:
        """A guaranteed upper bound on the length of any payload the expert writes at ``levels``
        (default: all): its final answer, or the ARGS of a tool call.

        Training sizes its answer slots from it (``payload_chars(levels) + 1``) and treats a
        longer payload as an error, so a family overrides it only with a bound that holds for
        every instance, derived from its level specs (``check_family`` verifies it on samples).
        """
        self.check_levels(levels)
        args = (self.max_tool_args_chars or self.max_prompt_chars) if self.tool else 0
        return max(self.max_answer_chars, args)

    def check_levels(self, levels: Sequence[int] | None) -> tuple[int, ...]:
        """``levels`` as a tuple (None: all of this family's); an unknown level raises ValueError."""
        if levels is None:
            return tuple(self.levels)
        unknown = [lvl for lvl in levels if lvl not in self.levels]
        if unknown or not levels:
            raise ValueError(f"{self.name}: levels must be a non-empty subset of {self.levels}, "
                             f"got {levels!r}")
        return tuple(levels)

    def distill_targets(self, instance: Instance) -> dict[int, str] | None:
        """What a tool-free model can be taught from this instance's verified answer: None (the
        default) for the whole answer; or ``{answer position: character}`` for the part of it that
        follows from the prompt without search (Sudoku: the forced cells), when a small model cannot
        be expected to produce the rest. A partial target is not an answer, so distillation then
        leaves the tool choice alone."""
        return None

    def tool_args(self, instance: Instance) -> str:
        """The ARGS an expert writes in ``<call>{tool} ARGS</call>``."""
        raise NotImplementedError(f"{self.name} has no tool demonstration")

    def augmented(self, on: bool) -> "TaskFamily":
        """This family with its on-the-fly augmentation (``augmentation``) on or off. A family without
        one is its own augmented self and cannot switch it off."""
        if not on:
            raise ValueError(f"{self.name} draws no augmentation to switch off (augmentation is empty)")
        return self

    def answer_from_tool(self, instance: Instance, result: tools.ToolResult) -> str:
        """The expert's final answer given the tool's result (``answer_from_result`` of its output)."""
        return self.answer_from_result(result.output)

    def answer_from_result(self, output: str) -> str:
        """The answer that a verified tool result gives: the output itself unless the family
        derives its answer from it. A policy's "use the result" choice renders this, so using a
        result is one decision instead of a copy written character by character."""
        return output

    def size(self, levels: Sequence[int]) -> int | None:
        """The size of the largest instance at ``levels`` in the unit ``scaled_level`` scales (a
        string's length), or None when the family has no such measure (the default)."""
        return None

    def scaled_level(self, levels: Sequence[int], factor: int) -> int | None:
        """The level whose instances are ``factor`` times the size of the largest at ``levels``
        (length generalisation: ``train/imitate.py`` reports accuracy there at 2x and 4x), or None
        when the family has no such level (the default)."""
        return None

    def file_formats(self) -> "Mapping[str, tuple[Callable[[str], list[Instance]], Callable[[Instance], Any]]]":
        """Files of a published format this family reads, for evaluation only: format name ->
        (``load(path) -> instances``, ``group(instance)``, the key results are reported by).
        ``train/evaluate.py --babi FILE`` plays the files of the family that reads "babi"."""
        return {}

    def views(self) -> "Mapping[str, View]":
        """How a model may read this family and write its answer, by name, the default first
        (``r3m.envs.views``). The character view ``"chars"`` (``decode``) is always there; a family
        that declares nothing is read through it."""
        return {}

    def expert_actions(self, instance: Instance, use_tools: bool) -> list[str]:
        """Tool calls then the answer; just the answer when no tool applies or ``use_tools`` is off."""
        if not (use_tools and self.tool):
            return [instance.answer]
        args = self.tool_args(instance)
        result = tools.call(self.tool, args)
        if not result.ok:
            raise RuntimeError(f"{self.name}: expert call to {self.tool} failed: {result.error}")
        return [tools.format_call(self.tool, args), self.answer_from_tool(instance, result)]

    def stream(self, instance: Instance) -> list[StreamStep]:
        """The instance as a sequence of steps, one observation each, the last one scored.

        Same instance, same steps: a stream is a function of the instance alone, so streamed and
        whole-prompt episodes share seeds and splits.
        """
        raise NotImplementedError(f"{self.name}: streaming is not supported (streams=False)")

    def verify_stream(self, instance: Instance, answers: Sequence[str]) -> Verdict:
        """The episode's verdict from the answers given at the scored steps, in order. Default: the
        last answer, scored by ``verify`` (a stream that reveals the prompt and then asks)."""
        return self.verify(instance, answers[-1]) if answers else wrong("no answer given")

    def with_distractors(self, instance: Instance, rate: float) -> Instance:
        """The instance with about ``rate`` distractors (text that changes no answer) per unit of
        content, deterministic in ``(instance.key, rate)``; key and split stay the original's."""
        raise NotImplementedError(f"{self.name}: distractors are not supported (max_distractor_rate=0)")

    def instance(self, split: str, index: int, difficulty: int | None = None, seed: int = 0) -> Instance:
        """The instance at ``(seed, split, index)``; ``difficulty=None`` draws a level from the same seed."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if difficulty is not None and difficulty not in self.levels:
            raise ValueError(f"{self.name}: difficulty must be one of {self.levels}, got {difficulty!r}")
        if index < 0 or seed < 0:
            raise ValueError(f"index and seed must be non-negative, got index={index} seed={seed}")
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], index]))
        level = int(rng.choice(self.levels)) if difficulty is None else int(difficulty)
        for _ in range(MAX_REDRAWS):
            inst = self.generate(rng, level)
            if split_of(inst.key) == split:
                return inst
        raise RuntimeError(f"{self.name}: no {split} instance at difficulty {level} "
                           f"after {MAX_REDRAWS} draws; the content space is too small")


# A family entry: lazy "module:Class", a TaskFamily subclass, an instance, or a zero-argument factory.
FamilyEntry = Union[str, type[TaskFamily], TaskFamily, Callable[[], TaskFamily]]
_FAMILIES: dict[str, FamilyEntry] = {}
_INSTANCES: dict[str, TaskFamily] = {}


def register_family(name: str, entry_point: FamilyEntry) -> None:
    """Register a family entry under ``name``, loaded on first ``make_family``; duplicates raise.

    ``r3m.envs.register_task`` is the checked way to add a family and its env together.
    """
    if name in _FAMILIES:
        raise ValueError(f"task family {name!r} is already registered ({_FAMILIES[name]!r})")
    _FAMILIES[name] = entry_point


def unregister_family(name: str) -> None:
    """Forget the family registered under ``name`` (and its shared object); KeyError if unknown."""
    if name not in _FAMILIES:
        raise KeyError(f"unknown task family {name!r}; registered: {list_families()}")
    del _FAMILIES[name]
    _INSTANCES.pop(name, None)


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def load_family(entry: FamilyEntry) -> TaskFamily:
    """The family object an entry stands for: imported, constructed or called as needed."""
    if isinstance(entry, str):
        module, colon, attr = entry.partition(":")
        if not colon:
            raise ValueError(f"a family entry point is 'module:Class', got {entry!r}")
        entry = getattr(importlib.import_module(module), attr)
    if isinstance(entry, TaskFamily):
        return entry
    if not callable(entry):
        raise TypeError(f"a task family must be a TaskFamily subclass, instance or factory, got {entry!r}")
    family = entry()
    if not isinstance(family, TaskFamily):
        raise TypeError(f"{entry!r} returned {type(family).__name__}, not a TaskFamily")
    return family


def make_family(name: str | FamilyEntry) -> TaskFamily:
    """The (shared, stateless) family object registered under ``name``; given a family object,
    class or factory instead of a name, that family (built afresh from a class or factory)."""
    if isinstance(name, TaskFamily):
        return name
    if not isinstance(name, str):
        return load_family(name)
    if name not in _FAMILIES:
        raise KeyError(f"unknown task family {name!r}; registered: {list_families()}")
    if name not in _INSTANCES:
        _INSTANCES[name] = load_family(_FAMILIES[name])
    return _INSTANCES[name]


RESET_OPTIONS = ("difficulty", "split", "index", "instance")


def reset_instance(env, options: Mapping[str, Any] | None) -> tuple[Instance, str]:
    """The instance ``env.reset(options=...)`` asks for, and its split.

    ``instance`` plays a given instance (split ``"external"``, e.g. ``SudokuFamily.from_puzzle``);
    otherwise ``(split, index, difficulty)`` picks one from ``env.family``, with a random index from
    ``env.np_random`` when none is given and ``env.split`` / ``env.difficulty`` as defaults.
    """
    opts = dict(options or {})
    unknown = set(opts) - set(RESET_OPTIONS)
    if unknown:
        raise ValueError(f"unknown reset options {sorted(unknown)}; expected {', '.join(RESET_OPTIONS)}")
    if opts.get("instance") is not None:
        return opts["instance"], "external"
    index = opts.get("index")
    if index is None:
        index = int(env.np_random.integers(0, 2**62))
    split = opts.get("split", env.split)
    return env.family.instance(split, int(index), opts.get("difficulty", env.difficulty), env.data_seed), split
