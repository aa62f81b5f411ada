"""Distillation of verified tool results back into the model (Stage 3).

Targets, on the easiest trained level by default (``--distill-levels``): the verified answer of a
tool-using episode becomes the tool-free target for its prompt. A family may declare that only
part of an answer can be taught (``TaskFamily.distill_targets``: Sudoku's forced cells, the only
digit their row, column and box givens allow, since a tiny model cannot learn to solve whole grids
in CPU-minutes); the loss is then on those positions only and leaves the tool head alone (a partial
grid is not an answer, so the policy keeps calling the solver), and the report adds the accuracy on
those positions, before and after.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Sequence

import gymnasium as gym
import numpy as np
import torch

from r3m import envs
from r3m.envs.base import Instance, TaskFamily
from r3m.learn.data import IGNORE, DemoSource, Example, TaskSpec, collate_causal, collate_fill
from r3m.learn.evaluation import episode_calls, evaluate_family
from r3m.learn.losses import LossOut, imitation_loss
from r3m.learn.loop import FitSpec, train_phase
from r3m.learn.policy import Policy
from r3m.learn.reporting import log
from r3m.learn.rollout import Episode, make_vec, run_episodes
from r3m.learn.run import Run, stream_rng
from r3m_agent.tokenizer import EOS_ID, PAD_ID, Tokenizer

TOK = Tokenizer()


def split_eval(cfg, policy: Policy, levels: Sequence[int], allow_tools: bool):
    return evaluate_family(policy, cfg.family, n_per_level=cfg.eval_n, levels=levels, allow_tools=allow_tools,
                           env_kwargs={"call_budget": cfg.call_budget}, env_id=cfg.env)


def answer_text(ep: Episode) -> str:
    """The final answer of an episode as the env received it."""
    ids = [t for t in ep.turns[-1].payload.tolist() if t not in (EOS_ID, PAD_ID)]
    return TOK.decode(ids)


def replay_instance(env_id: str, ep: Episode, split: str) -> Instance:
    """The instance an episode played (its reset seed and level on ``split`` give it back)."""
    env = gym.make(env_id, disable_env_checker=True)
    env.reset(seed=ep.seed, options={"split": split, "difficulty": ep.difficulty})
    return env.unwrapped.instance


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
        if not (ep.correct and ep.turns and ep.turns[-1].tool == 0):
            continue
        if not any(c.ok for c in episode_calls(ep)):
            continue
        prompt = ep.turns[0].observation
        if prompt in seen:
            continue
        seen.add(prompt)
        fam = envs.make_family(ep.family)
        partial = type(fam).distill_targets is not TaskFamily.distill_targets
        targets = fam.distill_targets(replay_instance(env_id, ep, split)) if partial and env_id else None
        out.append((Example(ep.family, ep.difficulty, prompt, 0, answer_text(ep)), targets))
    return out


def target_accuracy(env_id: str, episodes: Sequence[Episode], split: str) -> float | None:
    """Share of the partial distillation targets (``TaskFamily.distill_targets``) that the episodes'
    final answers get right; None for a family whose targets are whole answers."""
    right = total = 0
    for ep in episodes:
        fam = envs.make_family(ep.family)
        if type(fam).distill_targets is TaskFamily.distill_targets:
            return None
        targets = fam.distill_targets(replay_instance(env_id, ep, split)) or {}
        answer = "".join(answer_text(ep).split())
        total += len(targets)
        right += sum(c < len(answer) and answer[c] == d for c, d in targets.items())
    return right / total if total else None


def distill_applies(cfg) -> bool:
    return cfg.distill if cfg.distill is not None else envs.make_family(cfg.family).tool is not None


def distill_levels(cfg, trained: Sequence[int]) -> tuple[int, ...]:
    return tuple(cfg.distill_levels) if cfg.distill_levels else (min(trained),)


def harvest(cfg, policy: Policy, levels: Sequence[int], batch: int = 64) -> list[Episode]:
    """The final policy plays ``distill_n`` train instances greedily with tools (fixed seeds)."""
    rng = stream_rng(cfg.seed, "distill_harvest")
    seeds = rng.integers(0, 2**31 - 1, size=cfg.distill_n).tolist()
    episodes: list[Episode] = []
    for s in range(0, len(seeds), batch):
        chunk = seeds[s : s + batch]
        vec = make_vec(cfg.env, len(chunk), call_budget=cfg.call_budget)
        try:
            options = [{"split": "train", "difficulty": levels[(s + i) % len(levels)]}
                       for i in range(len(chunk))]
            with torch.no_grad():
                episodes += run_episodes(policy, vec, chunk, options, allow_tools=True)
        finally:
            vec.close()
    return episodes


def _tool_free(cfg, policy: Policy, levels: Sequence[int], called: Sequence[int] | None = None) -> dict:
    """Tool-free and with-tools test success on ``levels``; ``called``: the test instances (indices)
    on which the policy before distillation called a tool (default: this policy's own calls)."""
    with torch.no_grad():
        wo = evaluate_family(policy, cfg.family, n_per_level=cfg.eval_n, levels=levels, allow_tools=False,
                             env_id=cfg.env)
        w = evaluate_family(policy, cfg.family, n_per_level=cfg.eval_n, levels=levels, allow_tools=True,
                            env_kwargs={"call_budget": cfg.call_budget}, env_id=cfg.env)
    own = [i for i, e in enumerate(w.episodes) if e.tool_calls]
    called = own if called is None else called
    out = {"tool_free": wo.accuracy, "with_tools": w.accuracy, "call_rate": w.tool_call_rate,
           # of the instances the pre-distillation policy called a tool on, the share solved without it
           "unnecessary_calls": float(np.mean([wo.episodes[i].correct for i in called])) if called else 0.0,
           "_called": own}
    partial = target_accuracy(cfg.env, wo.episodes, "test")
    if partial is not None:
        out["target_accuracy"] = partial
    return out


def run_distill(cfg, run: Run, policy: Policy, spec: TaskSpec, trained: Sequence[int]) -> dict:
    """Distil verified tool answers of ``distill_levels`` into a copy of the policy.

    The replay (expert episodes with calls) covers only the other trained levels: a prompt has one
    set of payload slots, which a call fills with ARGS and an answer with the result, so replaying
    calls on the distilled prompts would pull the same slots back to the call's arguments.
    """
    levels = distill_levels(cfg, trained)
    others = tuple(lv for lv in trained if lv not in levels)
    examples = distill_examples(harvest(cfg, policy, levels), cfg.env)
    before = _tool_free(cfg, policy, levels)
    student = copy.deepcopy(policy.model)
    if not examples:
        log.warning("distillation: no verified tool-derived answers to distil")
        return {cfg.family: {"before": before["tool_free"], "after": before["tool_free"], "examples": 0}}
    replay = DemoSource([dataclasses.replace(spec, levels=others or levels)], student.cfg.tool_names, cfg.seed,
                        stream="distill_replay", tool_fraction=cfg.warm_tool_fraction, episodes=cfg.replay_batch)
    replay_coef = cfg.distill_replay_coef if others else 0.0
    K = policy.K
    # a partial target (Sudoku's forced cells) is not an answer, so it does not teach "answer now"
    tool_weight = 0.0 if any(targets is not None for _, targets in examples) else 1.0

    def loss_fn(step: int) -> LossOut:
        rng = stream_rng(cfg.seed, "distill_batches", step)
        chosen = [examples[i] for i in rng.integers(0, len(examples), size=cfg.warm_batch)]
        batch = distill_batch(spec, chosen)  # collated: one turn, empty memory
        out = imitation_loss(student, spec, batch, K=K, grad_steps=None, tool_weight=tool_weight)
        if replay_coef > 0:
            replayed = imitation_loss(student, spec, replay.get(step)[1], K=K, grad_steps=None)
            out = out._replace(loss=out.loss + replay_coef * replayed.loss)
        return out

    steps = cfg.distill_steps
    train_phase(run, "distill", student, FitSpec(steps, cfg.distill_lr, warmup=max(1, steps // 10),
                                                 ckpt_every=max(1, steps // 2), log_every=25,
                                                 samples_per_step=cfg.warm_batch),
                loss_fn, extra={"specs": [spec.as_dict()]})
    distilled = dataclasses.replace(policy, model=student)
    after = _tool_free(cfg, distilled, levels, called=before["_called"])
    before.pop("_called")
    after.pop("_called")
    res = {"before": before["tool_free"], "after": after["tool_free"], "levels": list(levels),
           "examples": len(examples), "steps": steps, "replay_levels": list(others),
           "before_detail": before, "after_detail": after}
    if others:  # did the replay keep the tool use on the levels that were not distilled?
        res["with_tools_other_levels"] = {"before": split_eval(cfg, policy, others, True).accuracy,
                                          "after": split_eval(cfg, distilled, others, True).accuracy}
    return {cfg.family: res}


def distill_batch(spec: TaskSpec, chosen: Sequence[tuple[Example, dict[int, str] | None]]):
    """Collated distillation examples; partial targets supervise only their answer positions."""
    examples = [e for e, _ in chosen]
    if spec.mode != "fill":
        return collate_causal(examples, spec.width)
    batch = collate_fill(examples, spec.width)
    if any(targets is not None for _, targets in chosen):
        masked = batch.targets.clone()
        for i, (e, targets) in enumerate(chosen):
            if targets is None:
                continue
            keep = torch.zeros(spec.width, dtype=torch.bool)
            offset = spec.width - len(e.payload) - 1  # right-aligned payload (r3m.learn.data)
            keep[[offset + c for c in targets]] = True
            masked[i] = masked[i].masked_fill(~keep, IGNORE)
        batch = batch._replace(targets=masked)
    return batch
