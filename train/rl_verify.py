"""Stage 3: policy gradients from the verifiers, with tools, distillation, and the baselines.

    python train/rl_verify.py                          # sudoku-v0 from scratch, ~9 CPU-minutes
    python train/rl_verify.py --env arithmetic-v0      # imitation warm start, RL, distillation
    python train/rl_verify.py --env listops-v0 --init runs/imitate-X/ckpt/stage1.pt

Without ``--init`` a short imitation warm start (Stage 1 of ``r3m.learn.stages``, on tool-using
demonstrations by default) gives the starting policy, so the command works alone; a short phase of
whole-episode imitation then trains the turns with the memory carried across them, as the policy
acts. Each RL iteration samples G episodes of each of ``groups`` train instances (one ``reset``
seed per group) through the vectorized env, which runs the tool calls and the verifier. A small
imitation replay loss keeps the call format, and a level curriculum moves instances away from
levels whose groups are all solved or all failed. The distillation phase turns verified
tool-derived answers into tool-free targets (``r3m.learn.distill``). Baselines on the same test
instances and env-step budget (``r3m.learn.baselines``): a dense Transformer with 2x R3M's
parameters trained by imitation without tools, R3M with its tools masked, and, for a family with a
numeric env (Sudoku), MaskablePPO. Everything lands in ``--out``.

Reward of an episode (``r3m.learn.evaluation.shaped_reward``)::

    r = verifier reward (1 correct, else 0; 0 when truncated)
        - tool_cost * tool_calls - malformed_cost * malformed_calls

``tool_calls`` counts every ``<call>`` the policy made, including the one that broke the
env's call budget (that episode is truncated with verifier reward 0), so exceeding a budget of
B calls scores ``-(B + 1) * tool_cost - malformed_cost * malformed``.

Advantages are group-relative: G samples of one instance (the same ``reset`` seed) form a
group. GRPO (Shao et al. 2024) standardises rewards within the group; RLOO (Ahmadian et al.
2024) subtracts the mean of the other G-1 samples. A group whose rewards are all equal carries
no signal (every advantage is 0); it is counted and left out of the update. The update is PPO's
clipped surrogate on length-normalised sequence ratios with a k3 KL to the starting policy
(``r3m.learn.losses.clipped_objective``).
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
from typing import Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # `python train/rl_verify.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3m import envs, tools
from r3m.learn import baselines, distill, stages
from r3m.learn import cli
from r3m.learn.cli import check_device
from r3m.learn.data import DemoSource, TaskSpec, task_spec
from r3m.learn.evaluation import (
    eval_levels, evaluate_family, evaluate_instances, external_sets, sampled_test, shaped_reward, tool_metrics,
)
from r3m.learn.losses import action_tokens, clipped_objective, imitation_loss, write_penalties
from r3m.learn.loop import (
    Diverged, FitSpec, Interrupted, all_finite, average_gradients, make_optimizer, progress_bar, train_phase,
)
from r3m.learn.plots import plot_reward_curve
from r3m.learn.policy import Policy
from r3m.learn.reporting import log, rl_table, setup_logging, write_metrics
from r3m.learn.rollout import Episode, make_vec, rescore, run_episodes
from r3m.learn.run import Run, barrier, jsonable, seed_everything, start_run, stream_rng, stream_seed
from r3m_agent import PRESETS, R3M, load_checkpoint, model_from_checkpoint, save_checkpoint
from r3m_agent.checkpoint import read_checkpoint
from r3m_agent.tokenizer import PAD_ID

@dataclass(frozen=True)
class Config:
    """Verifier-feedback RL (GRPO/RLOO with PPO clipping and a KL to the imitation policy)."""

    env: str = "sudoku-v0"
    """Registered text env id to train on (its family's test split is evaluated)."""
    init: str = ""
    """Imitation checkpoint to start from (empty: run a short imitation warm start)."""
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
    warm_steps: int = 150
    """Warm start: imitation steps (stage 1)."""
    warm_batch: int = 32
    """Warm start: demonstrations per step."""
    warm_carry_steps: int = 40
    """Then (also after --init) imitation of whole expert episodes with the memory carried across
    turns, as the policy acts (per-turn imitation trains every turn on an empty memory)."""
    warm_tool_fraction: float = 1.0
    """Warm start and replay: fraction of demonstrations that call the family's tool (1: the policy
    learns to call; what it can do without the tool comes from distillation)."""
    iterations: int = 40
    """RL iterations (one rollout + update each)."""
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
    """Passes over an iteration's turns."""
    minibatch: int = 32
    """Episodes per optimiser step (each replayed turn by turn with its memory)."""
    lr: float = 3e-4
    """AdamW learning rate (constant)."""
    carry_lr: float = 1e-3
    """Learning rate of the carried-memory imitation phase (warmup then cosine)."""
    clip: float = 0.02
    """PPO clip range of the length-normalised (per-token geometric mean) ratio: 0.02 still lets an
    80-token payload's probability move by a factor of ~5 per update."""
    kl_coef: float = 0.02
    """Weight of the k3 KL to the reference (starting) policy."""
    entropy_coef: float = 0.0
    """Entropy bonus (per payload token)."""
    replay_coef: float = 0.1
    """Weight of the imitation replay loss (demonstrations incl. tool calls)."""
    replay_batch: int = 4
    """Expert episodes per replay batch (one batch per optimiser step)."""
    tool_cost: float = 0.01
    """Reward cost per tool call."""
    malformed_cost: float = 0.1
    """Reward cost per malformed call (unparsable, unknown or disabled tool)."""
    halt_cost: float = 0.1
    """With --halt: reward cost of the refinement steps an episode ran, per K steps (a one-turn
    episode that runs all K steps pays halt_cost)."""
    write_penalty: float = 1.0
    """Weight of the memory's write budget (as train/imitate.py)."""
    write_budget: float = 8.0
    """Writes per episode before the write-budget penalty applies."""
    write_cost: float = 0.01
    """Price of each (soft) memory write."""
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
    """Test instances per level for the before/after evaluations."""
    external: bool = True
    """Also evaluate on the family's registered external sets (r3m.envs.list_eval_sets; for Sudoku the
    collections in ../shared/eval/sudoku). A missing file is skipped with one warning."""
    distill: bool | None = None
    """Distillation phase: on, off, or none = where it applies (families with a tool)."""
    distill_n: int = 512
    """Train instances the final policy plays with tools to harvest distillation targets."""
    distill_steps: int = 300
    """Optimiser steps of the distillation phase."""
    distill_levels: tuple[int, ...] = ()
    """Levels to distil and measure (empty: the easiest trained level, the realistic target)."""
    distill_lr: float = 2e-3
    """Distillation learning rate (warmup then cosine)."""
    distill_replay_coef: float = 1.0
    """Weight of the expert-episode replay loss during distillation (keeps the tool-using skills)."""
    baselines: bool = True
    """Train/evaluate the baselines (dense 2x without tools; MaskablePPO on Sudoku)."""
    dense_lr: float = 2e-3
    """Dense baseline learning rate (as train/imitate.py)."""
    sb3_timesteps: int = 0
    """MaskablePPO env steps (0: the same env-step budget as R3M)."""
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
        if self.group_size < 2 or self.groups < 1 or self.iterations < 0 or self.epochs < 1:
            raise ValueError("need group_size >= 2, groups >= 1, iterations >= 0 and epochs >= 1")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if self.k < 0 or (self.k == 0 and not self.init):
            raise ValueError("--k must be >= 1 (0 only with --init: the checkpoint's K)")
        levels = envs.make_family(self.family).levels
        if any(lv not in levels for lv in self.levels):
            raise ValueError(f"--levels {' '.join(map(str, self.levels))}: {self.family} has levels {levels}")
        if self.init:
            init_spec(self.init, self.family)  # a missing or unreadable checkpoint fails here, one line
        check_device(self.device)

    @property
    def family(self) -> str:
        return envs.ENV_IDS[self.env]


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
    and ``warm_stage2`` of this run: a short, copy-like warm start (no drift penalty)."""
    levels = train_levels(cfg)
    spec = task_spec(cfg.family, levels, eval_levels(cfg.family, levels))
    seed_everything(cfg.seed)
    model = R3M(dataclasses.replace(PRESETS[cfg.preset], K=cfg.k, tool_names=tuple(tools.list_tools())))
    model = model.to(run.device)
    settings = stages.Imitation(steps=cfg.warm_steps, lr=2e-3, batch_size=cfg.warm_batch,
                                warmup=max(1, cfg.warm_steps // 5), k_train=cfg.k, grad_steps=min(2, cfg.k),
                                tool_fraction=cfg.warm_tool_fraction, drift_penalty=0.0)
    log.info(f"warm start: {cfg.warm_steps} imitation steps on {cfg.family}")
    stages.stage1(run, "warm_stage1", model, [spec], settings, cfg.seed)
    if cfg.halt:
        stages.stage2(run, "warm_stage2", model, [spec], dataclasses.replace(settings, steps=cfg.warm_steps // 2),
                      cfg.seed, lambda_p=0.3, beta=0.05)
    model.requires_grad_(True)
    return model, spec, cfg.warm_steps * cfg.warm_batch


def carry_phase(cfg: Config, run: Run, model: torch.nn.Module, spec: TaskSpec) -> int:
    """Episode imitation with the carried memory (``losses.imitation_loss``); returns the
    expected number of expert env steps it used."""
    if cfg.warm_carry_steps <= 0:
        return 0
    n = max(1, cfg.warm_batch // 2)
    source = DemoSource([dataclasses.replace(spec, levels=train_levels(cfg))], model.cfg.tool_names, cfg.seed,
                        stream="carry_demos", tool_fraction=cfg.warm_tool_fraction, episodes=n, rank=run.rank)
    K = cfg.k or getattr(model.cfg, "K", None)
    steps = cfg.warm_carry_steps
    train_phase(run, "warm_carry", model,
                FitSpec(steps, cfg.carry_lr, warmup=max(1, steps // 10), ckpt_every=max(1, steps // 2), log_every=10,
                        samples_per_step=n, max_bad_steps=cfg.max_bad_steps),
                lambda step: imitation_loss(model, spec, source.get(step)[1], K=K, grad_steps=None),
                extra={"specs": [spec.as_dict()]})
    has_tool = envs.make_family(cfg.family).tool is not None
    return round(steps * n * (1 + cfg.warm_tool_fraction * has_tool))


def make_policy(cfg: Config, model: torch.nn.Module, spec: TaskSpec) -> Policy:
    K = cfg.k or getattr(getattr(model, "cfg", None), "K", None)
    return Policy(model, spec.mode, spec.width, K=K, halt=cfg.halt)


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
                 replay: DemoSource, levels: tuple[int, ...], run: Run, state: dict) -> dict:
    episodes, group_levels = rollout(cfg, it, policy, vec, curriculum, levels, run)
    G = cfg.group_size
    rewards = torch.tensor([reward_of(cfg, policy, e) for e in episodes]).view(-1, G)
    adv, zero = group_advantages(rewards, cfg.advantage)
    solved = torch.tensor([e.correct for e in episodes], dtype=torch.float32).view(-1, G)
    if cfg.curriculum:
        curriculum.update(group_levels, solved.mean(1).tolist())
    keep = [i for i in range(len(episodes)) if not bool(zero[i // G])]
    fam = envs.make_family(cfg.family)
    tm = tool_metrics(episodes, fam.tool)
    stats = {"rl/reward": float(rewards.mean()), "rl/pass@1": float(solved.mean()),
             "rl/zero_variance_groups": float(zero.float().mean()),
             "rl/all_solved_groups": float((solved.mean(1) == 1).float().mean()),
             "rl/all_failed_groups": float((solved.mean(1) == 0).float().mean()),
             "rl/mean_level": float(np.mean(group_levels)),
             "rl/env_steps": float(sum(len(e.turns) for e in episodes)),
             "tools/call_rate": tm["call_rate"], "tools/calls_per_episode": tm["calls_per_episode"],
             "tools/format_validity": tm["format_validity"], "tools/calls_per_solved": tm["calls_per_solved"],
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
                           tokens, cfg.clip, cfg.kl_coef)
    loss = (pg.loss - cfg.entropy_coef * scored.entropy.mean()) * (len(scored.log_prob) * run.world / mb.n_actions)
    if scored.write_probs is not None and (cfg.write_penalty or cfg.write_cost):  # a mean over episodes
        memory = write_penalties([(scored.episode, scored.write_probs)], len(part.episodes), cfg.write_penalty,
                                 cfg.write_budget, cfg.write_cost)
        loss = loss + memory * (len(part.episodes) * run.world / len(mb.episodes))
    stats = {"rl/pg_loss": pg.pg_loss, "rl/kl": pg.kl, "rl/clip_fraction": pg.clip_fraction, "rl/ratio": pg.ratio,
             "rl/entropy": float(scored.entropy.mean().detach())}
    return loss, stats


def update(cfg: Config, it: int, policy: Policy, optimizer, batch: "EpisodeBatch", replay: DemoSource, run: Run,
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


# -- the RL phase ---------------------------------------------------------------------------------
def train_rl(cfg: Config, run: Run, policy: Policy, ref: Policy, spec: TaskSpec, start: dict) -> dict:
    """Run (or resume) the iterations; returns the RL state (history, curriculum, env steps)."""
    model = policy.model
    optimizer = make_optimizer(model, cfg.lr, 0.0)
    levels = train_levels(cfg)
    state = {"iteration": 0, "history": [], "env_steps": 0, "done": False, "start": start,
             "curriculum": Curriculum(levels).state()}
    path = run.ckpt("rl")
    if path.exists():
        state = load_checkpoint(path, model, optimizer, map_location=run.device)["extra"]["rl"]
        if state["done"]:
            return state
        log.info(f"rl: resuming at iteration {state['iteration']} from {path}")
    curriculum = Curriculum(**state["curriculum"])
    replay = DemoSource([spec], model.cfg.tool_names, cfg.seed, stream="replay", tool_fraction=cfg.warm_tool_fraction,
                        episodes=cfg.replay_batch, rank=run.rank)
    my_groups = len(range(run.rank, cfg.groups, run.world))
    vec = make_vec(cfg.env, my_groups * cfg.group_size, call_budget=cfg.call_budget,
                   partial_credit=cfg.partial_credit)
    logger = run.logger("rl", purge_step=state["iteration"] + 1)
    bar = progress_bar(run, cfg.iterations, state["iteration"], "rl")
    done_here = 0
    try:
        while state["iteration"] < cfg.iterations:
            if cfg.stop_after and done_here >= cfg.stop_after:
                if run.main:
                    _save_rl(path, model, optimizer, state, curriculum, spec)
                raise Interrupted(f"rl: stopped after {done_here} iterations (stop_after)")
            t0 = time.time()
            stats = rl_iteration(cfg, state["iteration"], policy, ref, optimizer, vec, curriculum, replay,
                                 levels, run, state)
            state["iteration"] += 1
            done_here += 1
            state["env_steps"] += int(stats["rl/env_steps"])
            stats["rl/seconds"] = time.time() - t0
            state["history"].append(stats)
            if run.main:
                logger.scalars(state["iteration"], stats)
            bar.update(1)
            bar.set_postfix(reward=f"{stats['rl/reward']:.3f}", pass1=f"{stats['rl/pass@1']:.2f}",
                            calls=f"{stats['tools/call_rate']:.2f}", kl=f"{stats.get('rl/kl', 0.0):.3f}")
            if cfg.progress and bar.disable:
                log.info(f"rl: iteration {state['iteration']}/{cfg.iterations} reward {stats['rl/reward']:.3f} "
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


def _save_rl(path: Path, model, optimizer, state: dict, curriculum: Curriculum, spec: TaskSpec) -> None:
    state["curriculum"] = curriculum.state()
    save_checkpoint(path, model, optimizer, step=state["iteration"],
                    extra={"rl": state, "specs": [spec.as_dict()]})



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
def split_eval(cfg: Config, policy: Policy, levels: Sequence[int], allow_tools: bool):
    return evaluate_family(policy, cfg.family, n_per_level=cfg.eval_n, levels=levels, allow_tools=allow_tools,
                           env_kwargs={"call_budget": cfg.call_budget}, env_id=cfg.env)


def snapshot(cfg: Config, policy: Policy, levels: Sequence[int]) -> dict:
    """Greedy test-split success with and without tools, tool metrics, sampled reward."""
    with torch.no_grad():
        with_tools = split_eval(cfg, policy, levels, True)
        without = split_eval(cfg, policy, levels, False)
    tool = envs.make_family(cfg.family).tool
    sampled = sampled_test(policy, cfg.env, levels, cfg.eval_n, seed=stream_seed(cfg.seed, "eval_sampling"),
                           temperature=cfg.temperature,
                           call_budget=cfg.call_budget, partial_credit=cfg.partial_credit, tool_cost=cfg.tool_cost,
                           malformed_cost=cfg.malformed_cost, step_cost=cfg.halt_cost if cfg.halt else 0.0)
    return {"with_tools": with_tools.accuracy, "without_tools": without.accuracy,
            "with_tools_by_level": with_tools.by_level, "without_tools_by_level": without.by_level,
            "tools": tool_metrics(with_tools.episodes, tool, without.episodes),
            "steps": with_tools.steps, **sampled}


def external_eval(cfg: Config, policy: Policy) -> dict[str, dict]:
    """Success with and without tools and tool metrics on each of the family's external sets."""
    out = {}
    tool = envs.make_family(cfg.family).tool
    for key, instances in external_sets(cfg.family).items():
        with torch.no_grad():
            w = evaluate_instances(policy, cfg.env, instances, allow_tools=True,
                                   env_kwargs={"call_budget": cfg.call_budget})
            wo = evaluate_instances(policy, cfg.env, instances, allow_tools=False)
        out[key] = {"with_tools": w.accuracy, "without_tools": wo.accuracy, "n": len(instances),
                    "tools": tool_metrics(w.episodes, tool, wo.episodes)}
    return out


def report(cfg: Config, run: Run, policy: Policy, spec: TaskSpec, state: dict, start: dict, end: dict,
           demos: int) -> dict:
    env_steps = int(state["env_steps"])
    metrics = {
        "env": cfg.env, "family": cfg.family, "config": jsonable(cfg), "device": str(run.device),
        "params": sum(p.numel() for p in policy.model.parameters()), "K": policy.K, "spec": spec.as_dict(),
        "reward_start": start["reward"], "reward_end": end["reward"],
        "pass1_start": start["pass@1"], "pass1_end": end["pass@1"],
        "success": {"with_tools": end["with_tools"], "without_tools": end["without_tools"]},
        "success_start": {"with_tools": start["with_tools"], "without_tools": start["without_tools"]},
        "success_by_level": {"with_tools": end["with_tools_by_level"],
                             "without_tools": end["without_tools_by_level"]},
        "tool_precision": end["tools"]["precision"], "tool_recall": end["tools"]["recall"],
        "tools": {"test": end["tools"], "start": start["tools"]},
        "iterations": state["iteration"], "rl_env_steps": env_steps, "warm_start_demonstrations": demos,
        "env_step_budget": env_steps + demos,
        "zero_variance_groups": float(np.mean([h["rl/zero_variance_groups"] for h in state["history"]]))
        if state["history"] else 0.0,
        "curriculum": state["curriculum"], "distill": {},
    }
    sets = {"test": {"with_tools": end["with_tools"], "without_tools": end["without_tools"]}}
    if cfg.external:
        ext = external_eval(cfg, policy)
        metrics["external"] = ext
        sets.update({k: {"with_tools": v["with_tools"], "without_tools": v["without_tools"]}
                     for k, v in ext.items()})
        for k, v in ext.items():
            metrics["tools"][k] = v["tools"]
    metrics["baselines"] = {"r3m_with_tools": {k: v["with_tools"] for k, v in sets.items()},
                            "r3m_without_tools": {k: v["without_tools"] for k, v in sets.items()}}
    return metrics


# -- main -------------------------------------------------------------------------------------------
def main(cfg: Config) -> dict:
    t_start = time.time()
    setup_logging()
    run = start_run(cfg, f"rl-{cfg.env}")  # stop_after counts RL iterations (train_rl)
    log.info(f"run directory {run.dir} on {run.device}: {cfg.env} ({cfg.family})")
    torch.manual_seed(cfg.seed)
    model, spec, demos = starting_model(cfg, run)
    demos += carry_phase(cfg, run, model, spec)
    ref_path = run.ckpt("reference")
    if ref_path.exists():
        load_checkpoint(ref_path, model)  # the start of RL (the RL checkpoint, if any, loads over it)
    elif run.main:
        save_checkpoint(ref_path, model, extra={"specs": [spec.as_dict()]})
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    policy, ref = make_policy(cfg, model, spec), make_policy(cfg, ref_model, spec)
    t_rl = time.time()
    start = _cached(run.dir / "start.json", lambda: snapshot(cfg, policy, train_levels(cfg))) if run.main else {}
    barrier()
    try:
        state = train_rl(cfg, run, policy, ref, spec, start)
    except Interrupted as exc:
        log.info(str(exc))
        return {"interrupted": True, "run_dir": str(run.dir)}
    rl_seconds = time.time() - t_rl
    if not run.main:  # under torchrun, rank 0 measures, distils, runs the baselines and writes
        return {"rank": run.rank}
    model.eval()
    end = snapshot(cfg, policy, train_levels(cfg))
    metrics = report(cfg, run, policy, spec, state, start, end, demos)
    metrics["seconds"] = {"rl": rl_seconds}
    if distill.distill_applies(cfg):
        metrics["distill"] = distill.run_distill(cfg, run, policy, spec, train_levels(cfg))
    if cfg.baselines:
        budget = metrics["env_step_budget"]
        success, details = baselines.run_baselines(cfg, run, model.cfg, spec, budget, train_levels(cfg))
        metrics["baselines"].update(success)
        metrics["baseline_details"] = details
    metrics["seconds"]["total"] = metrics["wall_seconds"] = time.time() - t_start
    return finish(cfg, run, metrics, state)


def _cached(path: Path, compute) -> dict:
    """``compute()``, stored in ``path`` (written atomically) so a resumed run reuses it."""
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)
    return value


def finish(cfg: Config, run: Run, metrics: dict, state: dict) -> dict:
    plot_reward_curve(state["history"], metrics["reward_start"], metrics["reward_end"], run.dir / "reward_curve.png")
    metrics["history"] = state["history"]
    metrics = write_metrics(run.dir, metrics, rl_table(metrics))
    print(f"\nwall time {metrics['seconds']['total']:.0f} s   metrics: {run.dir / 'metrics.json'}   "
          f"tensorboard --logdir {run.dir / 'tb'}")
    return metrics


if __name__ == "__main__":
    cli.run(main, Config)
