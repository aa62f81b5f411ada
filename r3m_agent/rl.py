"""Verifier-feedback policy gradients: rewards, group advantages, the clipped objective with a KL
to the reference policy, whole-episode imitation with the memory carried across turns (warm start
and replay), tool precision/recall, distillation targets and a level curriculum.

Reward of an episode (``shaped_reward``)::

    r = verifier reward (1 correct, else 0; 0 when truncated)
        - tool_cost * tool_calls - malformed_cost * malformed_calls

``tool_calls`` counts every ``<call>`` the policy made, including the one that broke the
env's call budget (that episode is truncated with verifier reward 0), so exceeding a budget of
B calls scores ``-(B + 1) * tool_cost - malformed_cost * malformed``.

Advantages are group-relative: G samples of one instance (the same ``reset`` seed) form a
group. GRPO (Shao et al. 2024) standardises rewards within the group; RLOO (Ahmadian et al.
2024) subtracts the mean of the other G-1 samples. A group whose rewards are all equal carries
no signal (every advantage is 0); it is counted and left out of the update.

The objective is PPO's clipped surrogate (Schulman et al. 2017) on length-normalised sequence
ratios, as GSPO (Zheng et al. 2025) does: an action is a whole payload of up to ~80 slots, and a
raw sequence ratio multiplies 80 per-token ratios, so it leaves any clip range after one step.
With ``n`` = 1 (tool choice) + payload tokens up to eos::

    s   = exp((log pi(a) - log pi_old(a)) / n)
    L   = -min(s A, clip(s, 1 - eps, 1 + eps) A) + beta * k3
    k3  = exp(d) - d - 1,  d = (log pi_ref(a) - log pi(a)) / n   (Schulman's k3 KL estimator)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import torch

from r3m import tools
from r3m.envs.text_env import TextTaskEnv
from r3m_agent.data import Example, episode_examples
from r3m_agent.memory import Carry
from r3m_agent.rollout import Episode
from r3m_agent.tokenizer import EOS_ID, PAD_ID, Tokenizer
from r3m_agent.training import TaskSpec, step_rng

TOK = Tokenizer()


# -- rewards and advantages -----------------------------------------------------------------------
def shaped_reward(ep: Episode, tool_cost: float, malformed_cost: float) -> float:
    """The training reward of one episode (see the module docstring)."""
    return float(ep.reward) - tool_cost * ep.tool_calls - malformed_cost * ep.malformed_calls


def group_advantages(rewards: torch.Tensor, kind: str = "grpo",
                     eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages [N, G], zero-variance mask [N]) for rewards [N groups, G samples]."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [groups, G >= 2], got {tuple(rewards.shape)}")
    rewards = rewards.float()
    mean = rewards.mean(1, keepdim=True)
    zero = (rewards - mean).abs().amax(1) <= eps
    if kind == "grpo":
        adv = (rewards - mean) / (rewards.std(1, unbiased=False, keepdim=True) + eps)
    elif kind == "rloo":
        G = rewards.shape[1]
        adv = (rewards - mean) * G / (G - 1)  # r_i - mean of the other G-1
    else:
        raise ValueError(f"advantage kind must be grpo or rloo, got {kind!r}")
    return adv.masked_fill(zero[:, None], 0.0), zero


def action_tokens(payload: torch.Tensor) -> torch.Tensor:
    """Tokens per action [B]: the tool choice plus the payload up to and including its eos."""
    eos = (payload == EOS_ID).long()
    live = (eos.cumsum(1) - eos) == 0
    return (live & (payload != PAD_ID)).sum(1) + 1


class PGOut(NamedTuple):
    loss: torch.Tensor
    pg_loss: float
    kl: float
    clip_fraction: float
    ratio: float


def clipped_objective(new_lp: torch.Tensor, old_lp: torch.Tensor, ref_lp: torch.Tensor, adv: torch.Tensor,
                      n_tokens: torch.Tensor, clip: float, kl_coef: float) -> PGOut:
    """The clipped surrogate plus the k3 KL penalty, averaged over actions (module docstring)."""
    n = n_tokens.to(new_lp.dtype).clamp(min=1)
    ratio = torch.exp((new_lp - old_lp) / n)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    d = (ref_lp - new_lp) / n
    kl = torch.exp(d) - d - 1.0
    loss = -surrogate.mean() + kl_coef * kl.mean()
    clipped = ((ratio - 1.0).abs() > clip).float().mean()
    return PGOut(loss, float(-surrogate.mean().detach()), float(kl.mean().detach()), float(clipped),
                 float(ratio.mean().detach()))


# -- the turns of sampled episodes, as one batch for re-scoring --------------------------------------
@dataclass
class TurnBatch:
    observations: list[str]
    carry: Carry | None
    tool: torch.Tensor  # [B]
    payload: torch.Tensor  # [B, W]
    old_lp: torch.Tensor  # [B] log-prob under the sampling policy
    adv: torch.Tensor  # [B] the episode's advantage
    ref_lp: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def __len__(self) -> int:
        return len(self.observations)

    def select(self, index: torch.Tensor) -> TurnBatch:
        idx = index.tolist()
        carry = None if self.carry is None else self.carry.select(index.to(self.carry.ptr.device))
        ref = self.ref_lp[index] if len(self.ref_lp) else self.ref_lp
        return TurnBatch([self.observations[i] for i in idx], carry, self.tool[index], self.payload[index],
                         self.old_lp[index], self.adv[index], ref)


def turn_batch(episodes: Sequence[Episode], advantages: Sequence[float]) -> TurnBatch:
    """Every turn of ``episodes``, each with its episode's advantage (payloads padded to one width)."""
    turns = [(t, a) for ep, a in zip(episodes, advantages) for t in ep.turns]
    if not turns:
        raise ValueError("no turns to batch")
    width = max(t.payload.shape[0] for t, _ in turns)
    payload = torch.full((len(turns), width), PAD_ID, dtype=torch.long)
    for i, (t, _) in enumerate(turns):
        payload[i, : t.payload.shape[0]] = t.payload
    carries = [t.carry for t, _ in turns]
    carry = None
    if all(c is not None for c in carries):
        carry = Carry(*(torch.cat([getattr(c, f) for c in carries]) for f in ("slots", "valid", "ptr")))
    return TurnBatch([t.observation for t, _ in turns], carry, torch.tensor([t.tool for t, _ in turns]),
                     payload, torch.tensor([t.log_prob for t, _ in turns]),
                     torch.tensor([float(a) for _, a in turns]))


