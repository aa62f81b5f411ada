"""Distillation of verified tool results back into the policy (Stage 3).

The policy plays train instances of the levels where it calls a tool; every verified answer that
came from a tool becomes a tool-free target for its prompt (choice "answer", payload the verified
answer), and the same policy trains on them, so where it learns to answer it also learns to stop
calling. Beside them it replays expert episodes (tool calls and direct answers) of the other
levels, so tool use where the tool is still needed stays as it was.

A family may declare that only part of an answer can be taught (``TaskFamily.distill_targets``:
Sudoku's forced cells, the only digit their row, column and box givens allow, since a tiny model
cannot learn to solve whole grids in CPU-minutes); the loss is then on those positions only and
leaves the choice alone (a partial grid is not an answer, so the policy keeps calling the solver),
and ``target_accuracy`` measures those positions.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from r3m import envs, tools
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
                     split: str = "train") -> list[tuple[Example, dict[int, str] | None]]:
    """Verified episodes whose answer came from a tool, as tool-free targets, each with the answer
    positions to supervise (None: all; see ``TaskFamily.distill_targets``).

    "Came from a tool": correct, answered after at least one well-formed call that returned a
    result. The example is the prompt alone (the first observation), tool = answer, payload = the
    verified answer; duplicates (G samples of one instance) are kept once. ``env_id`` (the env the
    episodes were played in, on ``split``) is needed only for families with partial targets.
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
        targets = None
        if partial_targets(ep.family) and env_id:
            targets = envs.make_family(ep.family).distill_targets(replay_instance(env_id, ep, split))
        out.append((Example(ep.family, ep.difficulty, prompt, 0, answer_text(ep)), targets))
    return out


def distill_batch(spec: TaskSpec, chosen: Sequence[tuple[Example, dict[int, str] | None]], io: ViewIO):
    """Collated distillation examples; partial targets supervise only their answer positions (a
    symbol view's outputs are in answer order, one per answer character where it declares partial
    targets)."""
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


def distill(run: Run, phase: str, policy: Policy, spec: TaskSpec, examples: Sequence[tuple[Example, dict | None]],
            replay_levels: Sequence[int], settings: Distillation, seed: int, tool_fraction: float = 0.5) -> FitState:
    """Train ``policy.model`` itself on ``examples`` (one turn each, empty memory) beside expert
    episodes of ``replay_levels`` (tool use kept where it is still needed)."""
    model = policy.model
    replay = None
    if replay_levels and settings.replay_coef > 0:
        replay = DemoSource([dataclasses.replace(spec, levels=tuple(replay_levels))], model.cfg.tool_names, seed,
                            stream="distill_replay", tool_fraction=tool_fraction, episodes=settings.replay_batch,
                            both=True)
    # a partial target (Sudoku's forced cells) is not an answer, so it does not teach "answer now"
    tool_weight = 0.0 if any(targets is not None for _, targets in examples) else 1.0

    def loss_fn(step: int) -> LossOut:
        rng = stream_rng(seed, "distill_batches", step)
        chosen = [examples[i] for i in rng.integers(0, len(examples), size=settings.batch)]
        out = imitation_loss(model, spec, distill_batch(spec, chosen, policy.io), K=policy.K, grad_steps=None,
                             tool_weight=tool_weight)
        if replay is not None:
            replayed = imitation_loss(model, spec, replay.get(step)[1], K=policy.K, grad_steps=None)
            out = out._replace(loss=out.loss + settings.replay_coef * replayed.loss)
        return out

    steps = settings.steps
    fit_spec = FitSpec(steps, settings.lr, warmup=max(1, steps // 10), ckpt_every=max(1, steps // 2), log_every=25,
                       samples_per_step=settings.batch)
    return train_phase(run, phase, model, fit_spec, loss_fn, extra={"specs": [spec.as_dict()]})


def levels_to_distill(snapshot: dict, chosen: Sequence[int] = ()) -> tuple[int, ...]:
    """``chosen``, else the easiest level where the policy calls on at least half the test
    instances: one level moves from the tool into the weights while the others are replayed with
    their tool use. (Distilling every level that calls, the default before, left no level to
    replay: on arithmetic-v0 the calls went to 0 on every level and success with tools from 100%
    to 0%, measured.)"""
    if chosen:
        return tuple(chosen)
    calling = sorted(int(lv) for lv, t in snapshot["tools"]["by_level"].items() if t["call_rate"] >= 0.5)
    return tuple(calling[:1])


def run_distillation(run: Run, policy: Policy, spec: TaskSpec, env_id: str, levels: Sequence[int],
                     trained: Sequence[int], before: dict, settings: Distillation, seed: int,
                     measure: Callable[[], dict], tool_fraction: float = 0.5) -> tuple[dict, dict]:
    """Distil the verified tool answers of ``levels`` into the policy itself, replaying the other
    ``trained`` levels; ``before`` and ``measure()`` are snapshots (``evaluation.tool_snapshot``)
    before and after. Returns (the distillation's numbers, the snapshot after it; None when
    nothing was distilled)."""
    if not levels:
        return {"levels": [], "examples": 0, "note": "no level to distil"}, None
    examples = _harvested(run, policy, env_id, levels, settings, seed)
    if not examples:  # the policy solved nothing through a tool there: nothing to distil
        return {"levels": list(levels), "examples": 0,
                "note": "no verified tool answers in the harvest; distillation skipped"}, None
    others = [lv for lv in trained if lv not in levels]
    distill(run, "distill", policy, spec, examples, others, settings, seed, tool_fraction)
    after = measure()

    def on(snap: dict, key: str) -> float:
        return float(sum(snap["tools"]["by_level"][_key(snap, lv)][key] for lv in levels) / len(levels))

    numbers = {"levels": list(levels), "examples": len(examples),
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
               seed: int) -> list[tuple[Example, dict[int, str] | None]]:
    """The harvest, played once (a resumed run distils the same targets)."""
    path = run.dir / "distill_examples.json"
    if path.exists():
        return [(Example(*e), {int(k): v for k, v in t.items()} if t is not None else None)
                for e, t in json.loads(path.read_text())]
    examples = distill_examples(harvest(policy, env_id, levels, settings.n, seed, settings.call_budget), env_id)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([(list(e), t) for e, t in examples]))
    os.replace(tmp, path)
    return examples
