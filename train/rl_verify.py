"""Stage 3: policy gradients from the verifiers, with tools, then distillation, then RL again.

    python train/rl_verify.py --env arithmetic-v0      # warm start, RL, distillation, RL, baselines
    python train/rl_verify.py --env sudoku-v0
    python train/rl_verify.py --env listops-v0 --init runs/imitate-X/ckpt/stage1.pt

Without ``--init`` an imitation warm start (Stage 1 of ``r3m.learn.stages``) gives the starting
policy: every instance it sees comes twice, answered directly and through the family's tool, so the
policy starts undecided between the two (neither "always call" nor "never call") and knows both
contents. An action is a decision (answer or a tool; with ``--halt`` also the refinement steps),
then the content conditioned on it (``r3m.learn.policy``). Each RL iteration samples G episodes
of each of ``groups`` train instances (one ``reset`` seed per group) through the vectorized env,
which runs the tool calls and the verifier. Then the verified tool answers of the levels where the
policy still calls are distilled into the same policy (``r3m.learn.distill``), and RL runs again.
Tool use is measured against need: an instance needs the tool when the same policy, forced to
answer without it, gets it wrong (``r3m.learn.evaluation.tool_metrics``). Baselines on the same
test instances (``r3m.learn.baselines``): a dense Transformer trained without tools on the same
demonstration budget (its own best of three learning rates), R3M with its tools masked, and, for a
family with a numeric env (Sudoku), MaskablePPO with the env-step budget stated beside it.

Reward of an episode (``r3m.learn.evaluation.shaped_reward``)::

    r = verifier reward (1 correct, else 0; 0 when truncated)
        - tool_cost * calls - malformed_cost * malformed calls - halt_cost * steps / K (with --halt)

so a call where the tool-free answer would be right lowers the return. ``calls`` counts every
``<call>`` the policy made, including the one that broke the env's call budget.

Advantages are group-relative: G samples of one instance form a group. GRPO (Shao et al. 2024)
standardises rewards within the group; RLOO (Ahmadian et al. 2024) subtracts the mean of the
other G-1 samples. A group whose rewards are all equal carries no signal; it is counted and left
out of the update. The update is PPO's clipped surrogate on length-normalised sequence ratios
with a bounded KL to the policy the phase started from (``r3m.learn.losses.clipped_objective``;
--kl-estimator, --kl-clamp), each episode replayed turn by turn with its memory re-threaded with
gradients (``rollout.rescore``). Turns that gave the env nothing (a call without a result, an
empty answer) are counted as void.

Every verified (correct) rollout, tool calls included, is kept in ``episodes.jsonl`` in the run
folder (``r3m.learn.replay.save_rl_episodes``), for Stage 4's replay buffer (``train/consolidate.py``).

An RL phase cannot collapse silently: every --guard-every iterations the greedy policy plays a
fixed set of train-split instances with tools, and when its success falls more than --guard-drop
below the phase's best, the parameters and optimizer state of that best evaluation are restored
(a rollback, counted) or, with --guard-action stop, restored and the run's training ends there.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

if __package__ in (None, ""):  # `python train/rl_verify.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3m.learn.cli import require_train_extra

require_train_extra(__name__)  # without torch: one line naming the extra, not a traceback

import numpy as np
import torch

from r3m import envs, tools
from r3m.learn import baselines, cli, stages
from r3m.learn.cli import check_device
from r3m.learn.data import DemoSource, TaskSpec, task_spec
from r3m.learn.distill import Distillation, levels_to_distill, run_distillation
from r3m.learn.evaluation import (
    eval_levels,
    evaluate_family,
    evaluate_instances,
    external_sets,
    shaped_reward,
    tool_metrics,
    tool_snapshot,
    void_turns,
)
from r3m.learn.io import with_views
from r3m.learn.loop import Diverged, Interrupted, all_finite, average_gradients, make_optimizer, progress_bar
from r3m.learn.losses import KL_ESTIMATORS, action_tokens, clipped_objective, imitation_loss, write_penalties
from r3m.learn.plots import plot_reward_curve
from r3m.learn.policy import Policy
from r3m.learn.replay import rl_records, save_rl_episodes
from r3m.learn.reporting import log, rl_table, setup_logging, write_metrics
from r3m.learn.rollout import Episode, make_vec, rescore, run_episodes
from r3m.learn.run import Run, barrier, jsonable, seed_everything, start_run, stream_rng, stream_seed
from r3m_agent import PRESETS, R3M, load_checkpoint, model_from_checkpoint, save_checkpoint
from r3m_agent.checkpoint import read_checkpoint
from r3m_agent.tokenizer import PAD_ID


@dataclass(frozen=True)
class Config:
    """Verifier-feedback RL with tools (RLOO/GRPO, PPO clipping, a KL to the phase's start), then
    distillation of tool results into the same policy, then RL again."""

    env: str = "sudoku-v0"
    """Registered text env id to train on (its family's test split is evaluated)."""
    init: str = ""
    """Imitation checkpoint to start from (empty: run the imitation warm start)."""
    out: str = ""
    """Run directory (empty: runs/rl-<env>-<time>)."""
    resume: bool = False
    """Continue the run in --out from its checkpoints."""
    seed: int = 0
    """Seeds the warm start, every rollout and update (iteration data: a function of seed, iteration)."""
    device: str = "cpu"
    """cpu, cuda, cuda:N or auto."""
    threads: int = 1
    """torch CPU threads (0: torch's default; 1 is fastest on a small shared machine)."""
    preset: str = "cpu-tiny"
    """R3M size for the warm start (r3m_agent.PRESETS)."""
    k: int = 2
    """Refinement steps K of the policy (warm start trains K' <= k; 0 with --init: the checkpoint's K)."""
    halt: bool = False
    """Adaptive halting: the warm start adds stage 2, and the halting step is part of the sampled
    action (its log-probability in the policy gradient, --halt-cost x steps/K in the reward)."""
    levels: tuple[int, ...] = ()
    """Difficulty levels to train and evaluate (empty: all of the family's levels)."""
    warm_steps: int = 400
    """Warm start: imitation steps (stage 1)."""
    warm_batch: int = 32
    """Warm start: demonstrations (turns) per step."""
    warm_lr: float = 2e-3
    """Warm start: peak learning rate."""
    warm_curriculum: float = 0.0
    """Warm start: share of its steps over which the levels unlock, easiest first (0: off)."""
    warm_halt_steps: int = 200
    """Warm start with --halt: stage-2 (halting) imitation steps."""
    tool_fraction: float = 0.5
    """Share of the demonstrations that call the family's tool (warm start and replay); with
    --both-demos every instance comes once each way instead."""
    both_demos: bool = True
    """Demonstrate every instance twice, answered directly and through the tool."""
    iterations: int = 30
    """RL iterations before distillation (one rollout + update each)."""
    iterations_after: int = 10
    """RL iterations after distillation (when it runs)."""
    groups: int = 8
    """Instances per iteration."""
    group_size: int = 8
    """Samples (episodes) per instance: G."""
    temperature: float = 1.0
    """Sampling temperature (the ratio is taken under the T=1 policy, so keep 1 unless you mean it)."""
    advantage: str = "rloo"
    """rloo (leave-one-out baseline) or grpo (group-standardised rewards; dividing by a tiny std
    turns call-cost differences between failed samples into full-size advantages)."""
    epochs: int = 2
    """Passes over an iteration's episodes."""
    minibatch: int = 32
    """Episodes per optimiser step (each replayed turn by turn with its memory)."""
    lr: float = 3e-4
    """AdamW learning rate of the RL phases (constant)."""
    clip: float = 0.05
    """PPO clip range of the length-normalised (per-token geometric mean) ratio."""
    kl_coef: float = 0.02
    """Weight of the KL to the policy the RL phase started from."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k2"
    """Per-token KL estimate (r3m.learn.losses.kl_estimate): k2 (r^2 / 2 of the log-ratio r), k1 (-r)
    or k3 (e^r - r - 1). k3 grows exponentially in r: on 82-token Sudoku actions it reached 100-469
    just before the policy collapsed; k2 grows as r^2 and its gradient is the KL's."""
    kl_clamp: float = 5.0
    """Bound on the per-token log-ratio to the reference before the KL estimate, so the penalty is
    bounded whatever the action's length (k2 <= kl_clamp^2 / 2); 0: no bound."""
    guard_every: int = 5
    """Greedy evaluation of success with tools at each RL phase's start and every this many
    iterations, on fixed train-split instances (never the test split); 0: off."""
    guard_drop: float = 0.02
    """An evaluation more than this below the phase's best (0.02: 2 points) triggers --guard-action."""
    guard_action: Literal["rollback", "stop"] = "rollback"
    """On such a drop: rollback (restore the parameters and optimizer state of the best evaluation,
    then go on) or stop (restore them, then end the run's training with one log line)."""
    guard_n: int = 0
    """Instances per level of the guard's evaluation (0: --eval-n)."""
    entropy_coef: float = 0.0
    """Entropy bonus (per payload token)."""
    replay_coef: float = 0.1
    """Weight of the imitation replay loss (expert episodes, both ways) beside the policy gradient."""
    replay_batch: int = 4
    """Expert episodes per replay batch (one batch per optimiser step)."""
    tool_cost: float = 0.1
    """Reward cost per tool call: calling where the tool-free answer would be right lowers the return."""
    malformed_cost: float = 0.1
    """Reward cost per malformed call (unparsable, unknown or disabled tool)."""
    halt_cost: float = 0.1
    """With --halt: reward cost of the refinement steps an episode ran, per K steps (a one-turn
    episode that runs all K steps pays halt_cost)."""
    write_penalty: float = 1.0
    """Weight of the memory's write budget (as train/imitate.py)."""
    write_budget: float = 8.0
    """Writes per episode before the write-budget penalty applies."""
    write_cost: float = 0.0
    """Price of each (soft) memory write (with the learned gate only)."""
    partial_credit: bool = True
    """Train on the verifier's partial-credit score (e.g. Sudoku: share of valid units) instead of 0/1;
    success is always the verifier's exact verdict."""
    call_budget: int = 4
    """Env call budget; one more call truncates the episode with verifier reward 0."""
    curriculum: bool = True
    """Weight levels by group success s(1-s) (else uniform)."""
    grad_clip: float = 1.0
    """Gradient-norm clipping."""
    max_bad_steps: int = 20
    """Stop the run after this many optimiser steps in a row with a NaN/inf loss or gradient (each
    such step is skipped; the last checkpoint stays as it was)."""
    eval_n: int = 40
    """Test instances per level for the evaluations."""
    external: bool = True
    """Also evaluate on the family's registered external sets (r3m.envs.list_eval_sets; for Sudoku the
    collections in ../shared/eval/sudoku). A missing file is skipped with one warning."""
    distill: bool | None = None
    """Distillation phase: on, off, or none = where it applies (families with a tool)."""
    distill_levels: tuple[int, ...] = ()
    """Levels to distil (empty: every level where the policy calls on at least half the test
    instances; the levels where it answers directly are replayed)."""
    distill_source: Literal["fresh", "harvest"] = "fresh"
    """Distillation targets: fresh train instances each step, labelled by the family's tool and kept
    where the answer verifies (fresh), or the policy's own verified tool answers on --distill-n
    train instances (harvest)."""
    distill_n: int = 512
    """With --distill-source harvest: train instances the policy plays with tools for targets."""
    distill_steps: int = 4000
    """Optimiser steps of the distillation phase (at most; --distill-minutes may end it first)."""
    distill_minutes: float = 8.0
    """Wall-clock budget of the distillation phase in minutes (0: none; the learning rate decays over it)."""
    distill_patience: int = 300
    """With --distill-source fresh: end the distillation once the newest open level's own-answer rate
    has not risen by 3 points for this many steps (a skill not being learned; 0: never)."""
    distill_mastery: float = 0.9
    """With --distill-source fresh: the distilled levels open one at a time, easiest first, the next
    once the model's own tool-free answers verify on this share of every open level (0: all at once)."""
    distill_lr: float = 1e-3
    """Distillation learning rate (warmup then cosine)."""
    distill_replay_coef: float = 1.0
    """Weight of the expert-episode replay of the other levels during distillation."""
    baselines: bool = True
    """Train/evaluate the baselines (dense without tools; MaskablePPO where the family has a numeric env)."""
    dense_lrs: tuple[float, ...] = (1e-3, 2e-3, 4e-3)
    """Learning rates tried for the dense baseline (the best on held-out train instances is reported)."""
    sb3_timesteps: int = 50_000
    """MaskablePPO env steps (stated beside its result)."""
    ckpt_every: int = 10
    """Checkpoint interval (iterations)."""
    tensorboard: bool = True
    """Write TensorBoard logs."""
    progress: bool = True
    """Show progress bars."""
    plugin: tuple[str, ...] = ()
    """User modules to import first (a module name importable from the current folder, or a .py
    path), which register task families and tools the other options can then name."""
    stop_after: int = 0
    """Testing aid: stop (as if killed) after this many RL iterations in this process."""

    def __post_init__(self) -> None:
        if self.env not in envs.ENV_IDS:
            raise ValueError(f"--env must be a registered text env id, one of {sorted(envs.ENV_IDS)}; "
                             f"got {self.env!r}")
        if self.advantage not in ("grpo", "rloo"):
            raise ValueError(f"--advantage must be grpo or rloo, got {self.advantage!r}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"--kl-estimator must be one of {' '.join(KL_ESTIMATORS)}, got {self.kl_estimator!r}")
        if self.guard_action not in ("rollback", "stop"):
            raise ValueError(f"--guard-action must be rollback or stop, got {self.guard_action!r}")
        if not 0.0 <= self.warm_curriculum < 1.0:
            raise ValueError(f"--warm-curriculum is a share of the warm-start steps in [0, 1), got {self.warm_curriculum}")
        cli.check_at_least(self, warm_halt_steps=1, group_size=2, groups=1, iterations=0, iterations_after=0, epochs=1,
                           kl_clamp=0, guard_every=0, guard_drop=0, guard_n=0, distill_minutes=0)
        if not 0.0 <= self.distill_mastery <= 1.0:
            raise ValueError(f"--distill-mastery must be in [0, 1], got {self.distill_mastery}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if self.k < 0 or (self.k == 0 and not self.init):
            raise ValueError("--k must be >= 1 (0 only with --init: the checkpoint's K)")
        levels = envs.make_family(self.family).levels
        if any(lv not in levels for lv in (*self.levels, *self.distill_levels)):
            raise ValueError(f"--levels/--distill-levels {' '.join(map(str, (*self.levels, *self.distill_levels)))}: "
                             f"{self.family} has levels {levels}")
        if self.init:
            init_spec(self.init, self.family)  # a missing or unreadable checkpoint fails here, one line
        check_device(self.device)

    @property
    def family(self) -> str:
        return envs.ENV_IDS[self.env]

    @property
    def distillation(self) -> Distillation:
        return Distillation(self.distill_n, self.distill_steps, self.distill_lr, self.warm_batch,
                            self.distill_replay_coef, max(4, self.replay_batch), self.call_budget, self.distill_source,
                            self.distill_mastery, self.distill_minutes, self.distill_patience)


# -- set-up ---------------------------------------------------------------------------------------
def train_levels(cfg: Config) -> tuple[int, ...]:
    """The levels to train and evaluate: --levels, or all of the family's."""
    return tuple(cfg.levels) or tuple(envs.make_family(cfg.family).levels)


def init_spec(path: str, family: str) -> TaskSpec:
    """The decoding spec of ``family`` saved in checkpoint ``path`` (ValueError if there is none)."""
    payload = read_checkpoint(path)
    specs = [TaskSpec.from_dict(d) for d in (payload.get("extra") or {}).get("specs", [])]
    spec = next((s for s in specs if s.family == family), None)
    if spec is None:
        raise ValueError(f"--init {path} has no decoding spec for family {family!r} (it lists "
                         f"{[s.family for s in specs]}); train one with train/imitate.py --families {family}")
    return spec


def starting_model(cfg: Config, run: Run) -> tuple[torch.nn.Module, TaskSpec, int]:
    """(model, this family's decoding spec, demonstrations the warm start used)."""
    if not cfg.init:
        return warm_start(cfg, run)
    return model_from_checkpoint(cfg.init).to(run.device), init_spec(cfg.init, cfg.family), 0


def warm_start(cfg: Config, run: Run) -> tuple[torch.nn.Module, TaskSpec, int]:
    """Stage 1 (and with --halt Stage 2) imitation on this family, as the phases ``warm_stage1``
    and ``warm_stage2`` of this run, on every instance answered both ways (--both-demos)."""
    levels = train_levels(cfg)
    spec = task_spec(cfg.family, levels, eval_levels(cfg.family, levels))
    seed_everything(cfg.seed)
    model = R3M(with_views(dataclasses.replace(PRESETS[cfg.preset], K=cfg.k, tool_names=tuple(tools.list_tools())),
                           [spec]))
    model = model.to(run.device)
    settings = stages.Imitation(steps=cfg.warm_steps, lr=cfg.warm_lr, batch_size=cfg.warm_batch,
                                warmup=max(1, cfg.warm_steps // 5), k_train=cfg.k, grad_steps=min(2, cfg.k),
                                tool_fraction=cfg.tool_fraction, both_demos=cfg.both_demos, drift_penalty=0.0,
                                write_penalty=cfg.write_penalty, write_budget=cfg.write_budget,
                                write_cost=cfg.write_cost, max_bad_steps=cfg.max_bad_steps,
                                curriculum=cfg.warm_curriculum)
    log.info(f"warm start: {cfg.warm_steps} imitation steps on {cfg.family}")
    stages.stage1(run, "warm_stage1", model, [spec], settings, cfg.seed)
    if cfg.halt:
        stages.stage2(run, "warm_stage2", model, [spec],
                      dataclasses.replace(settings, steps=cfg.warm_halt_steps, curriculum=0.0),
                      cfg.seed, lambda_p=0.3, beta=0.05)
    model.requires_grad_(True)
    return model, spec, cfg.warm_steps * cfg.warm_batch


def make_policy(cfg: Config, model: torch.nn.Module, spec: TaskSpec) -> Policy:
    K = cfg.k or getattr(getattr(model, "cfg", None), "K", None)
    return Policy(model, spec, K=K, halt=cfg.halt)


# -- rollouts, advantages, the update ---------------------------------------------------------------
def rollout(cfg: Config, it: int, policy: Policy, vec, curriculum: Curriculum, levels: tuple[int, ...],
            run: Run) -> tuple[list[Episode], list[int]]:
    """G sampled episodes of each of ``groups`` train instances: a function of (seed, iteration, weights).

    Under torchrun process r plays the groups r, r + world, ... and every process then holds all
    episodes (``gather_groups``), so advantages, the curriculum and the minibatches agree."""
    rng = stream_rng(cfg.seed, "rollout", it)
    if cfg.curriculum:
        group_levels = curriculum.sample(rng, cfg.groups)
    else:
        group_levels = [int(x) for x in rng.choice(levels, cfg.groups)]
    group_seeds = rng.integers(0, 2**31 - 1, size=cfg.groups).tolist()
    mine = list(range(run.rank, cfg.groups, run.world))
    seeds = [group_seeds[g] for g in mine for _ in range(cfg.group_size)]
    options = [{"split": "train", "difficulty": group_levels[g]} for g in mine for _ in range(cfg.group_size)]
    gen = torch.Generator(device=policy.device)
    gen.manual_seed(stream_seed(cfg.seed, "rollout", it, run.rank))
    policy.model.eval()
    with torch.no_grad():
        episodes = run_episodes(policy, vec, seeds, options, allow_tools=True, sample=True,
                                temperature=cfg.temperature, generator=gen)
    return gather_groups(episodes, mine, cfg.groups, cfg.group_size), group_levels


def gather_groups(episodes: list[Episode], mine: list[int], groups: int, G: int) -> list[Episode]:
    """All processes' episodes in group order (this process's alone without torchrun)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return episodes
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, (mine, episodes))
    by_group = {g: eps[i * G:(i + 1) * G] for part_groups, eps in parts for i, g in enumerate(part_groups)}
    return [ep for g in range(groups) for ep in by_group[g]]


def rl_iteration(cfg: Config, it: int, policy: Policy, ref: Policy, optimizer, vec, curriculum: Curriculum,
                 replay: "Replay", levels: tuple[int, ...], run: Run, state: dict) -> dict:
    episodes, group_levels = rollout(cfg, it, policy, vec, curriculum, levels, run)
    if run.main:  # the verified rollouts, tool calls included, for Stage 4's replay buffer (consolidate.py)
        save_rl_episodes(run.dir / "episodes.jsonl", rl_records(episodes, it), it)
    G = cfg.group_size
    rewards = torch.tensor([reward_of(cfg, policy, e) for e in episodes]).view(-1, G)
    adv, zero = group_advantages(rewards, cfg.advantage)
    solved = torch.tensor([e.correct for e in episodes], dtype=torch.float32).view(-1, G)
    if cfg.curriculum:
        curriculum.update(group_levels, solved.mean(1).tolist())
    keep = [i for i in range(len(episodes)) if not bool(zero[i // G])]
    void = sum(void_turns(e) for e in episodes)
    stats = {"rl/reward": float(rewards.mean()), "rl/pass@1": float(solved.mean()),
             "rl/zero_variance_groups": float(zero.sum()), "rl/zero_variance_share": float(zero.float().mean()),
             "rl/void_turns": float(void), "rl/void_turn_share": void / max(1, sum(len(e.turns) for e in episodes)),
             "rl/all_solved_groups": float((solved.mean(1) == 1).float().mean()),
             "rl/all_failed_groups": float((solved.mean(1) == 0).float().mean()),
             "rl/mean_level": float(np.mean(group_levels)),
             "rl/env_steps": float(sum(len(e.turns) for e in episodes)),
             "tools/call_rate": float(np.mean([e.tool_calls > 0 for e in episodes])),
             "tools/calls_per_episode": float(np.mean([e.tool_calls for e in episodes])),
             "tools/malformed_rate": float(np.mean([e.malformed_calls > 0 for e in episodes])),
             "halt/steps": float(np.mean([e.steps for e in episodes])),
             "memory/writes_per_episode": float(np.mean([e.writes for e in episodes]))}
    if keep:
        kept = [episodes[i] for i in keep]
        batch = EpisodeBatch(kept, torch.tensor([float(adv.view(-1)[i]) for i in keep]))
        batch.ref_lp = reference_log_probs(ref, kept)
        stats.update(update(cfg, it, policy, optimizer, batch, replay, run, state))
    return stats


def reward_of(cfg: Config, policy: Policy, ep: Episode) -> float:
    """The training reward: cost-adjusted, with the compute cost when halting is learned."""
    return shaped_reward(ep, cfg.tool_cost, cfg.malformed_cost, cfg.halt_cost if cfg.halt else 0.0,
                         policy.max_steps)


@torch.no_grad()
def reference_log_probs(ref: Policy, episodes: list[Episode]) -> torch.Tensor:
    """log pi_ref of every sampled action, each turn with the memory the reference writes itself."""
    return rescore(ref, episodes).log_prob.cpu()


def pg_loss(cfg: Config, policy: Policy, mb: "EpisodeBatch", run: Run) -> tuple[torch.Tensor, dict]:
    """The policy-gradient loss of minibatch ``mb``: this process's share of its episodes
    (episodes rank, rank + world, ...), each replayed turn by turn with the memory carried with
    gradients (``rollout.rescore``), scaled so that the gradients averaged over processes are
    those of the whole minibatch in one process (a mean over its actions)."""
    dev = policy.device
    mine = list(range(run.rank, len(mb.episodes), run.world))
    if not mine:
        return torch.zeros((), device=dev), {}
    part = mb.select(mine)
    scored = rescore(policy, part.episodes)
    tokens = torch.cat([action_tokens(_payloads(ep)) for ep in part.episodes]).to(dev)
    pg = clipped_objective(scored.log_prob, part.old_lp.to(dev), part.ref_lp.to(dev), part.per_action_adv().to(dev),
                           tokens, cfg.clip, cfg.kl_coef, cfg.kl_estimator, cfg.kl_clamp)
    loss = (pg.loss - cfg.entropy_coef * scored.entropy.mean()) * (len(scored.log_prob) * run.world / mb.n_actions)
    if scored.write_probs is not None and (cfg.write_penalty or cfg.write_cost):  # a mean over episodes
        memory = write_penalties([(scored.episode, scored.write_probs)], len(part.episodes), cfg.write_penalty,
                                 cfg.write_budget, cfg.write_cost)
        loss = loss + memory * (len(part.episodes) * run.world / len(mb.episodes))
    stats = {"rl/pg_loss": pg.pg_loss, "rl/kl": pg.kl, "rl/clip_fraction": pg.clip_fraction, "rl/ratio": pg.ratio,
             "rl/entropy": float(scored.entropy.mean().detach())}
    return loss, stats


def update(cfg: Config, it: int, policy: Policy, optimizer, batch: "EpisodeBatch", replay: "Replay", run: Run,
           state: dict) -> dict:
    model = policy.model
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "update", it))
    logs: dict[str, list[float]] = {}
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(batch.episodes), generator=gen).tolist()
        for s in range(0, len(order), cfg.minibatch):
            loss, stats = pg_loss(cfg, policy, batch.select(order[s : s + cfg.minibatch]), run)
            if cfg.replay_coef > 0:
                demos = replay.get(it * 1000 + step)[1]
                loss = loss + cfg.replay_coef * imitation_loss(model, replay.spec, demos, K=policy.K,
                                                               grad_steps=None).loss
            optimizer.zero_grad(set_to_none=True)
            norm = float("nan")
            if all_finite(loss.detach()):
                loss.backward()
                average_gradients(model)
                norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            if math.isfinite(norm):
                optimizer.step()
                state["bad_in_a_row"] = 0
            else:  # skipped, as in the imitation loop; a run of them stops the run
                state["nan_steps"] = state.get("nan_steps", 0) + 1
                state["bad_in_a_row"] = state.get("bad_in_a_row", 0) + 1
                if state["bad_in_a_row"] >= cfg.max_bad_steps:
                    raise Diverged(f"rl: {state['bad_in_a_row']} updates in a row had a NaN/inf loss or gradient "
                                   f"(iteration {it + 1}); stopped. The last RL checkpoint is untouched; lower "
                                   "--lr or tighten --clip")
            for k, v in (("rl/loss", float(loss.detach())), ("rl/grad_norm", norm), *stats.items()):
                logs.setdefault(k, []).append(v)
            if step == 0 and "rl/ratio" in stats:
                logs["rl/ratio_first"] = [stats["rl/ratio"]]
            step += 1
    return {k: float(np.mean(v)) for k, v in logs.items()}


# -- an RL phase ------------------------------------------------------------------------------------
class Replay:
    """The expert episodes replayed beside the policy gradient: each instance answered both ways
    (``DemoSource(both=...)``) on the levels where the policy may still call, and answered directly
    on ``answer_levels`` (those distillation taught it to answer: replaying their calls would teach
    the calls back), in proportion to the levels' number."""

    def __init__(self, cfg: Config, spec: TaskSpec, tool_names: Sequence[str], rank: int,
                 answer_levels: Sequence[int] = ()):
        self.answer = tuple(lv for lv in spec.levels if lv in answer_levels)
        self.calling = tuple(lv for lv in spec.levels if lv not in self.answer)
        n_answer = round(cfg.replay_batch * len(self.answer) / len(spec.levels)) if self.answer else 0
        self.spec = spec
        self.both = (DemoSource([dataclasses.replace(spec, levels=self.calling)], tool_names, cfg.seed, stream="replay",
                                tool_fraction=cfg.tool_fraction, episodes=max(1, cfg.replay_batch - n_answer),
                                rank=rank, both=cfg.both_demos) if self.calling else None)
        self.direct = (DemoSource([dataclasses.replace(spec, levels=self.answer)], tool_names, cfg.seed,
                                  stream="replay_answer", tool_fraction=0.0, episodes=max(1, n_answer), rank=rank)
                       if self.answer else None)

    def get(self, step: int) -> tuple[TaskSpec, list]:
        episodes = []
        for source in (self.both, self.direct):
            if source is not None:
                episodes += source.get(step)[1]
        return self.spec, episodes


def train_rl(cfg: Config, run: Run, phase: str, iterations: int, policy: Policy, ref: Policy,
             spec: TaskSpec, answer_levels: Sequence[int] = ()) -> dict:
    """Run (or resume) one RL phase of ``iterations``; returns its state (history, curriculum, env
    steps). ``answer_levels``: levels whose replay answers directly (``Replay``)."""
    model = policy.model
    optimizer = make_optimizer(model, cfg.lr, 0.0)
    levels = train_levels(cfg)
    state = {"iteration": 0, "history": [], "env_steps": 0, "done": False, "curriculum": Curriculum(levels).state(),
             "guard": new_guard()}
    path = run.ckpt(phase)
    if path.exists():
        state = load_checkpoint(path, model, optimizer, map_location=run.device)["extra"]["rl"]
        state.setdefault("guard", new_guard())  # a checkpoint from before the guard
        if state["done"]:
            return state
        log.info(f"{phase}: resuming at iteration {state['iteration']} from {path}")
    curriculum = Curriculum(**state["curriculum"])
    replay = Replay(cfg, spec, model.cfg.tool_names, run.rank, answer_levels)
    my_groups = len(range(run.rank, cfg.groups, run.world))
    vec = make_vec(cfg.env, my_groups * cfg.group_size, call_budget=cfg.call_budget,
                   partial_credit=cfg.partial_credit)
    logger = run.logger(phase, purge_step=state["iteration"] + 1)
    bar = progress_bar(run, iterations, state["iteration"], phase)
    try:
        if cfg.guard_every and state["guard"]["best"] is None:  # the phase's start is the first good state
            guard_check(cfg, run, phase, policy, optimizer, state)
        while state["iteration"] < iterations and not state["guard"]["stopped"]:
            if cfg.stop_after and run.steps_taken >= cfg.stop_after:
                if run.main:
                    _save_rl(path, model, optimizer, state, curriculum, spec)
                raise Interrupted(f"{phase}: stopped after {run.steps_taken} iterations (stop_after)")
            t0 = time.time()
            stats = rl_iteration(cfg, state["iteration"] + (1000 if phase != "rl" else 0), policy, ref, optimizer,
                                 vec, curriculum, replay, levels, run, state)
            state["iteration"] += 1
            run.steps_taken += 1
            state["env_steps"] += int(stats["rl/env_steps"])
            if cfg.guard_every and state["iteration"] % cfg.guard_every == 0:
                stats.update(guard_check(cfg, run, phase, policy, optimizer, state))
            stats["rl/rollbacks"] = float(state["guard"]["rollbacks"])
            stats["rl/seconds"] = time.time() - t0
            state["history"].append(stats)
            if run.main:
                logger.scalars(state["iteration"], stats)
            bar.update(1)
            bar.set_postfix(reward=f"{stats['rl/reward']:.3f}", pass1=f"{stats['rl/pass@1']:.2f}",
                            calls=f"{stats['tools/call_rate']:.2f}")
            if cfg.progress and bar.disable:
                log.info(f"{phase}: iteration {state['iteration']}/{iterations} reward {stats['rl/reward']:.3f} "
                         f"pass@1 {stats['rl/pass@1']:.2f} calls {stats['tools/call_rate']:.2f}")
            if state["iteration"] % cfg.ckpt_every == 0 and run.main and not state.get("bad_in_a_row"):
                _save_rl(path, model, optimizer, state, curriculum, spec)
        state["done"] = True
        if run.main:
            _save_rl(path, model, optimizer, state, curriculum, spec)
    finally:
        bar.close()
        logger.close()
        vec.close()
    return state


def new_guard() -> dict:
    """The guard's state in an RL phase's checkpoint: the best greedy success with tools so far and
    its iteration, every evaluation as (iteration, success), rollbacks, and why it stopped the run."""
    return {"best": None, "best_iteration": 0, "evaluations": [], "rollbacks": 0, "stopped": None}


def guard_success(cfg: Config, policy: Policy) -> float:
    """Greedy success with tools on fixed train-split instances (the test split only reports)."""
    policy.model.eval()
    with torch.no_grad():
        ev = evaluate_family(policy, cfg.family, n_per_level=cfg.guard_n or cfg.eval_n, levels=train_levels(cfg),
                             split="train", allow_tools=True, seed=stream_seed(cfg.seed, "guard") % 2**31,
                             env_kwargs={"call_budget": cfg.call_budget}, env_id=cfg.env)
    return ev.accuracy


def guard_check(cfg: Config, run: Run, phase: str, policy: Policy, optimizer, state: dict) -> dict:
    """Evaluate the policy (``guard_success``); a new best is saved as ``<phase>_best``, and a drop of
    more than --guard-drop below the best restores it (parameters and optimizer state, bit for bit).
    Every process evaluates the same parameters greedily, so all reach the same verdict."""
    guard, it = state["guard"], state["iteration"]
    success = guard_success(cfg, policy)
    guard["evaluations"].append([it, success])
    best = run.ckpt(f"{phase}_best")
    if guard["best"] is None or success >= guard["best"]:
        guard["best"], guard["best_iteration"] = success, it
        if run.main:
            save_checkpoint(best, policy.model, optimizer, step=it)
        barrier()
    elif success < guard["best"] - cfg.guard_drop:
        load_checkpoint(best, policy.model, optimizer, map_location=run.device)
        guard["rollbacks"] += 1
        what = "rolled back to" if cfg.guard_action == "rollback" else "stopped the run at"
        line = (f"{phase}: greedy success with tools {success:.3f} at iteration {it} is more than {cfg.guard_drop:g} "
                f"below the best {guard['best']:.3f} (iteration {guard['best_iteration']}); {what} that state")
        log.warning(line)
        if cfg.guard_action == "stop":
            guard["stopped"] = line
    return {"rl/guard_success": success, "rl/guard_best": guard["best"]}


def _save_rl(path: Path, model, optimizer, state: dict, curriculum: Curriculum, spec: TaskSpec) -> None:
    state["curriculum"] = curriculum.state()
    save_checkpoint(path, model, optimizer, step=state["iteration"], extra={"rl": state, "specs": [spec.as_dict()]})


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


@dataclass
class EpisodeBatch:
    """Sampled episodes to learn from, each with its advantage; ``old_lp`` / ``ref_lp`` per action
    (episode by episode, turn by turn), under the sampling and the reference policy."""

    episodes: list[Episode]
    adv: torch.Tensor  # [episodes]
    ref_lp: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def old_lp(self) -> torch.Tensor:
        return torch.tensor([t.log_prob for ep in self.episodes for t in ep.turns])

    @property
    def n_actions(self) -> int:
        return sum(len(ep.turns) for ep in self.episodes)

    def per_action_adv(self) -> torch.Tensor:
        return torch.cat([a.expand(len(ep.turns)) for ep, a in zip(self.episodes, self.adv)])

    def select(self, index: Sequence[int]) -> "EpisodeBatch":
        starts = np.cumsum([0] + [len(ep.turns) for ep in self.episodes])
        ref = self.ref_lp
        if len(ref):
            ref = torch.cat([ref[starts[i]:starts[i + 1]] for i in index])
        return EpisodeBatch([self.episodes[i] for i in index], self.adv[list(index)], ref)


def _payloads(ep: Episode) -> torch.Tensor:
    """An episode's payloads, one row per turn, padded to one width."""
    width = max(t.payload.shape[0] for t in ep.turns)
    out = torch.full((len(ep.turns), width), PAD_ID, dtype=torch.long)
    for k, t in enumerate(ep.turns):
        out[k, : t.payload.shape[0]] = t.payload
    return out


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


# -- measurements -----------------------------------------------------------------------------------
def snapshot(cfg: Config, policy: Policy, levels: Sequence[int]) -> dict:
    """``evaluation.tool_snapshot`` with this run's env, costs and sampling seed."""
    return tool_snapshot(policy, cfg.env, levels, cfg.eval_n, call_budget=cfg.call_budget,
                         partial_credit=cfg.partial_credit, tool_cost=cfg.tool_cost, malformed_cost=cfg.malformed_cost,
                         step_cost=cfg.halt_cost if cfg.halt else 0.0, temperature=cfg.temperature,
                         seed=stream_seed(cfg.seed, "eval_sampling"))


def external_eval(cfg: Config, policy: Policy) -> dict[str, dict]:
    """Success with and without tools and tool use on each of the family's external sets."""
    out = {}
    for key, instances in external_sets(cfg.family).items():
        with torch.no_grad():
            w = evaluate_instances(policy, cfg.env, instances, allow_tools=True,
                                   env_kwargs={"call_budget": cfg.call_budget})
            wo = evaluate_instances(policy, cfg.env, instances, allow_tools=False)
        out[key] = {"with_tools": w.accuracy, "without_tools": wo.accuracy, "n": len(instances),
                    "tools": tool_metrics(w.episodes, wo.episodes)}
    return out


def report(cfg: Config, run: Run, policy: Policy, spec: TaskSpec, phases: dict, states: list[dict],
           demos: int) -> dict:
    start, end = phases["start"], phases["end"]
    env_steps = sum(int(s["env_steps"]) for s in states)
    history = [h for s in states for h in s["history"]]
    tools_end = end["tools"]
    need_end = tools_end.get("need_based") or {}
    metrics = {
        "env": cfg.env, "family": cfg.family, "config": jsonable(cfg), "device": str(run.device),
        "params": sum(p.numel() for p in policy.model.parameters()), "K": policy.K, "spec": spec.as_dict(),
        "success": {"with_tools": end["with_tools"], "without_tools": end["without_tools"]},
        "success_start": {"with_tools": start["with_tools"], "without_tools": start["without_tools"]},
        "reward_start": start["reward"], "reward_end": end["reward"],
        "greedy_start": start["greedy_reward"], "greedy_end": end["greedy_reward"],
        "pass1_start": start["pass@1"], "pass1_end": end["pass@1"],
        # need-based: on the levels where the tool-free answer is often right, else None and a reason
        "tool_precision": need_end.get("precision"), "tool_recall": need_end.get("recall"),
        "unneeded_call_rate": need_end.get("unneeded_call_rate"),
        "unneeded_call_rate_start": (start["tools"].get("need_based") or {}).get("unneeded_call_rate"),
        "tool_metrics_levels": need_end.get("levels"), "tool_metrics_note": need_end.get("reason"),
        "tool_all_levels": {k: tools_end[k] for k in ("precision", "recall", "unneeded_call_rate")},
        "calls_by_level": {lv: t["call_rate"] for lv, t in tools_end["by_level"].items()},
        "tool_free_by_level": {lv: t["tool_free_accuracy"] for lv, t in tools_end["by_level"].items()},
        "success_by_level": {"with_tools": end["with_tools_by_level"], "without_tools": end["without_tools_by_level"]},
        "steps": {"start": start["steps"], "end": end["steps"], "K": policy.K, "fraction": end["steps"] / policy.K},
        "phases": phases, "iterations": [s["iteration"] for s in states], "rl_env_steps": env_steps,
        "warm_start_demonstrations": demos, "env_step_budget": env_steps + demos,
        "zero_variance_groups": int(sum(h["rl/zero_variance_groups"] for h in history)),
        "zero_variance_share": float(np.mean([h.get("rl/zero_variance_share", 0.0) for h in history])) if history else 0.0,
        "void_turns": int(sum(h.get("rl/void_turns", 0) for h in history)),
        "rollbacks": int(sum(s["guard"]["rollbacks"] for s in states)),
        "guard": {name: s["guard"] for name, s in zip(("rl", "rl2"), states)},
        "distill": {}, "history": history,
    }
    sets = {"test": {"with_tools": end["with_tools"], "without_tools": end["without_tools"]}}
    if cfg.external:
        metrics["external"] = ext = external_eval(cfg, policy)
        sets.update({k: {"with_tools": v["with_tools"], "without_tools": v["without_tools"]} for k, v in ext.items()})
    metrics["baselines"] = {"r3m_with_tools": {k: v["with_tools"] for k, v in sets.items()},
                            "r3m_without_tools": {k: v["without_tools"] for k, v in sets.items()}}
    return metrics


# -- main -------------------------------------------------------------------------------------------
def main(cfg: Config) -> dict:
    t_start = time.time()
    setup_logging()
    run = start_run(cfg, f"rl-{cfg.env}")  # stop_after counts RL iterations (train_rl)
    log.info(f"run directory {run.dir} on {run.device}: {cfg.env} ({cfg.family})")
    model, spec, demos = starting_model(cfg, run)
    policy = make_policy(cfg, model, spec)
    levels = train_levels(cfg)
    phases = {"start": _cached(run.dir / "start.json", lambda: snapshot(cfg, policy, levels)) if run.main else {}}
    states = []
    try:
        states.append(rl_phase(cfg, run, "rl", cfg.iterations, policy, spec))
        if not run.main:
            return {"rank": run.rank}
        phases["after_rl"] = _cached(run.dir / "after_rl.json", lambda: snapshot(cfg, policy, levels))
        distill_on = cfg.distill if cfg.distill is not None else envs.make_family(cfg.family).tool is not None
        distill_on = distill_on and not states[-1]["guard"]["stopped"]  # --guard-action stop ends training
        numbers = {}
        if distill_on:
            numbers, after = run_distillation(
                run, policy, spec, cfg.env, levels_to_distill(phases["after_rl"], cfg.distill_levels), levels,
                phases["after_rl"], cfg.distillation, cfg.seed,
                lambda: _cached(run.dir / "after_distill.json", lambda: snapshot(cfg, policy, levels)),
                cfg.tool_fraction)
            if after is not None:
                phases["after_distill"] = after
            if after is not None and cfg.iterations_after:
                states.append(rl_phase(cfg, run, "rl2", cfg.iterations_after, policy, spec, mastered(cfg, numbers)))
    except Interrupted as exc:
        log.info(str(exc))
        return {"interrupted": True, "run_dir": str(run.dir)}
    model.eval()
    phases["end"] = snapshot(cfg, policy, levels)
    metrics = report(cfg, run, policy, spec, phases, states, demos)
    metrics["distill"] = numbers
    if cfg.baselines:
        success, details = baselines.run_baselines(cfg, run, model.cfg, spec, metrics["env_step_budget"], levels)
        metrics["baselines"].update(success)
        metrics["baseline_details"] = details
    metrics["seconds"] = metrics["wall_seconds"] = time.time() - t_start
    return finish(cfg, run, metrics)


def rl_phase(cfg: Config, run: Run, phase: str, iterations: int, policy: Policy, spec: TaskSpec,
             answer_levels: Sequence[int] = ()) -> dict:
    """An RL phase with a KL to the policy it starts from (saved as ``<phase>_reference``)."""
    ref_path = run.ckpt(f"{phase}_reference")
    if ref_path.exists():
        load_checkpoint(ref_path, policy.model)  # the phase's start (its own checkpoint, if any, loads over it)
    elif run.main:
        save_checkpoint(ref_path, policy.model, extra={"specs": [spec.as_dict()]})
    barrier()
    ref = dataclasses.replace(policy, model=copy.deepcopy(policy.model).eval().requires_grad_(False))
    state = train_rl(cfg, run, phase, iterations, policy, ref, spec, answer_levels)
    policy.model.eval()
    return state


def mastered(cfg: Config, distilled: dict) -> tuple[int, ...]:
    """The distilled levels whose own tool-free answers verified on at least --distill-mastery of the
    distillation's last targets (the replay answers them directly from then on)."""
    rates = (distilled.get("curriculum") or {}).get("own_answer_rate") or {}
    return tuple(int(lv) for lv, r in rates.items() if int(lv) in distilled.get("levels", ()) and r >= cfg.distill_mastery)


def _atomic_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)


def _cached(path: Path, compute) -> dict:
    """``compute()``, stored in ``path`` (written atomically) so a resumed run reuses it."""
    if path.exists():
        return json.loads(path.read_text())
    value = json.loads(json.dumps(compute(), default=str))  # as a resumed run would read it back
    _atomic_json(path, value)
    return value


def finish(cfg: Config, run: Run, metrics: dict) -> dict:
    rewards = [h["rl/reward"] for h in metrics["history"]]
    plot_reward_curve(metrics["history"], metrics["reward_start"], metrics["reward_end"], run.dir / "reward_curve.png")
    metrics = write_metrics(run.dir, metrics, rl_table(metrics))
    print(f"\nwall time {metrics['seconds']:.0f} s ({len(rewards)} RL iterations)   metrics: {run.dir / 'metrics.json'}"
          f"   tensorboard --logdir {run.dir / 'tb'}")
    return metrics


if __name__ == "__main__":
    cli.run(main, Config)