# -- imitation of whole episodes, memory carried across turns -------------------------------------
class EpisodeSource:
    """Expert episodes (lists of per-turn ``Example``s) of one family: a pure function of (seed, step)."""

    def __init__(self, spec: TaskSpec, tool_names: Sequence[str], episodes: int, seed: int,
                 tool_fraction: float):
        self.spec, self.tool_names, self.n = spec, tuple(tool_names), episodes
        self.seed, self.tool_fraction = seed, tool_fraction
        self.env = TextTaskEnv(spec.family)

    def get(self, step: int) -> list[list[Example]]:
        rng = step_rng(self.seed, step, stream=3)
        has_tool = bool(self.env.family.tool)
        out = []
        for _ in range(self.n):
            use_tools = has_tool and rng.random() < self.tool_fraction
            level = int(rng.choice(self.spec.levels))
            index = int(rng.integers(2**62))
            out.append(episode_examples(self.env, index, level, use_tools, self.tool_names))
        return out


# -- tool use ----------------------------------------------------------------------------------------
class CallRecord(NamedTuple):
    name: str | None  # None: the call did not parse
    ok: bool  # parsed, and the tool returned a result (not "error: ...")
    output: str


def episode_calls(ep: Episode) -> list[CallRecord]:
    """The calls of an episode, read back from the env's transcript (what the env executed)."""
    calls = []
    for j, turn in enumerate(ep.turns):
        if turn.tool == 0:
            continue
        if j + 1 >= len(ep.turns):  # the call that broke the budget was never executed
            calls.append(CallRecord(None, False, ""))
            continue
        added = ep.turns[j + 1].observation[len(turn.observation):]
        call_text, _, rest = added.partition(tools.RESULT_OPEN)
        output = rest[: -len(tools.RESULT_CLOSE)] if rest.endswith(tools.RESULT_CLOSE) else rest
        parsed = tools.parse_call(call_text)
        name = None if parsed.error else parsed.name
        calls.append(CallRecord(name, name is not None and not output.startswith("error:"), output))
    return calls


