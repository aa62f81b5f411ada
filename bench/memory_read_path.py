"""The episodic memory's read path on its own: with gold facts written, do reading and answering learn?

    python bench/memory_read_path.py                          # task 1, both variants, 600 steps each
    python bench/memory_read_path.py --level 2 --steps 1500   # tasks 1-2 mixed

The memory of each story is written by hand, one FIFO slot per sentence holding the bag of its words
(the sum of their token embeddings): what the sentence says, whatever a model's own write would have
made of it. Only the read and the answer are trained, on generated stories (answers from the
family's oracle), and scored on the test split. Two variants, the same ``EpisodicMemory``:

- ``module``: the memory alone, as end-to-end memory networks use it: the question's bag of words
  is the query, ``k`` reads (hops) each add what they return, a linear layer picks the place;
- ``r3m``: the R3M model (``with_views``, the memory family's words view) reads the same slots from
  the question turn's tokens at each of its ``k`` refinement steps and answers at its output slot,
  as in streamed training.

If ``module`` learns and ``r3m`` does not, the blocker is how the model composes the read, not the
read. Two floors are printed beside each curve: chance (the commonest answer of the test set) and
"last sentence's place" (the place named by the newest sentence that names one), the shortcut a
recency-only read finds. Writes ``bench/results/memory_read_path.json`` (``--out``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from r3m.learn.cli import require_train_extra  # noqa: E402

require_train_extra(__name__)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from r3m import envs  # noqa: E402
from r3m.envs.families.memory import LOCATIONS, _words  # noqa: E402
from r3m.learn.cli import parse_config  # noqa: E402
from r3m.learn.data import task_spec  # noqa: E402
from r3m.learn.io import ViewIO, with_views  # noqa: E402
from r3m.learn.reporting import provenance  # noqa: E402
from r3m_agent import R3M, R3MConfig  # noqa: E402
from r3m_agent.memory import EpisodicMemory, empty_carry  # noqa: E402
from r3m_agent.tokenizer import VOCAB_SIZE  # noqa: E402


@dataclass(frozen=True)
class Args:
    """Train the episodic memory's read and answer on gold writes; writes bench/results/memory_read_path.json."""

    level: int = 1
    """the memory family's level (1: task 1 only, short stories)"""
    variants: tuple[str, ...] = ("module", "r3m")
    """which compositions to train: module (the memory alone, memory-network style), r3m (the model)"""
    steps: int = 600
    """optimiser steps per variant"""
    batch_size: int = 32
    """stories per step"""
    d_model: int = 32
    """model width"""
    n_heads: int = 2
    """heads of the read"""
    k: int = 2
    """reads: hops of the module, refinement steps of the model (each reads the memory once)"""
    core_layers: int = 1
    """the model's core blocks (r3m variant)"""
    mem_slots: int = 48
    """slots (the longest story of the level must fit: no eviction)"""
    lr: float = 3e-3
    """AdamW learning rate"""
    evals: int = 6
    """test evaluations along the run (the learning curve)"""
    eval_n: int = 200
    """test stories per evaluation"""
    seed: int = 0
    """torch and story seed"""
    threads: int = 1
    """torch CPU threads"""
    out: str = "bench/results/memory_read_path.json"
    """where the results go"""

    def __post_init__(self) -> None:
        bad = set(self.variants) - {"module", "r3m"}
        if bad:
            raise ValueError(f"--variants must be module and/or r3m, got {sorted(bad)}")
        if self.steps < self.evals or self.evals < 1:
            raise ValueError(f"need --steps >= --evals >= 1, got {self.steps} and {self.evals}")


def stories(level: int, split: str, seeds) -> tuple[list[list[str]], list[str], list[str]]:
    fam = envs.make_family("memory")
    insts = [fam.instance(split, int(s), level) for s in seeds]
    lines = [x.prompt.split("\n") for x in insts]
    return [x[:-1] for x in lines], [x[-1] for x in lines], [x.answer for x in insts]


def floors(level: int, n: int) -> dict:
    """Chance and the newest-place shortcut on the test stories the variants are scored on."""
    story, _, answers = stories(level, "test", range(n))

    def newest_place(lines: list[str]) -> str | None:
        for line in reversed(lines):
            named = [w for w in _words(line) if w in LOCATIONS]
            if named:
                return named[-1]
        return None

    return {"chance": max(answers.count(a) for a in set(answers)) / n,
            "newest_place": float(np.mean([newest_place(s) == a for s, a in zip(story, answers)]))}


def write_gold(bags: list[torch.Tensor], memory: EpisodicMemory, d: int):
    """One FIFO write per sentence, story by story (bags[i]: [sentences_i, d])."""
    B, M = len(bags), memory.mem_slots
    if max(len(b) for b in bags) > M:
        raise ValueError(f"a story has {max(len(b) for b in bags)} sentences, more than --mem-slots {M}")
    carry = empty_carry(B, M, d)
    for j in range(max(len(b) for b in bags)):
        rows = [i for i, b in enumerate(bags) if len(b) > j]
        index = torch.tensor(rows)
        new, _, _ = memory.write(carry.select(index), torch.stack([bags[i][j] for i in rows]), gate=False)
        carry = carry.put(index, new)
    return carry


