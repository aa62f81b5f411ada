"""Distillation of verified tool results back into the policy (Stage 3).

The tool labels any prompt, so the targets come from as many instances as the skill needs: by
default (``source="fresh"``) every step draws fresh train instances of the distilled levels, the
family's tool is called on each (the expert's call) and its result, turned into the answer
(``TaskFamily.answer_from_tool``), is kept where the verifier accepts it; ``source="harvest"``
uses the policy's own verified tool answers on ``n`` train instances instead. Each target is a
tool-free example in the family's view: the prompt, and the verified answer as the payload.

The payload is taught on every target, but the tool head's target is "answer" only where the
model's own tool-free answer (greedy, this step's weights) already verifies; elsewhere it stays
"call the tool", so the policy stops calling exactly where it has learned to answer, and a skill
half-learned never trades a verified tool result for a wrong answer. Beside the targets it replays
expert episodes (tool calls and direct answers) of the other levels, so tool use where the tool
is still needed stays as it was.

A family may declare that only part of an answer can be taught (``TaskFamily.distill_targets``:
Sudoku's forced cells, the only digit their row, column and box givens allow, since a tiny model
cannot learn to solve whole grids in CPU-minutes); the payload loss is then on those positions
only, and ``target_accuracy`` measures them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import gymnasium as gym
import numpy as np
import torch

from r3m import envs, tools
from r3m.envs import Instance
from r3m.envs.text_env import TextTaskEnv
from r3m.learn.data import IGNORE, DemoSource, Example, TaskSpec, collate_causal, collate_fill
from r3m.learn.io import ViewIO
from r3m.learn.evaluation import answer_text, episode_calls, partial_targets, replay_instance
from r3m.learn.loop import FitSpec, FitState, train_phase
from r3m.learn.losses import LossOut, imitation_loss
from r3m.learn.policy import Policy
from r3m.learn.rollout import Episode, make_vec, run_episodes
from r3m.learn.run import Run, stream_rng


@dataclass(frozen=True)
class Distillation:
    """How a distillation phase runs (``train/rl_verify.py`` and ``train/distill.py`` expose these)."""

    n: int = 512  # train instances the policy plays with tools to harvest targets
    steps: int = 300
    lr: float = 1e-3
    batch: int = 32  # distillation targets per step
    replay_coef: float = 1.0  # weight of the replayed expert episodes (tool use on the other levels)
    replay_batch: int = 8  # expert episodes per replay batch
    call_budget: int = 4
    source: str = "fresh"  # "fresh": tool-labelled fresh instances each step; "harvest": the policy's own, n of them
    mastery: float = 0.9  # fresh: open the next level once own answers verify this often on the open ones (0: all)
    minutes: float = 0.0  # wall-clock budget of the phase (0: none); it ends at steps or here, the LR decaying to it
    patience: int = 300  # fresh: end the phase once the newest open level's own-answer rate has not risen
    # by ``gain`` for this many steps (0: never): a skill the model is not learning at this size
    gain: float = 0.03

    def __post_init__(self) -> None:
        if self.patience < 0 or not 0.0 < self.gain <= 1.0:
            raise ValueError(f"distillation patience must be >= 0 and gain in (0, 1], got {self.patience}, {self.gain}")
        if self.source not in SOURCES:
            raise ValueError(f"distillation source must be one of {', '.join(SOURCES)}, got {self.source!r}")


SOURCES = ("fresh", "harvest")


class Target(NamedTuple):
    """A tool-free distillation target: the example (prompt, choice "answer", the verified answer),
    the answer positions to supervise (None: all) and the instance (to check the model's own answer)."""

    example: Example
    positions: dict[int, str] | None
    instance: Instance | None = None


class ToolLabelled:
    """Fresh train instances each step, labelled by the family's tool: the expert's call is run, its
    result turned into the answer, and the instance kept only when that answer verifies
    (``dropped`` counts the others: a failed call, an answer the verifier rejects). The instances
    of a step are a pure function of (seed, step, the levels open).

    Mastery curriculum (``mastery`` > 0): the levels open one at a time, easiest first; the next
    opens once the model's own tool-free answers (``observe``: the verdicts ``choice_targets``
    computes anyway) verify on at least ``mastery`` of every open level's instances, as a moving
    average. A skill that is learnable in the budget gets the instances it needs instead of a
    share split with levels it cannot learn yet (on arithmetic-v0 at cpu-tiny, the five levels at
    once left level 1 at 5% tool-free after 300 steps). ``mastery`` = 0: every level from the start.
    A resumed phase starts again from the first level (it reopens the learned ones within steps)."""

    def __init__(self, spec: TaskSpec, levels: Sequence[int], seed: int, batch: int, stream: str = "distill_fresh",
                 mastery: float = 0.0, rate: float = 0.05, patience: int = 0, gain: float = 0.03):
        if not levels:
            raise ValueError("ToolLabelled needs at least one level")
        if not 0.0 <= mastery <= 1.0:
            raise ValueError(f"mastery must be in [0, 1], got {mastery}")
        self.env = TextTaskEnv(spec.family, **spec.env, **spec.train_env)
        if not self.env.family.tool:
            raise ValueError(f"{spec.family} has no tool to label instances with")
        self.levels, self.seed, self.batch, self.stream = tuple(sorted(levels)), seed, batch, stream
        self.partial = partial_targets(spec.family)
        self.dropped = 0
        self.mastery, self.rate = mastery, rate
        self.open = 1 if mastery > 0 else len(self.levels)
        self.own = {lv: 0.0 for lv in self.levels}  # moving average of the own answers' verdicts per level
        self.opened_at = {self.levels[0]: 0} if mastery > 0 else {lv: 0 for lv in self.levels}
        self.patience, self.gain = patience, gain
        self.best, self.best_step = 0.0, 0  # the newest open level's best own-answer rate, and when it was reached
        self.stalled_at: int | None = None

    @property
    def open_levels(self) -> tuple[int, ...]:
        return self.levels[: self.open]

    @property
    def closed_levels(self) -> tuple[int, ...]:
        return self.levels[self.open:]

    @property
    def calling_levels(self) -> tuple[int, ...]:
        """The levels whose tool use is still needed: the closed ones and the open ones not mastered
        yet. Their call demonstrations are replayed whole (call, result, use of the result): the
        targets here are one tool-free turn, so without the replay nothing keeps the turn after a
        result, and on listops-v0 the open level's with-tools success fell from 100% to 0%
        (malformed answers after the call, measured at 0184e09) while its skill stayed at 5%."""
        bar = self.mastery if self.mastery > 0 else 0.9
        return self.closed_levels + tuple(lv for lv in self.open_levels if self.own[lv] < bar)

    def weights(self) -> np.ndarray:
        """How the open levels are drawn: in proportion to what is left to learn on each (1 minus the
        own answers' verified rate, plus a floor), so a mastered level keeps a little replay."""
        w = np.array([1.0 - self.own[lv] + 0.1 for lv in self.open_levels])
        return w / w.sum()

    def observe(self, step: int, levels: Sequence[int], verdicts: Sequence[bool]) -> None:
        """The model's own answers on this step's targets: opens the next level once every open one
        is mastered."""
        for lv in set(levels):
            got = [v for l2, v in zip(levels, verdicts) if l2 == lv]
            self.own[lv] += self.rate * (sum(got) / len(got) - self.own[lv])
        if self.mastery > 0 and self.open < len(self.levels) and all(
                self.own[lv] >= self.mastery for lv in self.open_levels):
            self.open += 1
            self.opened_at[self.levels[self.open - 1]] = step + 1
            self.best, self.best_step = 0.0, step + 1
        frontier = self.own[self.open_levels[-1]]
        if frontier >= self.best + self.gain:
            self.best, self.best_step = frontier, step + 1

    def stalled(self, step: int) -> bool:
        """Whether the newest open level's own answers stopped improving: no gain of ``gain`` in its
        moving average for ``patience`` steps (never with patience 0). On listops-v0 at cpu-tiny the
        tool-free skill stays at 5% however long it trains (6 minutes measured at 0184e09); arithmetic's
        level 2 keeps rising by more than that every few hundred steps."""
        if self.patience and step - self.best_step >= self.patience:
            self.stalled_at = self.stalled_at if self.stalled_at is not None else step
            return True
        return False

    def label(self, index: int, level: int) -> Target | None:
        obs, info = self.env.reset(options={"index": index, "difficulty": level, "split": "train"})
        instance = self.env.instance
        prompt, reward, done = obs, 0.0, False
        try:
            actions = self.env.expert_actions(True)
        except RuntimeError:  # the tool failed on this instance
            return None
        for action in actions:
            obs, reward, terminated, truncated, info = self.env.step(action)
            done = terminated or truncated
        if not (done and reward == 1.0) or tools.is_call(actions[-1]):
            return None
        positions = self.env.family.distill_targets(instance) if self.partial else None
        return Target(Example(info["family"], info["difficulty"], prompt, 0, actions[-1]), positions, instance)

    def get(self, step: int) -> list[Target]:
        rng = stream_rng(self.seed, self.stream, step)
        out = []
        while len(out) < self.batch:
            target = self.label(int(rng.integers(2**62)), int(rng.choice(self.open_levels, p=self.weights())))
            if target is None:
                self.dropped += 1
                if self.dropped > 10 * self.batch * (step + 1):
                    raise RuntimeError(f"{self.env.family.name}: the tool labels almost no instance of levels "
                                       f"{list(self.levels)} ({self.dropped} dropped)")
                continue
            out.append(target)
        return out


def own_answer_verifies(policy: Policy, targets: Sequence[Target]) -> list[bool]:
    """Whether the policy's greedy tool-free answer to each target's prompt verifies (its instance)."""
    family = envs.make_family(targets[0].example.family)
    was_training = policy.model.training
    policy.model.eval()
    with torch.no_grad():
        actions = policy.act([t.example.context for t in targets], allow_tools=False).actions
    policy.model.train(was_training)
    return [family.verify(t.instance, a).correct for t, a in zip(targets, actions)]


def harvest(policy: Policy, env_id: str, levels: Sequence[int], n: int, seed: int, call_budget: int,
            batch: int = 64) -> list[Episode]:
    """The policy plays ``n`` train instances of ``levels`` greedily with tools (fixed seeds)."""
    seeds = stream_rng(seed, "distill_harvest").integers(0, 2**31 - 1, size=n).tolist()
    episodes: list[Episode] = []
    for s in range(0, len(seeds), batch):
        chunk = seeds[s : s + batch]
        vec = make_vec(env_id, len(chunk), call_budget=call_budget)
        try:
            options = [{"split": "train", "difficulty": levels[(s + i) % len(levels)]} for i in range(len(chunk))]
            with torch.no_grad():
                episodes += run_episodes(policy, vec, chunk, options, allow_tools=True)
        finally:
            vec.close()
    return episodes


def distill_examples(episodes: Sequence[Episode], env_id: str | None = None,
                     split: str = "train") -> list[Target]:
    """Verified episodes whose answer came from a tool, as tool-free targets, each with the answer
    positions to supervise (None: all; see ``TaskFamily.distill_targets``).

    "Came from a tool": correct, answered after at least one well-formed call that returned a
    result. The example is the prompt alone (the first observation), tool = answer, payload = the
    verified answer; duplicates (G samples of one instance) are kept once. ``env_id`` (the env the
    episodes were played in, on ``split``) gives each target its instance back, to check the
    model's own answers on (without it, a target's choice stays "answer").
    """
    out, seen = [], set()
    for ep in episodes:
        if not (ep.correct and ep.turns and not tools.is_call(ep.turns[-1].action)):
            continue
        if not any(c.ok for c in episode_calls(ep)):
            continue
        prompt = ep.turns[0].observation
        if prompt in seen:
            continue
        seen.add(prompt)
        instance = replay_instance(env_id, ep, split) if env_id else None
        positions = None
        if partial_targets(ep.family) and instance is not None:
            positions = envs.make_family(ep.family).distill_targets(instance)
        out.append(Target(Example(ep.family, ep.difficulty, prompt, 0, answer_text(ep)), positions, instance))
    return out


def distill_batch(spec: TaskSpec, chosen: Sequence[Target | tuple[Example, dict[int, str] | None]], io: ViewIO):
    """Collated distillation examples; partial targets supervise only their answer positions (a
    symbol view's outputs are in answer order, one per answer character where it declares partial
    targets)."""
    chosen = [(c[0], c[1]) for c in chosen]
    examples = [e for e, _ in chosen]
    if spec.mode == "causal":
        return collate_causal(examples, spec.width)
    batch = collate_fill(examples, io)
    if any(targets is not None for _, targets in chosen):
        masked = batch.targets.clone()
        width = masked.shape[1]
        for i, (e, targets) in enumerate(chosen):
            if targets is None:
                continue
            keep = torch.zeros(width, dtype=torch.bool)
            offset = width - len(e.payload) - 1 if spec.mode == "fill" else 0  # fill: right-aligned payload
            keep[[offset + c for c in targets]] = True
            masked[i] = masked[i].masked_fill(~keep, IGNORE)
        batch = batch._replace(targets=masked)
    return batch


def choice_targets(policy: Policy, chosen: Sequence[Target]) -> tuple[torch.Tensor, list[bool]]:
    """The tool head's target per row: "answer" (0) where the model's own tool-free answer verifies
    (or where the instance is unknown), else the family's tool; with the verdicts of the checked rows."""
    family = envs.make_family(chosen[0].example.family)
    call = 1 + policy.model.cfg.tool_names.index(family.tool) if family.tool in policy.model.cfg.tool_names else 0
    known = [i for i, t in enumerate(chosen) if t.instance is not None]
    verdicts = own_answer_verifies(policy, [chosen[i] for i in known]) if known and call else []
    want = torch.zeros(len(chosen), dtype=torch.long)
    for i, ok in zip(known, verdicts):
        want[i] = 0 if ok else call
    return want, verdicts


def distill(run: Run, phase: str, policy: Policy, spec: TaskSpec, source: "Sequence[Target] | ToolLabelled",
            replay_levels: Sequence[int], settings: Distillation, seed: int, tool_fraction: float = 0.5) -> FitState:
    """Train ``policy.model`` itself on distillation targets (one turn each, empty memory): each
    step a batch from ``source`` (a ``ToolLabelled`` stream of fresh instances, or a fixed list),
    the payload taught on every row and the choice by ``choice_targets``; beside it expert episodes
    of ``replay_levels`` (tool use kept where it is still needed). Logs the share of rows whose own
    answer verified (``tools/distill_own_answer_verified``: where the choice target is "answer")."""
    model = policy.model
    replay = None
    if replay_levels and settings.replay_coef > 0:
        replay = DemoSource([dataclasses.replace(spec, levels=tuple(replay_levels))], model.cfg.tool_names, seed,
                            stream="distill_replay", tool_fraction=tool_fraction, episodes=settings.replay_batch,
                            both=True)
    fixed = not isinstance(source, ToolLabelled)
    if fixed:
        source = [t if isinstance(t, Target) else Target(*t) for t in source]
    # the levels that still need the tool keep their tool use: their call demonstrations replayed
    calls = None if fixed else DemoSource(
        [spec], model.cfg.tool_names, seed, stream="distill_replay_calls", tool_fraction=1.0,
        episodes=settings.replay_batch)

    def loss_fn(step: int) -> LossOut:
        if fixed:
            rng = stream_rng(seed, "distill_batches", step)
            chosen = [source[i] for i in rng.integers(0, len(source), size=settings.batch)]
        else:
            chosen = source.get(step)
        want, verdicts = choice_targets(policy, chosen)
        if not fixed and len(verdicts) == len(chosen):
            source.observe(step, [t.example.difficulty for t in chosen], verdicts)
        out = imitation_loss(model, spec, distill_batch(spec, chosen, policy.io), K=policy.K, grad_steps=None,
                             choice_targets=want)
        scalars = {"tools/distill_answer_target_share": float((want == 0).float().mean())}
        if not fixed:
            scalars["tools/distill_open_levels"] = float(source.open)
        if verdicts:
            scalars["tools/distill_own_answer_verified"] = sum(verdicts) / len(verdicts)
        if replay is not None:
            replayed = imitation_loss(model, spec, replay.get(step)[1], K=policy.K, grad_steps=None)
            out = out._replace(loss=out.loss + settings.replay_coef * replayed.loss)
        if calls is not None and source.calling_levels:
            demos = calls.episodes(step, dataclasses.replace(spec, levels=source.calling_levels))
            replayed = imitation_loss(model, spec, demos, K=policy.K, grad_steps=None)
            out = out._replace(loss=out.loss + settings.replay_coef * replayed.loss)
        return out._replace(scalars={**(out.scalars or {}), **scalars})

    steps = settings.steps
    fit_spec = FitSpec(steps, settings.lr, warmup=max(1, min(100, steps // 10)), ckpt_every=max(1, min(500, steps // 2)),
                       log_every=25, samples_per_step=settings.batch, time_budget=60.0 * settings.minutes,
                       stop_when=None if fixed else source.stalled)
    return train_phase(run, phase, model, fit_spec, loss_fn, extra={"specs": [spec.as_dict()]})


def levels_to_distill(snapshot: dict, chosen: Sequence[int] = ()) -> tuple[int, ...]:
    """``chosen``, else every level where the policy calls on at least half the test instances; the
    levels where it answers directly are replayed as they are. (Distilling every calling level
    once took every call away, success with tools on arithmetic-v0 from 100% to 0%, measured, when
    the choice target was "answer" everywhere; now it is "answer" only where the model's own answer
    verifies, so a level whose skill is not learned keeps its calls.)"""
    if chosen:
        return tuple(chosen)
    return tuple(sorted(int(lv) for lv, t in snapshot["tools"]["by_level"].items() if t["call_rate"] >= 0.5))


def run_distillation(run: Run, policy: Policy, spec: TaskSpec, env_id: str, levels: Sequence[int],
                     trained: Sequence[int], before: dict, settings: Distillation, seed: int,
                     measure: Callable[[], dict], tool_fraction: float = 0.5) -> tuple[dict, dict]:
    """Distil the verified tool answers of ``levels`` into the policy itself, replaying the other
    ``trained`` levels; ``before`` and ``measure()`` are snapshots (``evaluation.tool_snapshot``)
    before and after. Returns (the distillation's numbers, the snapshot after it; None when
    nothing was distilled)."""
    if not levels:
        return {"levels": [], "examples": 0, "note": "no level to distil"}, None
    if settings.source == "fresh":
        source = ToolLabelled(spec, levels, seed, settings.batch, mastery=settings.mastery, patience=settings.patience,
                              gain=settings.gain)
        n_examples = settings.steps * settings.batch
    else:
        source = _harvested(run, policy, env_id, levels, settings, seed)
        n_examples = len(source)
        if not source:  # the policy solved nothing through a tool there: nothing to distil
            return {"levels": list(levels), "examples": 0,
                    "note": "no verified tool answers in the harvest; distillation skipped"}, None
    others = [lv for lv in trained if lv not in levels]
    state = distill(run, "distill", policy, spec, source, others, settings, seed, tool_fraction)
    curriculum = {}
    if isinstance(source, ToolLabelled):  # the levels that got targets are the ones distilled
        path = run.dir / "distill_curriculum.json"
        if path.exists():  # a resumed run whose distillation had ended: as it ended
            curriculum = json.loads(path.read_text())
        else:
            curriculum = {"offered": list(levels), "opened": list(source.open_levels), "stalled_at": source.stalled_at,
                          "opened_at_step": {str(lv): s for lv, s in source.opened_at.items()},
                          "own_answer_rate": {str(lv): round(r, 4) for lv, r in source.own.items()}}
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(curriculum))
            os.replace(tmp, path)
        levels = tuple(curriculum["opened"])
    after = measure()

    def on(snap: dict, key: str) -> float:
        return float(sum(snap["tools"]["by_level"][_key(snap, lv)][key] for lv in levels) / len(levels))

    numbers = {"levels": list(levels), "source": settings.source, "examples": n_examples, "steps": state.step,
               "seconds": state.seconds, **({"curriculum": curriculum} if curriculum else {}),
               "before": on(before, "tool_free_accuracy"), "after": on(after, "tool_free_accuracy"),
               "with_tools_before": before["with_tools_by_level"], "with_tools_after": after["with_tools_by_level"],
               "calls_before": on(before, "call_rate"), "calls_after": on(after, "call_rate"),
               "target_accuracy_before": before.get("target_accuracy"),
               "target_accuracy_after": after.get("target_accuracy")}
    return numbers, after


def _key(snap: dict, level: int):
    """Levels are ints in memory and strings once a snapshot went through JSON."""
    return level if level in snap["tools"]["by_level"] else str(level)


def _harvested(run: Run, policy: Policy, env_id: str, levels: Sequence[int], settings: Distillation,
               seed: int) -> list[Target]:
    """The harvest, played once (a resumed run distils the same targets; their instances are
    replayed from the episodes' seeds)."""
    path = run.dir / "distill_examples.json"
    if path.exists():
        env = gym.make(env_id, disable_env_checker=True)
        out = []
        for e, t, ep_seed in json.loads(path.read_text()):
            env.reset(seed=ep_seed, options={"split": "train", "difficulty": e[1]})
            out.append(Target(Example(*e), {int(k): v for k, v in t.items()} if t is not None else None,
                              env.unwrapped.instance))
        return out
    episodes = harvest(policy, env_id, levels, settings.n, seed, settings.call_budget)
    targets = distill_examples(episodes, env_id)
    seeds = {ep.turns[0].observation: ep.seed for ep in episodes if ep.turns}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([(list(t.example), t.positions, seeds[t.example.context]) for t in targets]))
    os.replace(tmp, path)
    return targets
