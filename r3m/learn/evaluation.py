"""Evaluation through the envs: the same verifiers that give the training reward.

``evaluate_family`` plays greedy episodes on a family's test split, level by level, with a
fixed set of seeds, and summarises accuracy, refinement steps, memory writes and tool use;
``evaluate_instances`` plays given instances (external sets). Also here: which levels a run
evaluates, the halting summary, and tool-call precision and recall.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import gymnasium as gym
import numpy as np
import torch

from r3m import envs, tools
from r3m.envs.base import Instance, TaskFamily
from r3m.learn.policy import Policy
from r3m.learn.reporting import mean
from r3m.learn.rollout import Episode, make_vec, run_episodes
from r3m_agent.checkpoint import unwrap


EVAL_SEED = 1_000_003  # evaluation instances come from seeds far from any training stream


@dataclass
class FamilyEval:
    accuracy: float
    by_level: dict[int, float]
    steps: float
    steps_by_level: dict[int, float]
    writes: float
    tool_call_rate: float
    malformed_rate: float
    episodes: list[Episode] = field(repr=False, default_factory=list)

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "by_level": self.by_level, "avg_steps": self.steps,
                "steps_by_level": self.steps_by_level, "writes_per_sample": self.writes,
                "tool_call_rate": self.tool_call_rate, "malformed_rate": self.malformed_rate}


def env_id_of(family: str) -> str:
    ids = [i for i, f in envs.ENV_IDS.items() if f == family]
    if not ids:
        raise KeyError(f"no text env registered for family {family!r}")
    return sorted(ids)[0]


def evaluate_family(policy: Policy, family: str, *, n_per_level: int, levels: Sequence[int] | None = None,
                    split: str = "test", allow_tools: bool = False, batch_size: int = 100,
                    seed: int = EVAL_SEED, env_kwargs: dict | None = None,
                    env_id: str | None = None) -> FamilyEval:
    """Greedy episodes: ``n_per_level`` instances of each level (seeds ``seed + i``, same for every model).

    ``env_id``: play this registered env of ``family`` (default: the family's first text env).
    """
    fam = envs.make_family(family)
    levels = tuple(levels or fam.levels)
    episodes: list[Episode] = []
    kwargs = {"tools_enabled": allow_tools, **(env_kwargs or {})}
    for level in levels:
        for start in range(0, n_per_level, batch_size):
            seeds = [seed + i for i in range(start, min(start + batch_size, n_per_level))]
            vec = make_vec(env_id or env_id_of(family), len(seeds), **kwargs)
            try:
                episodes += run_episodes(policy, vec, seeds, {"split": split, "difficulty": level},
                                         allow_tools=allow_tools)
            finally:
                vec.close()
    return summarize(episodes, levels)


def summarize(episodes: Sequence[Episode], levels: Sequence[int]) -> FamilyEval:
    by = {lvl: [e for e in episodes if e.difficulty == lvl] for lvl in levels}
    return FamilyEval(
        accuracy=mean(e.correct for e in episodes),
        by_level={lvl: mean(e.correct for e in eps) for lvl, eps in by.items()},
        steps=mean(e.steps for e in episodes),
        steps_by_level={lvl: mean(e.steps for e in eps) for lvl, eps in by.items()},
        writes=mean(e.writes for e in episodes),
        tool_call_rate=mean(e.tool_calls > 0 for e in episodes),
        malformed_rate=mean(e.malformed_calls > 0 for e in episodes),
        episodes=list(episodes),
    )


def read_support_mass(policy: Policy, family: str, levels: Sequence[int], n_per_level: int,
                      env_kwargs: dict | None = None, split: str = "test", seed: int = EVAL_SEED) -> dict | None:
    """Where the scored turn's memory reads look, on streamed episodes (one at a time, greedy): the
    read weight on the slots that hold the episode's supporting facts (``StreamStep.support``), as
    the mean over heads, the answer's read-out positions and the refinement steps, by level; beside
    it ``uniform``, the share those slots would get from a read spread evenly over the valid slots
    and the null slot. A read that found the facts is far above ``uniform``; one that looks by
    recency alone is not. None for a model without memory, a causal view, or a family that marks
    no supporting facts."""
    memory = getattr(unwrap(policy.model), "memory", None)
    if memory is None or policy.io.kind == "causal":
        return None
    env = gym.make(env_id_of(family), disable_env_checker=True, **{**(env_kwargs or {}), "stream": True})
    by_level, uniform_by_level = {}, {}
    try:
        for level in levels:
            masses, uniform = [], []
            for i in range(n_per_level):
                obs, info = env.reset(seed=seed + i, options={"split": split, "difficulty": level})
                carry = policy.model.initial_carry(1, policy.device)
                owner, turn, support = {}, 0, set()  # slot -> the turn written there; the supporting turns
                while info["stream_step"] + 1 < info["stream_steps"]:
                    dec = policy.act([obs], carry, allow_tools=False)
                    if info["stream_support"]:
                        support.add(turn)
                    if float(dec.writes[0]) > 0:
                        owner[int(carry.ptr[0])] = turn
                    carry, turn = dec.carry, turn + 1
                    obs, _, _, _, info = env.step(dec.actions[0])
                if not support:
                    continue
                slots = [s for s, t in owner.items() if t in support]
                memory.record = []
                try:
                    policy.act([obs], carry, allow_tools=False)
                    weights = torch.stack(memory.record)[:, 0]  # [reads, T, 1 + M]
                finally:
                    memory.record = None
                lay = policy.layout([obs])
                at = weights[:, lay.outputs[0][lay.out_valid[0]]]  # [reads, W, 1 + M]
                masses.append(float(at[..., [1 + s for s in slots]].sum(-1).mean()) if slots else 0.0)
                uniform.append(len(slots) / (1 + float(carry.valid[0].sum())))
            if masses:
                by_level[level], uniform_by_level[level] = mean(masses), mean(uniform)
    finally:
        env.close()
    if not by_level:
        return None
    return {"mass": mean(by_level.values()), "uniform": mean(uniform_by_level.values()),
            "by_level": by_level, "uniform_by_level": uniform_by_level}


def external_sets(family: str, limit: int | None = None) -> dict[str, list[Instance]]:
    """The registered external evaluation sets of ``family`` that are present on this machine
    (``r3m.envs.load_eval_set``: a missing one is skipped with one warning), each capped at ``limit``."""
    sets = {}
    for name in envs.list_eval_sets(family):
        size = envs.eval_set(name).limit
        instances = envs.load_eval_set(name, limit=min(x for x in (size, limit) if x) if (size or limit) else None)
        if instances is not None:
            sets[name] = instances
    return sets


def evaluate_instances(policy: Policy, env_id: str, instances: Sequence[Instance], *, allow_tools: bool = False,
                       batch_size: int = 100, env_kwargs: dict | None = None) -> FamilyEval:
    """Greedy episodes on given instances (e.g. an external set), through the env and its verifier."""
    episodes: list[Episode] = []
    kwargs = {"tools_enabled": allow_tools, **(env_kwargs or {})}
    for start in range(0, len(instances), batch_size):
        chunk = instances[start : start + batch_size]
        vec = make_vec(env_id, len(chunk), **kwargs)
        try:
            episodes += run_episodes(policy, vec, list(range(start, start + len(chunk))),
                                     [{"instance": inst} for inst in chunk], allow_tools=allow_tools)
        finally:
            vec.close()
    return summarize(episodes, sorted({e.difficulty for e in episodes}))


def write_stats(episodes: Sequence[Episode]) -> dict:
    """Memory writes: per episode, and as the share of turns of each kind (streamed envs: "fact",
    "distractor", "question"...), of each level and of the supporting facts (the turns the answer
    rests on, where the family marks them) that wrote: the gate's open rate on what matters."""
    def rate(turns) -> float:
        return mean(t.writes for t in turns)

    turns = [(e, t) for e in episodes for t in e.turns]
    kinds = sorted({t.kind for _, t in turns})
    levels = sorted({e.difficulty for e in episodes})
    support = [(e, t) for e, t in turns if t.support]
    return {"writes_per_sample": mean(e.writes for e in episodes),
            "write_rate": rate(t for _, t in turns),
            "write_rate_by_kind": {k: rate(t for _, t in turns if t.kind == k) for k in kinds},
            "writes_per_sample_by_level": {lv: mean(e.writes for e in episodes if e.difficulty == lv)
                                           for lv in levels},
            # the supporting facts written (None where the family marks none)
            "write_rate_support": rate(t for _, t in support) if support else None,
            "write_rate_support_by_level": {lv: rate(t for e, t in support if e.difficulty == lv)
                                            for lv in levels if any(e.difficulty == lv for e, _ in support)}}


def gold_answers(family: str, levels: Sequence[int], n_per_level: int, env_kwargs: dict | None = None,
                 split: str = "test", seed: int = EVAL_SEED) -> list[str]:
    """The oracle answers of the test instances ``evaluate_family`` plays (the same seeds)."""
    env = gym.make(env_id_of(family), disable_env_checker=True, **(env_kwargs or {}))
    answers = []
    for level in levels:
        for i in range(n_per_level):
            env.reset(seed=seed + i, options={"split": split, "difficulty": level})
            answers.append(env.unwrapped.instance.answer)
    env.close()
    return answers


def majority_rate(family: str, levels: Sequence[int], n_per_level: int, env_kwargs: dict | None = None,
                  split: str = "test", seed: int = EVAL_SEED) -> float:
    """Chance: the accuracy of always giving the most common answer of these test instances (the
    ones ``evaluate_family`` plays), a floor any ablation should be compared with."""
    answers = gold_answers(family, levels, n_per_level, env_kwargs, split, seed)
    return max(answers.count(a) for a in set(answers)) / len(answers) if answers else 0.0


def answer_set_rate(episodes: Sequence[Episode], answers: Sequence[str]) -> float:
    """The share of episodes whose final answer is one of ``answers`` (the answers the family
    gives, e.g. ``gold_answers`` of many training instances): a model that cannot say an answer
    at all stays below chance."""
    known = {a.strip() for a in answers}
    return mean(bool(e.turns) and e.turns[-1].action.strip() in known for e in episodes)


# -- which levels, and summaries ---------------------------------------------------------------------
def train_levels(family: str, wanted: Sequence[int]) -> tuple[int, ...]:
    """The levels of ``wanted`` that ``family`` has (its easiest level when none are)."""
    levels = envs.make_family(family).levels
    return tuple(lv for lv in wanted if lv in levels) or levels[:1]


def eval_levels(family: str, trained: Sequence[int]) -> tuple[int, ...]:
    """The training levels plus the next harder one (extrapolation), where the family has one."""
    harder = [lv for lv in envs.make_family(family).levels if lv > max(trained)]
    return tuple(trained) + tuple(harder[:1])


def accuracy_on(ev: FamilyEval, levels: Sequence[int]) -> float:
    """Mean accuracy over ``levels`` (equal counts per level)."""
    return mean(ev.by_level[lv] for lv in levels if lv in ev.by_level)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their average rank); 0.0 when either is constant."""
    def ranks(v) -> np.ndarray:
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # average rank within ties
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    if len(x) < 2:
        return 0.0
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def halting_summary(halted: FamilyEval, fixed: FamilyEval, K: int, play_fixed: Callable[[int], FamilyEval],
                    levels: Sequence[int] | None = None) -> dict:
    """Halting against the same model at fixed K and at the fixed K nearest its average steps, with
    the compute it saved: ``flops_ratio`` (block applications with halting over fixed K, the same
    episodes) and ``spearman_steps_level`` (do harder levels get more steps, over every episode).

    ``levels``: summarise those levels (mean of per-level accuracies); None: all episodes.
    """
    if levels is None:
        acc, avg = (lambda ev: ev.accuracy), halted.steps
    else:
        acc = lambda ev: accuracy_on(ev, levels)  # noqa: E731
        avg = mean(e.steps for e in halted.episodes if e.difficulty in levels)
    at_avg = max(1, round(avg))
    blocks = sum(e.blocks for e in halted.episodes), sum(e.blocks for e in fixed.episodes)
    return {"accuracy": acc(halted), "avg_steps": avg, "fixed_k": K, "fixed_k_accuracy": acc(fixed),
            "steps_fraction": avg / K, "fixed_at_avg_steps": at_avg,
            "fixed_at_avg_steps_accuracy": acc(play_fixed(at_avg)),
            "flops_ratio": blocks[0] / blocks[1] if blocks[1] else 1.0,
            "spearman_steps_level": spearman([e.steps for e in halted.episodes],
                                             [e.difficulty for e in halted.episodes]),
            "steps_by_level": halted.steps_by_level, "accuracy_by_level": halted.by_level}


def best_fixed_k(curve: dict, min_steps: float) -> tuple[int | None, float | None]:
    """The fixed K with the best accuracy among those that spend at least ``min_steps`` per turn
    (the smallest such K when several tie), with its accuracy; (None, None) when no K does."""
    eligible = sorted(K for K in curve if K >= min_steps and curve[K] is not None)
    if not eligible:
        return None, None
    best = max(curve[K] for K in eligible)
    k = next(K for K in eligible if curve[K] == best)
    return k, best


# -- tool use ------------------------------------------------------------------------------------------
def shaped_reward(ep: Episode, tool_cost: float, malformed_cost: float, step_cost: float = 0.0,
                  max_steps: int = 1) -> float:
    """The cost-adjusted return of one episode: the verifier's reward, minus ``tool_cost`` per call,
    ``malformed_cost`` per malformed call, and ``step_cost`` times the refinement steps its turns
    ran as a share of ``max_steps`` (the compute a halting policy chose to spend)."""
    compute = sum(t.steps for t in ep.turns) / max(1, max_steps)
    return (float(ep.reward) - tool_cost * ep.tool_calls - malformed_cost * ep.malformed_calls
            - step_cost * compute)


class CallRecord(NamedTuple):
    name: str | None  # None: the call did not parse
    ok: bool  # parsed, and the tool returned a result (not "error: ...")
    output: str


def episode_calls(ep: Episode) -> list[CallRecord]:
    """The calls of an episode, read back from the env's transcript (what the env executed)."""
    calls = []
    for j, turn in enumerate(ep.turns):
        if not tools.is_call(turn.action):
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