class ModuleVariant(nn.Module):
    """The memory alone: bag-of-words sentences and question, ``k`` hops, a place out."""

    def __init__(self, a: Args) -> None:
        super().__init__()
        vocab = sorted({w for s in stories(a.level, "train", range(2000))[0] for line in s for w in _words(line)}
                       | {w for q in stories(a.level, "train", range(200))[1] for w in _words(q)})
        self.index = {w: i + 1 for i, w in enumerate(vocab)}
        self.embed = nn.Embedding(len(vocab) + 1, a.d_model, padding_idx=0)
        self.memory = EpisodicMemory(a.d_model, a.n_heads, a.mem_slots, 0.0)
        self.memory.reset_parameters()
        self.answer = nn.Linear(a.d_model, len(LOCATIONS))
        self.a = a

    def bag(self, lines: list[str]) -> torch.Tensor:
        ids = [[self.index.get(w, 0) for w in _words(line)] for line in lines]
        pad = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
        for i, row in enumerate(ids):
            pad[i, : len(row)] = torch.tensor(row)
        return self.embed(pad).sum(1)

    def forward(self, story, questions, answers) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits over the places, the answers' indices)."""
        carry = write_gold([self.bag(s) for s in story], self.memory, self.a.d_model)
        u = self.bag(questions)[:, None, :]
        for _ in range(self.a.k):
            u = u + self.memory.read(u, carry)
        return self.answer(u[:, 0]), torch.tensor([LOCATIONS.index(x) for x in answers])


class R3MVariant(nn.Module):
    """The R3M model reading hand-written slots from the question turn (streamed layout)."""

    def __init__(self, a: Args) -> None:
        super().__init__()
        self.spec = task_spec("memory", (a.level,), stream=True)
        self.model = R3M(with_views(R3MConfig(d_model=a.d_model, n_heads=a.n_heads, prelude_layers=0,
                                              core_layers=a.core_layers, mem_slots=a.mem_slots,
                                              semantic_slots=0, K=a.k), [self.spec]))
        self.io = ViewIO.of(self.spec, self.model.cfg)
        self.a = a

    def bag(self, lines: list[str]) -> torch.Tensor:
        lay = self.io.batch(lines)
        words = lay.mask & (lay.ids >= VOCAB_SIZE)  # the view's words, not <sep> or the answer slot
        return (self.model.embed(lay.ids) * words[..., None]).sum(1)

    def forward(self, story, questions, answers) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits over the model's outputs, the places allowed only; the answers' output ids)."""
        carry = write_gold([self.bag(s) for s in story], self.model.memory, self.a.d_model)
        lay = self.io.batch(questions)
        out = self.model(lay.ids, lay.mask, mode="fill", **lay.forward_kwargs(), **self.io.model_kwargs(),
                         carry=carry, K=self.a.k)
        target = self.io.targets(questions, [0] * len(questions), answers, lay)[:, 0]
        return out.logits[:, 0].masked_fill(~self.io.allowed, float("-inf")), target


def train(a: Args, variant: str) -> dict:
    torch.manual_seed(a.seed)
    net = ModuleVariant(a) if variant == "module" else R3MVariant(a)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr)
    rng = np.random.default_rng(a.seed)
    test = stories(a.level, "test", range(a.eval_n))
    curve, start = [], time.perf_counter()
    marks = {round(a.steps * (i + 1) / a.evals) for i in range(a.evals)}
    for step in range(1, a.steps + 1):
        story, questions, answers = stories(a.level, "train", rng.integers(2**31, size=a.batch_size))
        logits, target = net(story, questions, answers)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in marks:
            with torch.no_grad():
                logits, target = net(*test)
                acc = float((logits.argmax(-1) == target).float().mean())
            curve.append({"step": step, "episodes": step * a.batch_size, "loss": round(loss.item(), 4),
                          "test_accuracy": acc, "seconds": round(time.perf_counter() - start, 1)})
            print(f"[read path] {variant}: step {step} loss {loss.item():.3f} test {acc:.1%} "
                  f"({curve[-1]['seconds']:.0f} s)", flush=True)
    return {"curve": curve, "test_accuracy": curve[-1]["test_accuracy"],
            "params": sum(p.numel() for p in net.parameters())}


def main(argv=None) -> dict:
    a = parse_config(Args, argv)
    torch.set_num_threads(a.threads)
    res = {"args": a.__dict__, "floors": floors(a.level, a.eval_n),
           "variants": {v: train(a, v) for v in a.variants}, "provenance": provenance()}
    print(f"floors: chance {res['floors']['chance']:.1%}, newest sentence's place {res['floors']['newest_place']:.1%}")
    for v, r in res["variants"].items():
        print(f"{v}: {r['test_accuracy']:.1%} on test after {a.steps} steps ({r['curve'][-1]['seconds']:.0f} s, "
              f"{r['params']:,} params)")
    out = ROOT / a.out if not Path(a.out).is_absolute() else Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return res


if __name__ == "__main__":
    main()
