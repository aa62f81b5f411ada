"""Expert demonstrations from the task suite, as token batches for imitation.

An episode's expert actions (tool calls, then the answer) are replayed through the family's
text env, so every ``Example`` pairs the exact transcript the policy would see with the action
it should take: a tool choice (0 = answer, i = tool i in the model's ``tool_names``) and a
payload (the call's ARGS, or the answer text).

How the model reads the transcript and writes the action is the family's view
(``r3m.envs.views``, bound to the model by ``r3m.learn.io``). A symbol view lays out the
observation its own way and writes the answer at its output positions; a call and an answer that
uses the last verified tool result are decisions of the tool head with nothing to write (the
view derives the call's ARGS; the policy renders the result). The character view has two layouts,
matching the model's two decoding modes:
- fill: ``<bos> transcript <sep>`` then ``width`` answer slots whose targets are
  ``<pad>...<pad> payload <eos>`` (right-aligned): the payload ends at a fixed distance from the
  transcript's end, where numbers' units digits, lists and tool results sit, so with rotary
  attention an answer slot lines up with its source at a constant offset. Decoding drops pads
  and stops at the first eos;
- causal: ``<bos> transcript <sep> payload <eos>``, next-token targets on the payload and eos;
  the tool head reads the ``<sep>`` position (the decision point).
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

import torch

from r3m import envs, tools
from r3m.envs.text_env import TextTaskEnv
from r3m.envs.views import CharView, split_transcript, view_of
from r3m.learn.io import IGNORE, ViewBatch, ViewIO
from r3m.learn.run import stream_rng
from r3m_agent.config import use_result_choice
from r3m_agent.tokenizer import BOS_ID, EOS_ID, PAD_ID, SEP_ID, Tokenizer

TOK = Tokenizer()


@dataclass
class TaskSpec:
    """How one family is trained and decoded: ``mode`` (the view's kind: ``fill`` or ``causal``
    characters, or ``symbols``), ``width`` answer slots (character fill) or most payload tokens
    (causal), eos included (0 for a symbol view, whose outputs are its own), the training
    ``levels``, the text env's arguments (``env``: e.g. ``stream``, ``distractors``) for training
    and evaluation alike, those for training only (``train_env``: e.g. ``augment``), and the
    family's ``view`` the model reads it through."""

    family: str
    mode: str
    width: int
    levels: tuple[int, ...]
    env: Mapping = field(default_factory=dict)
    view: str = "chars"
    train_env: Mapping = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"family": self.family, "mode": self.mode, "width": self.width, "levels": list(self.levels),
                "env": dict(self.env), "view": self.view, "train_env": dict(self.train_env)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "TaskSpec":
        return cls(d["family"], d["mode"], int(d["width"]), tuple(d["levels"]), dict(d.get("env", {})),
                   d.get("view", "chars"), dict(d.get("train_env", {})))


class Example(NamedTuple):
    family: str
    difficulty: int
    context: str
    tool: int
    payload: str


class FillBatch(NamedTuple):
    """One turn of examples in a fill layout (character slots or a symbol view)."""

    layout: ViewBatch  # ids, masks, slots, read-out positions, decision point, coordinates
    targets: torch.Tensor  # [B, W] at the read-out positions (IGNORE: nothing to learn)
    tool: torch.Tensor  # [B]
    difficulty: torch.Tensor  # [B]

    def to(self, device) -> "FillBatch":
        return FillBatch(self.layout.to(device), self.targets.to(device), self.tool.to(device),
                         self.difficulty.to(device))


class CausalBatch(NamedTuple):
    ids: torch.Tensor  # [B, T] right-padded context + payload
    mask: torch.Tensor
    targets: torch.Tensor  # [B, T] next-token targets, IGNORE outside payload + eos
    decision: torch.Tensor  # [B] index of <sep>
    tool: torch.Tensor
    difficulty: torch.Tensor

    def to(self, device) -> "CausalBatch":
        return CausalBatch(*(t.to(device) for t in self))