def tool_metrics(with_tools: Sequence[Episode], without_tools: Sequence[Episode]) -> dict:
    """Tool use against measured need, on the same instances played greedily twice by one policy.

    An instance needs the tool when the policy, forced to answer without it (``without_tools[i]``),
    answers it wrong. A call is an episode that called at least once.
    precision = calls on instances that need one / calls; recall = needing instances the policy
    called on / needing instances; unneeded_call_rate = calls on instances it answers right without
    a tool / such instances. By level too, with the call rate and the tool-free accuracy; and
    ``need_based``: the same three on the levels where they can fail (``need_based_metrics``).
    """
    if len(with_tools) != len(without_tools):
        raise ValueError(f"need the same instances with and without tools: {len(with_tools)} != {len(without_tools)}")
    rows = [(w.difficulty, bool(w.tool_calls), not wo.correct, w) for w, wo in zip(with_tools, without_tools)]

    def summary(rs) -> dict:
        calls = [r for r in rs if r[1]]
        need = [r for r in rs if r[2]]
        able = [r for r in rs if not r[2]]
        made = sum(len(episode_calls(r[3])) for r in rs)
        return {"precision": mean(r[2] for r in calls) if calls else 0.0,
                "recall": mean(r[1] for r in need) if need else 1.0,
                "unneeded_call_rate": mean(r[1] for r in able) if able else 0.0,
                "call_rate": mean(r[1] for r in rs), "need_rate": mean(r[2] for r in rs),
                "tool_free_accuracy": mean(not r[2] for r in rs),
                "with_tools_accuracy": mean(r[3].correct for r in rs),
                "calls_per_episode": made / len(rs) if rs else 0.0,
                "format_validity": mean(c.ok for r in rs for c in episode_calls(r[3])) if made else 1.0,
                "n": len(rs)}

    out = summary(rows)
    out["by_level"] = {lv: summary([r for r in rows if r[0] == lv]) for lv in sorted({r[0] for r in rows})}
    out["need_based"] = need_based_metrics(with_tools, without_tools)
    return out


