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
from typing import Any, ClassVar, Mapping

import numpy as np

from r3m import tools
from r3m.verifiers import Verdict

SPLITS = {"train": 0, "test": 1}
TEST_EVERY = 5  # one key in five is a test key
MAX_REDRAWS = 10_000
PRINTABLE = frozenset(chr(c) for c in range(32, 127)) | {"\n"}


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


class TaskFamily(abc.ABC):
    """Subclass this to add a task; see the README's plug-in guide.

    Class attributes: ``name``; ``levels`` (difficulty knob values, easiest first);
    ``tool`` (registered tool whose demonstration applies, or None); ``answer_len``
    (fixed answer width for fill decoding, e.g. 81 for Sudoku; None for free-form);
    ``max_prompt_chars`` and ``max_answer_chars`` (bounds that size the env's spaces).
    """

    name: ClassVar[str]
    levels: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 5)
    tool: ClassVar[str | None] = None
    answer_len: ClassVar[int | None] = None
    max_prompt_chars: ClassVar[int] = 1024
    max_answer_chars: ClassVar[int] = 256

    @abc.abstractmethod
    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        """Draw one instance at ``difficulty`` using only ``rng``."""

    @abc.abstractmethod
    def verify(self, instance: Instance, answer: str) -> Verdict:
        """Score ``answer`` by calling this family's pure verifier on the instance's data."""

    def tool_args(self, instance: Instance) -> str:
        """The ARGS an expert writes in ``<call>{tool} ARGS</call>``."""
        raise NotImplementedError(f"{self.name} has no tool demonstration")

    def answer_from_tool(self, instance: Instance, result: tools.ToolResult) -> str:
        """The expert's final answer given the tool's result."""
        return result.output

    def expert_actions(self, instance: Instance, use_tools: bool) -> list[str]:
        """Tool calls then the answer; just the answer when no tool applies or ``use_tools`` is off."""
        if not (use_tools and self.tool):
            return [instance.answer]
        args = self.tool_args(instance)
        result = tools.call(self.tool, args)
        if not result.ok:
            raise RuntimeError(f"{self.name}: expert call to {self.tool} failed: {result.error}")
        return [tools.format_call(self.tool, args), self.answer_from_tool(instance, result)]

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


_FAMILIES: dict[str, str | type[TaskFamily]] = {}
_INSTANCES: dict[str, TaskFamily] = {}


def register_family(name: str, entry_point: str | type[TaskFamily]) -> None:
    """Register a family class (or lazy ``"module:Class"``) under ``name``; duplicates raise."""
    if name in _FAMILIES:
        raise ValueError(f"task family {name!r} is already registered ({_FAMILIES[name]!r})")
    _FAMILIES[name] = entry_point


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def make_family(name: str | TaskFamily) -> TaskFamily:
    """The (shared, stateless) family object registered under ``name``."""
    if isinstance(name, TaskFamily):
        return name
    if name not in _FAMILIES:
        raise KeyError(f"unknown task family {name!r}; registered: {list_families()}")
    if name not in _INSTANCES:
        entry = _FAMILIES[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
        _INSTANCES[name] = entry()
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