def parse_action(action: str, tool_names: Sequence[str], observation: str | None = None,
                 family: envs.TaskFamily | None = None) -> tuple[int, str]:
    """(choice, payload) of an expert action at ``observation``: a call to tool i (its ARGS), an
    answer (its text), or, when the observation holds a verified tool result and the answer is
    what the family derives from it (``answer_from_result``), the choice that uses the result
    (payload empty)."""
    if tools.is_call(action):
        call = tools.parse_call(action)
        if call.error or call.name not in tool_names:
            raise ValueError(f"expert action is not a call to a known tool: {action[:80]!r}")
        return 1 + list(tool_names).index(call.name), call.args
    if observation is not None and family is not None:
        last = split_transcript(observation).last_result
        if last is not None and family.answer_from_result(last) == action:
            return use_result_choice(tuple(tool_names)), ""
    return 0, action


def episode_examples(env: TextTaskEnv, index: int, difficulty: int | None, use_tools: bool,
                     tool_names: Sequence[str], split: str = "train") -> list[Example]:
    """Replay the expert on instance ``index`` and return one example per action."""
    obs, info = env.reset(options={"index": index, "difficulty": difficulty, "split": split})
    examples = []
    for action in env.expert_actions(use_tools):
        tool, payload = parse_action(action, tool_names, obs, env.family)
        examples.append(Example(info["family"], info["difficulty"], obs, tool, payload))
        obs, reward, terminated, truncated, info = env.step(action)
    if not (terminated and reward == 1.0):
        raise RuntimeError(f"expert demonstration for {info['family']}[{index}] did not end with reward 1")
    return examples


def task_spec(family: str, levels: Sequence[int], eval_levels: Sequence[int] = (), view: str | None = None,
              **env) -> TaskSpec:
    """How ``family`` is trained on ``levels`` and decoded, as the family declares it: its view
    (``view``: one of the family's views by name; None: its default) and, for the character view,
    room for the longest payload (answer or call ARGS) at the training and evaluation levels plus
    the eos; ``env``: the text env's arguments."""
    fam = envs.make_family(family)
    chosen = view_of(fam, view)
    width = 0
    if isinstance(chosen, CharView):
        width = fam.payload_chars(tuple(sorted(set(levels) | set(eval_levels)))) + 1
    return TaskSpec(family, chosen.kind, width, tuple(levels), env, chosen.name)


class PayloadTooLong(ValueError):
    """A payload longer than its spec's width: a family's ``payload_chars`` bound was broken."""


def _payload_ids(payload: str, width: int, family: str) -> list[int]:
    ids = TOK.encode(payload)
    if len(ids) > width - 1:
        raise PayloadTooLong(f"{family}: a payload of {len(ids)} tokens does not fit {width - 1} (the family's "
                             f"payload_chars bound); payload starts {payload[:40]!r}")
    return ids + [EOS_ID]


def _context_ids(context: str) -> list[int]:
    return [BOS_ID, *TOK.encode(context), SEP_ID]


def fill_slots(payload: str, width: int, family: str = "") -> list[int]:
    """Slot targets for ``payload``, see the module docstring (``PayloadTooLong`` if it does not fit)."""
    pay = _payload_ids(payload, width, family)
    return [PAD_ID] * (width - len(pay)) + pay


def collate_fill(examples: Sequence[Example], io: ViewIO) -> FillBatch:
    """The examples' observations in ``io``'s fill layout and the targets at its read-out positions."""
    contexts = [e.context for e in examples]
    layout = io.batch(contexts)
    targets = io.targets(contexts, [e.tool for e in examples], [e.payload for e in examples], layout)
    return FillBatch(layout, targets, _tensor(e.tool for e in examples), _tensor(e.difficulty for e in examples))