def need_based_metrics(with_tools: Sequence[Episode], without_tools: Sequence[Episode],
                       min_tool_free: float = 0.5) -> dict:
    """Precision, recall and unneeded calls on the levels where the same policy's tool-free
    accuracy is above ``min_tool_free``, with calls and tool-free accuracy by level.

    Where the policy answers almost nothing without the tool, every instance needs it, so every
    call is needed and precision is 1 by construction. Only on levels it often answers alone can
    a call be unneeded or a miss show, so only those levels are pooled. A number with nothing to
    measure it on is None, and ``reason`` says why (no level qualifies, no calls, no need).
    """
    if len(with_tools) != len(without_tools):
        raise ValueError(f"need the same instances with and without tools: {len(with_tools)} != {len(without_tools)}")
    pairs = list(zip(with_tools, without_tools))
    levels = sorted({w.difficulty for w, _ in pairs})
    tool_free = {lv: mean(wo.correct for w, wo in pairs if w.difficulty == lv) for lv in levels}
    calls = {lv: mean(bool(w.tool_calls) for w, _ in pairs if w.difficulty == lv) for lv in levels}
    informative = [lv for lv in levels if tool_free[lv] > min_tool_free]
    rows = [(bool(w.tool_calls), not wo.correct) for w, wo in pairs if w.difficulty in informative]
    called = [need for call, need in rows if call]
    need = [call for call, needed in rows if needed]
    able = [call for call, needed in rows if not needed]
    reasons = []
    if not informative:
        reasons.append(f"no level has tool-free accuracy above {min_tool_free} (by level: "
                       + ", ".join(f"{lv}: {tool_free[lv]:.2f}" for lv in levels) + ")")
    else:
        if not called:
            reasons.append("no calls on those levels: precision not measurable")
        if not need:
            reasons.append("no instance there needs the tool: recall not measurable")
    return {"levels": informative, "min_tool_free": min_tool_free,
            "precision": mean(called) if called else None,
            "recall": mean(need) if need else None,
            "unneeded_call_rate": mean(able) if able else None,
            "calls_by_level": calls, "tool_free_by_level": tool_free,
            "n": len(rows), "reason": "; ".join(reasons) or None}


