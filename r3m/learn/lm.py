"""Stage 0: a dense character-level language model as the correctness baseline.

The corpus is what ships with Python and the suite, nothing downloaded: the instruct family's
train-split requests with their replies (``<bos> prompt <sep> reply <eos>``, the policy's own
layout), English sentences from its generator, and docstrings of standard-library modules.

Degenerate generation is caught by numbers, not by eye: the rate of immediate EOS, distinct-1
and distinct-2 (unique word n-grams / all word n-grams over every completion), and the longest
run of one word n-gram repeated back to back (n = 1..3).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Sequence

import numpy as np
import torch

from r3m.envs import PRINTABLE
from r3m.envs.families.instruct import InstructFamily, sentences
from r3m.learn.run import stream_rng
from r3m_agent.tokenizer import BOS_ID, EOS_ID, PAD_ID, SEP_ID, Tokenizer

TOK = Tokenizer()
STDLIB_MODULES = ("json", "collections", "itertools", "functools", "textwrap", "string", "random",
                  "statistics", "fractions", "datetime", "pathlib", "csv", "heapq", "bisect", "difflib",
                  "shutil", "tempfile", "argparse", "logging", "dataclasses", "enum", "typing", "re",
                  "math", "os", "calendar", "pprint", "copy", "operator", "contextlib")
PROMPTS = ("The ", "Return the ", "This module ", "Say hello to Anna.", "List 3 fruits, comma separated.",
           "If the ", "A new ", "Which is larger, 12 or 7?", "Spell cat backwards.", "Each ")


def _ascii(text: str) -> str:
    return "".join(c for c in text if c in PRINTABLE)


def stdlib_docs(modules: Sequence[str] = STDLIB_MODULES, max_chars: int = 600) -> list[str]:
    """Paragraphs of standard-library docstrings (deterministic for a given Python version)."""
    docs = []
    for name in modules:
        mod = importlib.import_module(name)
        objects = [mod] + [getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")]
        for obj in objects:
            doc = inspect.getdoc(obj) if (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isfunction(obj)) else None
            for para in (doc or "").split("\n\n"):
                para = _ascii(" ".join(para.split()))
                if 40 <= len(para) and not para.startswith((">>>", "..")):
                    docs.append(para[:max_chars])
    return sorted(set(docs))


def corpus(seed: int, n_instruct: int = 20_000, n_sentences: int = 20_000) -> list[list[int]]:
    """Token documents: instruct dialogues, generated sentences and stdlib docstrings."""
    fam = InstructFamily()
    rng = stream_rng(seed, "lm_corpus")
    docs = []
    for i in range(n_instruct):
        inst = fam.instance("train", i, seed=seed)
        docs.append([BOS_ID, *TOK.encode(inst.prompt), SEP_ID, *TOK.encode(inst.answer), EOS_ID])
    docs += [[BOS_ID, *TOK.encode(s), EOS_ID] for s in sentences(rng, n_sentences)]
    docs += [[BOS_ID, *TOK.encode(d), EOS_ID] for d in stdlib_docs()]
    return docs


class LMBatches:
    """Random windows of ``block`` tokens from the concatenated documents; batch s from the stream
    ``lm_batches`` at (rank, s)."""

    def __init__(self, docs: list[list[int]], block: int, batch_size: int, seed: int, rank: int = 0):
        self.stream = torch.tensor([t for d in docs for t in d], dtype=torch.long)
        self.block, self.batch_size, self.seed, self.rank = block, batch_size, seed, rank

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = stream_rng(self.seed, "lm_batches", self.rank, step)
        starts = rng.integers(0, len(self.stream) - self.block - 1, self.batch_size)
        x = torch.stack([self.stream[s : s + self.block + 1] for s in starts])
        return x[:, :-1], x[:, 1:]


def generation_stats(completions: Sequence[list[int]]) -> dict:
    """Immediate-EOS rate, distinct-1/2 over words, longest back-to-back n-gram run (n = 1..3)."""
    texts = [TOK.decode([t for t in c if t not in (EOS_ID, PAD_ID)]) for c in completions]
    immediate = float(np.mean([len(c) == 0 or c[0] == EOS_ID for c in completions])) if completions else 0.0
    words = [t.split() for t in texts]
    stats = {"immediate_eos_rate": immediate, "mean_chars": float(np.mean([len(t) for t in texts])) if texts else 0.0}
    for n in (1, 2):
        grams = [tuple(w[i : i + n]) for w in words for i in range(len(w) - n + 1)]
        stats[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    stats["longest_repeat_run"] = max((_longest_run(w) for w in words), default=0)
    return stats


def _longest_run(words: list[str]) -> int:
    """Most consecutive repetitions of one n-gram (n = 1..3) in ``words``."""
    best = 1 if words else 0
    for n in (1, 2, 3):
        for start in range(n):
            run, prev = 1, None
            for i in range(start, len(words) - n + 1, n):
                gram = tuple(words[i : i + n])
                run = run + 1 if gram == prev else 1
                prev = gram
                best = max(best, run)
    return best


MAX_REPEAT_RUN = 7


def non_degenerate(stats: dict) -> bool:
    """Stage 0's exit criterion: few immediate EOS, varied words, no loops.

    The corpus itself repeats a word up to 5 times in a row (instruct's "repeat the word N times"
    replies), so a run of 5 is imitation, not a loop; a degenerate model repeats until the token
    budget runs out (tens of repeats in 80 characters). Runs above ``MAX_REPEAT_RUN`` count as loops.
    """
    return (stats["immediate_eos_rate"] < 0.2 and stats["distinct_1"] > 0.2 and stats["distinct_2"] > 0.4
            and stats["longest_repeat_run"] <= MAX_REPEAT_RUN)


@torch.no_grad()
def sample_completions(model, prompts: Sequence[str], max_new_tokens: int, temperature: float, top_k: int,
                       seed: int) -> list[list[int]]:
    """Completions of ``<bos> prompt`` (instruct prompts get their ``<sep>`` like the policy's input)."""
    device = next(model.parameters()).device
    rows = [[BOS_ID, *TOK.encode(p)] + ([SEP_ID] if p.endswith((".", "?")) else []) for p in prompts]
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r)
    gen = torch.Generator(device=device).manual_seed(seed)
    new = model.generate(ids.to(device), (ids != PAD_ID).to(device), max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k, generator=gen)
    return [[t for t in row.tolist() if t != PAD_ID] for row in new]
