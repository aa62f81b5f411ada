"""Play a policy in a Gymnasium vector env, one decision per live episode per turn.

Every episode runs through the registered env (tool calls executed by the env through the
tool registry, rewards from the verifier), with the memory carry threaded across the turns
of an episode and fresh for each new one. ``SAME_STEP`` autoreset: a finished sub-env is
already reset when its result arrives, so later steps of that slot are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from r3m import envs  # noqa: F401  (registers the suite)
from r3m.learn.policy import Policy
from r3m_agent.memory import Carry


@dataclass
class Turn:
    observation: str
    carry: Carry | None  # the memory the policy saw (one row), for re-scoring
    tool: int
    payload: torch.Tensor
    log_prob: float
    steps: int
    writes: float


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
            episodes[i].turns.append(Turn(
                obs[i], row_carry.select(index.new_tensor([j])) if row_carry is not None else None,
                int(dec.tool[j]), dec.payload[j].cpu(), float(dec.log_prob[j]), int(dec.steps[j]),
                float(dec.writes[j])))
        if carry is not None and dec.carry is not None:
            carry = carry.put(index, dec.carry)
        obs, reward, terminated, truncated, info = vec.step(tuple(actions))
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