def void_turns(ep: Episode) -> int:
    """Turns of ``ep`` that gave the env nothing to use: each call that returned no result (it did
    not parse, named an unknown or disabled tool, failed, or broke the call budget), and a final
    answer that is empty."""
    last = ep.turns[-1] if ep.turns else None
    empty = last is not None and not tools.is_call(last.action) and not last.action.strip()
    return sum(not c.ok for c in episode_calls(ep)) + int(empty)


def answer_text(ep: Episode) -> str:
    """The final answer of an episode as the env received it (the action's text: a symbol view's
    decoded outputs, or the answer a used tool result gave)."""
    return ep.turns[-1].action


def replay_instance(env_id: str, ep: Episode, split: str) -> Instance:
    """The instance an episode played (its reset seed and level on ``split`` give it back)."""
    env = gym.make(env_id, disable_env_checker=True)
    env.reset(seed=ep.seed, options={"split": split, "difficulty": ep.difficulty})
    return env.unwrapped.instance


def partial_targets(family: str) -> bool:
    """Whether ``family`` distils part of an answer only (``TaskFamily.distill_targets``)."""
    return type(envs.make_family(family)).distill_targets is not TaskFamily.distill_targets


def target_accuracy(env_id: str, episodes: Sequence[Episode], split: str) -> float | None:
    """Share of the partial distillation targets (``TaskFamily.distill_targets``) that the episodes'
    final answers get right; None for a family whose targets are whole answers."""
    right = total = 0
    for ep in episodes:
        if not partial_targets(ep.family):
            return None
        targets = envs.make_family(ep.family).distill_targets(replay_instance(env_id, ep, split)) or {}
        answer = "".join(answer_text(ep).split())
        total += len(targets)
        right += sum(c < len(answer) and answer[c] == d for c, d in targets.items())
    return right / total if total else None


