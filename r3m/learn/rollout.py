"""Play a policy in a Gymnasium vector env, one decision per live episode per turn; and re-score
the episodes it played.

Every episode runs through the registered env (tool calls executed by the env through the
tool registry, rewards from the verifier), with the memory carry threaded across the turns
of an episode and fresh for each new one. ``SAME_STEP`` autoreset: a finished sub-env is
already reset when its result arrives, so later steps of that slot are ignored.

``rescore`` replays episodes turn by turn through the policy with the carry threaded the same
way but with gradients, so the policy gradient of a later action reaches the memory writes of
the earlier turns it read (backpropagation through time within the episode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from r3m import envs  # noqa: F401  (registers the suite)
from r3m.learn.policy import Policy
from r3m_agent.tokenizer import PAD_ID


@dataclass
class Turn:
    observation: str
    tool: int
    payload: torch.Tensor
    log_prob: float
    steps: int  # refinement steps the turn ran
    writes: float  # memory writes the turn made (0 or 1)
    blocks: float = 0.0  # block applications the turn cost
    kind: str = "turn"  # what the observation was (streamed envs: "fact", "distractor", "question", "chunk")
    action: str = ""  # the action's text as sent to the env
    support: bool = False  # a fact the episode's answer rests on (streamed envs whose family knows)


@dataclass
class Episode:
    seed: int
    family: str = ""
    difficulty: int = 0
    reward: float = 0.0
    correct: bool = False
    score: float = 0.0
    reason: str = ""
    tool_calls: int = 0
    malformed_calls: int = 0
    truncated: bool = False
    turns: list[Turn] = field(default_factory=list)

    @property
    def steps(self) -> float:
        return float(np.mean([t.steps for t in self.turns])) if self.turns else 0.0

    @property
    def writes(self) -> float:
        return float(sum(t.writes for t in self.turns))

    @property
    def blocks(self) -> float:
        return float(sum(t.blocks for t in self.turns))


def make_vec(env_id: str, n: int, **env_kwargs: Any) -> gym.vector.VectorEnv:
    return gym.make_vec(env_id, num_envs=n, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **env_kwargs)


def run_episodes(policy: Policy, vec: gym.vector.VectorEnv, seeds: Sequence[int],
                 options: dict[str, Any] | Sequence[dict[str, Any]] | None = None, *, allow_tools: bool = True,
                 sample: bool = False, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> list[Episode]:
    """One episode per seed on ``vec`` (whose size must equal len(seeds)).

    ``options`` is passed to every sub-env's reset, or, as a list (sync vector envs only), one
    dict per sub-env (e.g. ``{"instance": ...}`` to play the puzzles of an evaluation file).
    """
    n = vec.num_envs
    if len(seeds) != n:
        raise ValueError(f"need {n} seeds for {n} envs, got {len(seeds)}")
    if isinstance(options, (list, tuple)):
        if len(options) != n or not hasattr(vec, "envs"):
            raise ValueError("per-env options need a sync vector env and one dict per sub-env")
        pairs = [env.reset(seed=int(s), options=o) for env, s, o in zip(vec.envs, seeds, options)]
        obs, infos = [p[0] for p in pairs], [p[1] for p in pairs]
        info = {k: [d[k] for d in infos] for k in ("family", "difficulty")}
    else:
        obs, info = vec.reset(seed=list(seeds), options=options)
    episodes = [Episode(int(s), info["family"][i], int(info["difficulty"][i])) for i, s in enumerate(seeds)]
    kinds = list(info["stream_kind"]) if "stream_kind" in info else ["turn"] * n
    support = list(info["stream_support"]) if "stream_support" in info else [False] * n
    live = np.ones(n, dtype=bool)
    carry = policy.model.initial_carry(n, policy.device) if policy.recurrent else None
    while live.any():
        rows = np.flatnonzero(live)
        index = torch.as_tensor(rows, device=policy.device)
        row_carry = carry.select(index) if carry is not None else None
        dec = policy.act([obs[i] for i in rows], row_carry, allow_tools=allow_tools, sample=sample,
                         temperature=temperature, generator=generator)
        actions = [""] * n
        for j, i in enumerate(rows):
            actions[i] = dec.actions[j]
            episodes[i].turns.append(Turn(obs[i], int(dec.tool[j]), dec.payload[j].cpu(), float(dec.log_prob[j]),
                                          int(dec.steps[j]), float(dec.writes[j]), float(dec.blocks[j]),
                                          str(kinds[i]), dec.actions[j], bool(support[i])))
        if carry is not None and dec.carry is not None:
            carry = carry.put(index, dec.carry)
        obs, reward, terminated, truncated, info = vec.step(tuple(actions))
        if "stream_kind" in info:
            kinds = [str(k) if k is not None else "turn" for k in info["stream_kind"]]
            support = [bool(x) for x in info.get("stream_support", [False] * n)]
        for i in rows:
            if terminated[i] or truncated[i]:
                final = info["final_info"]
                ep = episodes[i]
                ep.reward, ep.truncated = float(reward[i]), bool(truncated[i])
                ep.correct, ep.score = bool(final["correct"][i]), float(final["score"][i])
                ep.reason = str(final["reason"][i])
                ep.tool_calls, ep.malformed_calls = int(final["tool_calls"][i]), int(final["malformed_calls"][i])
                live[i] = False
    return episodes


class Rescored(NamedTuple):
    """Per action, episode by episode and turn by turn (``episode`` says whose it is)."""

    log_prob: torch.Tensor  # [N] log pi(action) under the policy now (with gradients)
    entropy: torch.Tensor  # [N] mean per-token entropy of the payload
    episode: torch.Tensor  # [N] index into the episodes
    write_probs: torch.Tensor | None  # [N] the soft write gate of each turn (None: no memory)


def rescore(policy: Policy, episodes: Sequence[Episode], *, allow_tools: bool = True) -> Rescored:
    """log pi of every action of ``episodes`` under ``policy`` (see the module docstring)."""
    device = policy.device
    lengths = [len(e.turns) for e in episodes]
    carry = policy.model.initial_carry(len(episodes), device) if policy.recurrent else None
    per_turn: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    for j in range(max(lengths, default=0)):
        rows = [i for i, n in enumerate(lengths) if n > j]
        turns = [episodes[i].turns[j] for i in rows]
        index = torch.tensor(rows, device=device)
        width = max(t.payload.shape[0] for t in turns)
        payload = torch.full((len(turns), width), PAD_ID, dtype=torch.long)
        for k, t in enumerate(turns):
            payload[k, : t.payload.shape[0]] = t.payload
        scored = policy.score([t.observation for t in turns], carry.select(index) if carry is not None else None,
                              torch.tensor([t.tool for t in turns]), payload,
                              torch.tensor([t.steps for t in turns]), allow_tools=allow_tools)
        if carry is not None and scored.carry is not None:
            carry = carry.put(index, scored.carry)
        per_turn.append((index, scored.log_prob, scored.entropy, scored.write_probs))
    # episode-major order: all of episode 0's actions, then episode 1's, ...
    owner = torch.cat([index for index, *_ in per_turn])
    turn_no = torch.cat([torch.full_like(index, j) for j, (index, *_) in enumerate(per_turn)])
    order = torch.argsort(owner * (len(per_turn) + 1) + turn_no)
    gates = None if per_turn[0][3] is None else torch.cat([g for *_, g in per_turn])[order]
    return Rescored(torch.cat([lp for _, lp, _, _ in per_turn])[order],
                    torch.cat([e for _, _, e, _ in per_turn])[order], owner[order], gates)
