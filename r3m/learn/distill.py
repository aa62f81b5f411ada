"""Distillation of verified tool results back into the model (Stage 3).

Targets, on the easiest trained level by default (``--distill-levels``). Arithmetic, list
transforms and the other families: the verified answer of a tool-using episode becomes the
tool-free target for its prompt. Sudoku: a tiny model cannot learn to solve whole grids in
CPU-minutes, so what is distilled is the part of a tool result that is locally derivable: the
cells of the verified solution that are naked singles of the puzzle (the only digit their row,
column and box givens allow), on level-1 puzzles (45-50 givens). The loss is on those cells only
and leaves the tool head alone (a partial grid is not an answer, so the policy keeps calling the
solver); the report gives tool-free exact success (verifier) and the accuracy on those cells,
before and after.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Sequence

import numpy as np
import torch

from r3m import envs
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
    if cfg.family == "sudoku":
        out["single_cell_accuracy"] = single_cell_accuracy(wo.episodes)
    return out


def run_distill(cfg, run: Run, policy: Policy, spec: TaskSpec, trained: Sequence[int]) -> dict:
    """Distil verified tool answers of ``distill_levels`` into a copy of the policy.

    The replay (expert episodes with calls) covers only the other trained levels: a prompt has one
    set of payload slots, which a call fills with ARGS and an answer with the result, so replaying
    calls on the distilled prompts would pull the same slots back to the call's arguments.
    """
    levels = distill_levels(cfg, trained)
    others = tuple(lv for lv in trained if lv not in levels)
    examples = distill_examples(harvest(cfg, policy, levels))
    before = _tool_free(cfg, policy, levels)
    student = copy.deepcopy(policy.model)
    if not examples:
        log.warning("distillation: no verified tool-derived answers to distil")
        return {cfg.family: {"before": before["tool_free"], "after": before["tool_free"], "examples": 0}}
    replay = DemoSource([dataclasses.replace(spec, levels=others or levels)], student.cfg.tool_names, cfg.seed,
                        stream="distill_replay", tool_fraction=cfg.warm_tool_fraction, episodes=cfg.replay_batch)
    replay_coef = cfg.distill_replay_coef if others else 0.0
    K = policy.K
    # a Sudoku target is partial (its single cells), not an answer, so it does not teach "answer now"
    tool_weight = 0.0 if cfg.family == "sudoku" else 1.0

    def loss_fn(step: int) -> LossOut:
        rng = stream_rng(cfg.seed, "distill_batches", step)
        chosen = [examples[i] for i in rng.integers(0, len(examples), size=cfg.warm_batch)]
        batch = distill_batch(cfg.family, spec, chosen)  # collated: one turn, empty memory
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


def distill_batch(family: str, spec: TaskSpec, examples):
    """Collated distillation examples; for Sudoku, targets only on the naked-single cells."""
    if spec.mode != "fill":
        return collate_causal(examples, spec.width)
    batch = collate_fill(examples, spec.width)
    if family == "sudoku":
        targets = batch.targets.clone()
        for i, e in enumerate(examples):
            keep = torch.zeros(spec.width, dtype=torch.bool)
            offset = spec.width - len(e.payload) - 1
            cells = list(naked_singles(e.context.split(":", 1)[1]))
            keep[[offset + c for c in cells]] = True
            targets[i] = targets[i].masked_fill(~keep, IGNORE)
        batch = batch._replace(targets=targets)
    return batch


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