# -- a policy's state, before and after training ------------------------------------------------------
def sampled_test(policy: Policy, env_id: str, levels: Sequence[int], n: int, *, seed: int, temperature: float,
                 call_budget: int, partial_credit: bool, tool_cost: float, malformed_cost: float,
                 step_cost: float = 0.0, batch: int = 100) -> dict:
    """Sampled pass@1 and mean cost-adjusted reward on fixed test instances (a fixed sampling seed)."""
    jobs = [(EVAL_SEED + i, lv) for lv in levels for i in range(n)]
    gen = torch.Generator(device=policy.device)
    gen.manual_seed(seed)
    episodes: list[Episode] = []
    for s in range(0, len(jobs), batch):
        chunk = jobs[s : s + batch]
        vec = make_vec(env_id, len(chunk), call_budget=call_budget, partial_credit=partial_credit)
        try:
            with torch.no_grad():
                options = [{"split": "test", "difficulty": j[1]} for j in chunk]
                episodes += run_episodes(policy, vec, [j[0] for j in chunk], options, allow_tools=True,
                                         sample=True, temperature=temperature, generator=gen)
        finally:
            vec.close()
    rewards = [shaped_reward(e, tool_cost, malformed_cost, step_cost, policy.max_steps) for e in episodes]
    return {"reward": float(np.mean(rewards)), "pass@1": float(np.mean([e.correct for e in episodes]))}


