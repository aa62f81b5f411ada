"""A replay buffer of verified episodes across task families, by reservoir sampling.

Consolidation (``train/consolidate.py``) trains on episodes of every task seen so far, but the
stream of episodes grows without bound, so the buffer keeps a uniform sample of it: Vitter's
Algorithm R (1985) keeps the first ``capacity`` items, then replaces a random slot with the n-th
item (0-based) with probability capacity / (n + 1). After n items every one of them is in the
buffer with probability capacity / n, whatever its family or position in the stream, so the
family mix follows the stream's. An item is one episode (the per-turn ``Example``s of
``r3m.learn.data``) with its family and level; only episodes the env's verifier scored 1 belong
here (``episode_examples`` raises on an expert demonstration that does not end with reward 1).

Each item also records its ``source``: ``imitation`` (expert demonstrations), ``stream`` (expert
episodes of a streamed family, a turn per sentence) or ``rl`` (the policy's own verified rollouts of
Stage 3, tool calls included, read back from the ``episodes.jsonl`` that ``train/rl_verify.py``
writes: ``save_rl_episodes`` / ``rl_examples``).

The buffer's items, count and random state are plain data (``state_dict``), so a resumed run
continues the same sample.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from r3m import envs
from r3m.learn.data import Example, parse_action
from r3m.learn.run import stream_rng

SOURCES = ("imitation", "stream", "rl")


class Item(NamedTuple):
    family: str
    level: int
    turns: list[Example]
    source: str = "imitation"


class ReplayBuffer:
    """Reservoir sample (Algorithm R) of at most ``capacity`` verified episodes; its draws come from
    the ``replay_reservoir`` stream of ``seed``."""

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.items: list[Item] = []
        self.seen = 0
        self._rng = stream_rng(seed, "replay_reservoir")

    def __len__(self) -> int:
        return len(self.items)

    def add(self, turns: Sequence[Example], source: str = "imitation") -> None:
        """Offer one episode (its family and level are read from its first turn)."""
        if not turns:
            raise ValueError("an episode needs at least one turn")
        if source not in SOURCES:
            raise ValueError(f"replay source must be one of {SOURCES}, got {source!r}")
        item = Item(turns[0].family, int(turns[0].difficulty), list(turns), source)
        if len(self.items) < self.capacity:
            self.items.append(item)
        else:
            j = int(self._rng.integers(0, self.seen + 1))
            if j < self.capacity:
                self.items[j] = item
        self.seen += 1

    def extend(self, episodes: Sequence[Sequence[Example]], source: str = "imitation") -> None:
        for turns in episodes:
            self.add(turns, source)

    def mix(self) -> dict[str, int]:
        """Episodes held per family."""
        return dict(sorted(Counter(item.family for item in self.items).items()))

    def sources(self) -> dict[str, dict[str, int]]:
        """Episodes held per source and family (``SOURCES``)."""
        out: dict[str, Counter] = {}
        for item in self.items:
            out.setdefault(item.source, Counter())[item.family] += 1
        return {src: dict(sorted(c.items())) for src, c in sorted(out.items())}

    def summary(self) -> dict:
        return {"size": len(self.items), "capacity": self.capacity, "seen": self.seen, "mix": self.mix(),
                "sources": self.sources(), "turns": sum(len(item.turns) for item in self.items)}

    def batch(self, rng: np.random.Generator, turns: int) -> tuple[str, list[list[Example]]]:
        """(family, episodes) for one step: the family of an item drawn uniformly (so families come
        in proportion to what the buffer holds), then episodes of that family drawn uniformly with
        replacement until they hold at least ``turns`` turns (one spec per batch, as ``DemoSource``)."""
        if not self.items:
            raise ValueError("the replay buffer is empty")
        family = self.items[int(rng.integers(len(self.items)))].family
        pool = [item for item in self.items if item.family == family]
        out: list[list[Example]] = []
        while sum(map(len, out)) < turns:
            out.append(list(pool[int(rng.integers(len(pool)))].turns))
        return family, out

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "seen": self.seen, "rng": self._rng.bit_generator.state,
                "items": [{"family": it.family, "level": it.level, "turns": [list(t) for t in it.turns],
                           "source": it.source} for it in self.items]}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.seen = int(state["capacity"]), int(state["seen"])
        self.items = [Item(d["family"], int(d["level"]), [Example(*t) for t in d["turns"]], d.get("source", "imitation"))
                      for d in state["items"]]
        self._rng.bit_generator.state = state["rng"]

    def save(self, path: Path) -> None:
        """Write the state as JSON, atomically (a reader sees the old file or the new one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.state_dict()))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ReplayBuffer:
        state = json.loads(Path(path).read_text())
        buffer = cls(int(state["capacity"]))
        buffer.load_state_dict(state)
        return buffer


# -- the verified rollouts of Stage 3 ---------------------------------------------------------------
def rl_records(episodes: Sequence, key: int) -> list[dict]:
    """The verified (correct) episodes of one RL iteration as plain records: each turn's observation
    and the action text the env received (tool calls included). ``key`` names the iteration."""
    return [{"key": int(key), "family": ep.family, "difficulty": int(ep.difficulty), "seed": int(ep.seed),
             "tool_calls": int(ep.tool_calls), "turns": [{"observation": t.observation, "action": t.action}
                                                         for t in ep.turns]}
            for ep in episodes if ep.correct and ep.turns and all(t.action for t in ep.turns)]


def save_rl_episodes(path: Path, records: Sequence[dict], key: int) -> None:
    """Replace iteration ``key``'s records in the JSON-lines file ``path`` (a resumed run replays an
    iteration: its records replace the earlier ones), written atomically."""
    path = Path(path)
    kept = [line for line in (path.read_text().splitlines() if path.exists() else [])
            if line.strip() and json.loads(line)["key"] != key]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept) + "".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def rl_examples(path: Path, tool_names: Sequence[str], families: Sequence[str] | None = None) -> list[list[Example]]:
    """The episodes of ``path`` (``save_rl_episodes``) as per-turn ``Example``s for a model with
    ``tool_names`` (an action becomes its choice and payload as an expert's would, ``parse_action``),
    in the order they were played; only ``families`` when given. An episode with a call to a tool this
    model lacks is skipped (it cannot be imitated)."""
    out = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if families is not None and r["family"] not in families:
            continue
        family = envs.make_family(r["family"])
        try:
            turns = [Example(r["family"], int(r["difficulty"]), t["observation"],
                             *parse_action(t["action"], tool_names, t["observation"], family)) for t in r["turns"]]
        except ValueError:
            continue
        out.append(turns)
    return out