def tool_metrics(episodes: Sequence[Episode], family_tool: str | None,
                 without_tools: Sequence[Episode] | None = None) -> dict[str, float]:
    """Precision, recall and format validity of tool calls (issue 5's definitions).

    A call is needed where the expert demonstration calls a tool (the family has one), or where the
    call turns failure into success (this episode called and succeeded while ``without_tools[i]``,
    the same instance played with tools off, failed). The first well-formed, successful call to the
    right tool in an episode that needs one is a needed call made; every other call is not.
    precision = needed calls made / calls made; recall = needed calls made / needed calls.
    """
    made = needed = good = valid = solved = solved_calls = 0
    for i, ep in enumerate(episodes):
        calls = episode_calls(ep)
        made += len(calls)
        valid += sum(c.ok for c in calls)
        rescued = (without_tools is not None and ep.correct and bool(calls)
                   and not without_tools[i].correct)
        right = family_tool if family_tool else next((c.name for c in calls if c.ok), None)
        if family_tool or rescued:
            needed += 1
            good += any(c.ok and c.name == right for c in calls)
        if ep.correct:
            solved += 1
            solved_calls += len(calls)
    return {"precision": good / made if made else 0.0, "recall": good / needed if needed else 1.0,
            "call_rate": float(np.mean([bool(ep.tool_calls) for ep in episodes])) if episodes else 0.0,
            "calls_per_episode": made / len(episodes) if episodes else 0.0,
            "format_validity": valid / made if made else 1.0,
            "calls_per_solved": solved_calls / solved if solved else 0.0,
            "calls": float(made), "needed": float(needed)}


# -- distillation --------------------------------------------------------------------------------
def answer_text(ep: Episode) -> str:
    """The final answer of an episode as the env received it."""
    ids = [t for t in ep.turns[-1].payload.tolist() if t not in (EOS_ID, PAD_ID)]
    return TOK.decode(ids)


def distill_examples(episodes: Sequence[Episode]) -> list[Example]:
    """Verified episodes whose answer came from a tool, as tool-free targets.

    "Came from a tool": correct, answered after at least one well-formed call that returned a
    result. The example is the prompt alone (the first observation), tool = answer, payload = the
    verified answer; duplicates (G samples of one instance) are kept once.
    """
    out, seen = [], set()
    for ep in episodes:
        if not (ep.correct and ep.turns and ep.turns[-1].tool == 0):
            continue
        if not any(c.ok for c in episode_calls(ep)):
            continue
        prompt = ep.turns[0].observation
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append(Example(ep.family, ep.difficulty, prompt, 0, answer_text(ep)))
    return out


# -- curriculum ----------------------------------------------------------------------------------
@dataclass
class Curriculum:
    """Level weights that follow the groups' success: levels whose groups are all solved or all
    failed (no variance, no gradient) lose weight to those in between.

    weight(level) = s (1 - s) + floor, with s an exponential moving average of the level's group
    success; so all-solved groups move the draws to harder levels and all-failed ones to easier.
    """

    levels: tuple[int, ...]
    success: list[float] = field(default_factory=list)
    rate: float = 0.3
    floor: float = 0.05

    def __post_init__(self) -> None:
        self.levels = tuple(int(lv) for lv in self.levels)
        if not self.success:
            self.success = [0.5] * len(self.levels)

    def weights(self) -> np.ndarray:
        s = np.asarray(self.success)
        w = s * (1.0 - s) + self.floor
        return w / w.sum()

    def sample(self, rng: np.random.Generator, n: int) -> list[int]:
        return [self.levels[i] for i in rng.choice(len(self.levels), size=n, p=self.weights())]

    def update(self, levels: Sequence[int], group_success: Sequence[float]) -> None:
        for lv in set(levels):
            vals = [s for l2, s in zip(levels, group_success) if l2 == lv]
            i = self.levels.index(int(lv))
            self.success[i] += self.rate * (float(np.mean(vals)) - self.success[i])

    def state(self) -> dict:
        return {"levels": list(self.levels), "success": list(self.success), "rate": self.rate,
                "floor": self.floor}


# -- Sudoku: the locally derivable part of a tool result ------------------------------------------
def naked_singles(puzzle: str) -> dict[int, str]:
    """Blank cells whose row, column and box givens leave one digit: cell -> that digit."""
    from r3m.verifiers.sudoku import PEERS

    grid = puzzle.strip().replace("0", ".")
    if len(grid) != 81:
        return {}
    out = {}
    for i, ch in enumerate(grid):
        if ch == ".":
            left = set("123456789") - {grid[j] for j in PEERS[i]}
            if len(left) == 1:
                out[i] = left.pop()
    return out


def single_cell_accuracy(episodes: Sequence[Episode]) -> float:
    """Share of naked-single cells that the episodes' final answers fill with the forced digit."""
    right = total = 0
    for ep in episodes:
        if not ep.turns:
            continue
        singles = naked_singles(ep.turns[0].observation.split(":", 1)[-1])
        answer = "".join(answer_text(ep).split())
        total += len(singles)
        right += sum(len(answer) == 81 and answer[c] == d for c, d in singles.items())
    return right / total if total else 0.0