def tool_snapshot(policy: Policy, env_id: str, levels: Sequence[int], n: int, *, call_budget: int,
                  partial_credit: bool, tool_cost: float, malformed_cost: float, step_cost: float = 0.0,
                  temperature: float = 1.0, seed: int = 0) -> dict:
    """A policy on the test split: greedy with and without tools on the same instances (success, tool
    use against measured need, greedy cost-adjusted reward) and sampled (reward, pass@1)."""
    family = envs.ENV_IDS[env_id]
    kw = dict(n_per_level=n, levels=levels, env_id=env_id)
    with torch.no_grad():
        with_tools = evaluate_family(policy, family, allow_tools=True, env_kwargs={"call_budget": call_budget}, **kw)
        without = evaluate_family(policy, family, allow_tools=False, **kw)
        sampled = sampled_test(policy, env_id, levels, n, seed=seed, temperature=temperature, call_budget=call_budget,
                               partial_credit=partial_credit, tool_cost=tool_cost, malformed_cost=malformed_cost,
                               step_cost=step_cost)
    greedy = [shaped_reward(e, tool_cost, malformed_cost, step_cost, policy.max_steps) for e in with_tools.episodes]
    return {"with_tools": with_tools.accuracy, "without_tools": without.accuracy,
            "with_tools_by_level": with_tools.by_level, "without_tools_by_level": without.by_level,
            "tools": tool_metrics(with_tools.episodes, without.episodes), "greedy_reward": mean(greedy),
            "steps": with_tools.steps, "target_accuracy": target_accuracy(env_id, without.episodes, "test"),
            **sampled}