def collate_causal(examples: Sequence[Example], width: int) -> CausalBatch:
    """Right-padded ``<bos> context <sep> payload <eos>`` with targets on payload and eos (at most
    ``width`` tokens: ``PayloadTooLong`` otherwise)."""
    seqs, starts = [], []
    for e in examples:
        c = _context_ids(e.context)
        starts.append(len(c) - 1)
        seqs.append(c + _payload_ids(e.payload, width, e.family))
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), PAD_ID, dtype=torch.long)
    targets = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
    for i, (s, start) in enumerate(zip(seqs, starts)):
        ids[i, : len(s)] = torch.tensor(s)
        targets[i, start : len(s) - 1] = torch.tensor(s[start + 1 :])
    return CausalBatch(ids, ids != PAD_ID, targets, _tensor(starts), _tensor(e.tool for e in examples),
                       _tensor(e.difficulty for e in examples))


def _tensor(values) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.long)


class DemoSource:
    """Expert episodes (lists of per-turn ``Example``s), a pure function of (seed, step).

    ``get(step)`` cycles through ``specs`` (one family per step) and draws, from the random stream
    ``stream`` at (rank, step), either ``episodes`` whole episodes or, when that is None, episodes
    until they hold at least ``turns`` turns. A share ``tool_fraction`` of the episodes of a
    family with a tool are the tool-using demonstrations; with ``both``, every instance drawn of
    such a family comes twice instead, answered directly and with the tool (so the choice is
    learned as a probability, and the content for each choice on the same instances).

    ``curriculum_steps`` > 0: a level curriculum. The family's levels (easiest first) unlock one
    after another over the first ``curriculum_steps`` steps (level i of n from step
    (i-1)/n * curriculum_steps on); every step draws uniformly from the levels unlocked so far.
    """

    def __init__(self, specs: Sequence[TaskSpec], tool_names: Sequence[str], seed: int, *, stream: str,
                 tool_fraction: float, episodes: int | None = None, turns: int | None = None, rank: int = 0,
                 both: bool = False, curriculum_steps: int = 0):
        if (episodes is None) == (turns is None):
            raise ValueError("DemoSource needs exactly one of episodes= and turns=")
        self.curriculum_steps = int(curriculum_steps)
        self.specs, self.tool_names = list(specs), tuple(tool_names)
        self.seed, self.stream, self.rank, self.tool_fraction, self.both = seed, stream, rank, tool_fraction, both
        self.n_episodes, self.n_turns = episodes, turns
        self._envs = {s.family: TextTaskEnv(s.family, **s.env, **s.train_env) for s in self.specs}

    @property
    def spec(self) -> TaskSpec:
        return self.specs[0]

    def levels_at(self, step: int, spec: TaskSpec) -> tuple[int, ...]:
        """The levels drawn from at ``step`` (all of them once the curriculum is over)."""
        levels = tuple(sorted(spec.levels))
        if self.curriculum_steps <= 0 or step >= self.curriculum_steps:
            return levels
        return levels[:1 + (step * len(levels)) // self.curriculum_steps]

    def episodes(self, step: int, spec: TaskSpec) -> list[list[Example]]:
        rng = stream_rng(self.seed, self.stream, self.rank, step)
        env = self._envs[spec.family]
        has_tool = bool(env.family.tool)
        spec = dataclasses.replace(spec, levels=self.levels_at(step, spec))
        out: list[list[Example]] = []
        while (len(out) < self.n_episodes) if self.n_episodes is not None else (sum(map(len, out)) < self.n_turns):
            if self.both and has_tool:
                level, index = int(rng.choice(spec.levels)), int(rng.integers(2**62))
                out += [episode_examples(env, index, level, use, self.tool_names) for use in (False, True)]
                continue
            use_tools = has_tool and rng.random() < self.tool_fraction
            level = int(rng.choice(spec.levels))
            out.append(episode_examples(env, int(rng.integers(2**62)), level, use_tools, self.tool_names))
        return out

    def get(self, step: int) -> tuple[TaskSpec, list[list[Example]]]:
        spec = self.specs[step % len(self.specs)]
        return spec, self.episodes(step, spec)
