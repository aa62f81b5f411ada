"""Expert demonstrations from the task suite, as token batches for imitation.

An episode's expert actions (tool calls, then the answer) are replayed through the family's
text env, so every ``Example`` pairs the exact transcript the policy would see with the action
it should take: a tool choice (0 = answer, i = tool i in the model's ``tool_names``) and a
payload (the call's ARGS, or the answer text).

Two layouts, matching the model's two decoding modes:
- fill: ``<bos> transcript <sep>`` then ``width`` answer slots. Right-aligned (the default) the
  slot targets are ``<pad>...<pad> payload <eos>``: the payload ends at a fixed distance from the
  transcript's end, where numbers' units digits, lists and tool results sit, so with rotary
  attention an answer slot lines up with its source at a constant offset. Left-aligned they are
  ``payload <eos> <pad>...`` (for content anchored at the prompt's start, with ``fill_anchor``).
  Decoding drops pads and stops at the first eos;
- causal: ``<bos> transcript <sep> payload <eos>``, next-token targets on the payload and eos;
  the tool head reads the ``<sep>`` position (the decision point).
"""

from __future__ import annotations

import functools
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from r3m import envs
from r3m import tools
from r3m.envs.text_env import TextTaskEnv
from r3m_agent.tokenizer import BOS_ID, EOS_ID, PAD_ID, SEP_ID, Tokenizer

IGNORE = -100
TOK = Tokenizer()


class Example(NamedTuple):
    family: str
    difficulty: int
    context: str
    tool: int
    payload: str


class FillBatch(NamedTuple):
    ids: torch.Tensor  # [B, T] left-padded context
    mask: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, W] payload, eos, pad
    tool: torch.Tensor  # [B]
    difficulty: torch.Tensor  # [B]


class CausalBatch(NamedTuple):
    ids: torch.Tensor  # [B, T] right-padded context + payload
    mask: torch.Tensor
    targets: torch.Tensor  # [B, T] next-token targets, IGNORE outside payload + eos
    decision: torch.Tensor  # [B] index of <sep>
    tool: torch.Tensor
    difficulty: torch.Tensor


def parse_action(action: str, tool_names: Sequence[str]) -> tuple[int, str]:
    """(tool class, payload) of an expert action."""
    if tools.is_call(action):
        call = tools.parse_call(action)
        if call.error or call.name not in tool_names:
            raise ValueError(f"expert action is not a call to a known tool: {action[:80]!r}")
        return 1 + list(tool_names).index(call.name), call.args
    return 0, action


def episode_examples(env: TextTaskEnv, index: int, difficulty: int | None, use_tools: bool,
                     tool_names: Sequence[str], split: str = "train") -> list[Example]:
    """Replay the expert on instance ``index`` and return one example per action."""
    obs, info = env.reset(options={"index": index, "difficulty": difficulty, "split": split})
    examples = []
    for action in env.expert_actions(use_tools):
        tool, payload = parse_action(action, tool_names)
        examples.append(Example(info["family"], info["difficulty"], obs, tool, payload))
        obs, reward, terminated, truncated, info = env.step(action)
    if not (terminated and reward == 1.0):
        raise RuntimeError(f"expert demonstration for {info['family']}[{index}] did not end with reward 1")
    return examples


def demo_stream(family: str, tool_names: Sequence[str], seed: int, tool_fraction: float = 0.5,
                levels: Sequence[int] | None = None) -> Iterator[Example]:
    """Endless train-split demonstrations of ``family``: seeded, reproducible, levels drawn uniformly."""
    env = TextTaskEnv(family)
    fam = env.family
    levels = tuple(levels or fam.levels)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    index = 0
    while True:
        use_tools = bool(fam.tool) and rng.random() < tool_fraction
        level = int(rng.choice(levels))
        yield from episode_examples(env, int(rng.integers(2**62)), level, use_tools, tool_names)
        index += 1


@functools.lru_cache(maxsize=None)
def payload_width(family: str, levels: tuple[int, ...] | None = None, with_tools: bool = True,
                  samples_per_level: int = 100) -> int:
    """Fill slots for ``family``: its fixed answer width, else the longest payload seen + 1 (eos).

    Measured on train demonstrations of ``levels`` (default: all), with and without tool calls.
    """
    fam = envs.make_family(family)
    if fam.answer_len:
        return fam.answer_len + 1
    env = TextTaskEnv(family)
    names = tuple(tools.list_tools())
    longest = 0
    for level in levels or fam.levels:
        for i in range(samples_per_level):
            for use_tools in ((False, True) if fam.tool and with_tools else (False,)):
                for ex in episode_examples(env, i, level, use_tools, names):
                    longest = max(longest, len(TOK.encode(ex.payload)))
    return longest + 1 + 2  # eos, and a little room beyond the longest seen


def _context_ids(context: str) -> list[int]:
    return [BOS_ID, *TOK.encode(context), SEP_ID]


def fill_slots(payload: str, width: int, align: str = "right") -> list[int]:
    """Slot targets for ``payload`` (truncated to fit), see the module docstring."""
    pay = TOK.encode(payload)[: width - 1] + [EOS_ID]
    pads = [PAD_ID] * (width - len(pay))
    return pads + pay if align == "right" else pay + pads


def collate_fill(examples: Sequence[Example], width: int, align: str = "right") -> FillBatch:
    """Left-padded contexts (the answer slots then follow every row's last token) and slot targets."""
    ctx = [_context_ids(e.context) for e in examples]
    T = max(map(len, ctx))
    ids = torch.full((len(ctx), T), PAD_ID, dtype=torch.long)
    targets = torch.full((len(ctx), width), PAD_ID, dtype=torch.long)
    for i, (c, e) in enumerate(zip(ctx, examples)):
        ids[i, T - len(c):] = torch.tensor(c)
        targets[i] = torch.tensor(fill_slots(e.payload, width, align))
    return FillBatch(ids, ids != PAD_ID, targets, _tensor(e.tool for e in examples),
                     _tensor(e.difficulty for e in examples))


def collate_causal(examples: Sequence[Example], max_payload: int = 256) -> CausalBatch:
    """Right-padded ``<bos> context <sep> payload <eos>`` with targets on payload and eos."""
    seqs, starts = [], []
    for e in examples:
        c = _context_ids(e.context)
        starts.append(len(c) - 1)
        seqs.append(c + TOK.encode(e.payload)[:max_payload] + [EOS_ID])
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
