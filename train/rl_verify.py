"""Stage 3: policy gradients from the verifiers, with tools, distillation, and the baselines.

    python train/rl_verify.py                          # sudoku-v0 from scratch, ~9 CPU-minutes
    python train/rl_verify.py --env arithmetic-v0      # imitation warm start, RL, distillation
    python train/rl_verify.py --env listops-v0 --init runs/imitate-X/ckpt/stage1.pt

Without ``--init`` a short imitation warm start (``train/imitate.py``, stage 1, on tool-using
demonstrations by default) gives the starting policy, so the command works alone; a short phase
of whole-episode imitation then trains the turns with the memory carried across them, as the
policy acts (``training.imitation_loss``). Each RL
iteration samples G episodes of each of ``groups`` train instances (one ``reset`` seed per group)
through the vectorized env, which runs the tool calls and the verifier; the rewards, the
group-relative advantages and the clipped objective with its KL to the frozen starting policy
are those of ``r3m_agent.rl`` (its docstring states the exact reward). A small imitation replay
loss keeps the call format, and a level curriculum moves instances away from levels whose
groups are all solved or all failed. The distillation phase turns verified tool-derived answers
into tool-free targets. Baselines on the same test instances and env-step budget: a dense
Transformer with 2x R3M's parameters trained by imitation without tools, R3M with its tools
masked, and (Sudoku) MaskablePPO on sudoku-grid-v0. Everything lands in ``--out``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

if __package__ in (None, ""):  # `python train/rl_verify.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3m import envs
from r3m_agent import PRESETS, rl
from r3m_agent.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from r3m_agent.config import parse_config
from r3m_agent.fit import FitSpec, Interrupted, Run, fit
from r3m_agent.logger import log
from r3m_agent.policy import Policy
from r3m_agent.rollout import make_vec, run_episodes
from r3m_agent.training import TaskSpec, imitation_loss, make_optimizer, resolve_device, step_rng
from r3m.train import rl_eval

RL_STREAM, UPDATE_STREAM = 11, 12


@dataclass(frozen=True)
class Config:
    """Verifier-feedback RL (GRPO/RLOO with PPO clipping and a KL to the imitation policy)."""

    env: str = "sudoku-v0"
    """Registered text env id to train on (its family's test split is evaluated)."""
    init: str = ""
    """Imitation checkpoint to start from (empty: run a short imitation warm start)."""
    out: str = ""
    """Run directory (default runs/rl-<env>-<time>)."""
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
    """Adaptive halting: warm start adds stage 2, the policy halts, and halt_cost penalises steps."""
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
    minibatch: int = 64
    """Turns per optimiser step."""
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
    halt_cost: float = 0.01
    """With --halt: loss weight of the expected refinement steps (compute penalty)."""
    partial_credit: bool = True
    """Train on the verifier's partial-credit score (e.g. Sudoku: share of valid units) instead of 0/1;
    success is always the verifier's exact verdict."""
    call_budget: int = 4
    """Env call budget; one more call truncates the episode with verifier reward 0."""
    curriculum: bool = True
    """Weight levels by group success s(1-s) (else uniform)."""
    grad_clip: float = 1.0
    """Gradient-norm clipping."""
    eval_n: int = 40
    """Test instances per level for the before/after evaluations."""
    external: bool = True
    """Sudoku: also evaluate on ../shared/eval/sudoku (norvig_easy50, norvig_top95, royle17 sample)."""
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

    @property
    def family(self) -> str:
        return envs.ENV_IDS[self.env]


# -- set-up ---------------------------------------------------------------------------------------
def make_run(cfg: Config) -> Run:
    out = Path(cfg.out or f"runs/rl-{cfg.env}-{time.strftime('%Y%m%d-%H%M%S')}")
    saved = out / "config.json"
    current = rl_eval.jsonable(cfg)
    if saved.exists() and not cfg.resume:
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, "
                              "or choose another --out")
    if cfg.resume and saved.exists():
        old = json.loads(saved.read_text())
        changed = {k: (old.get(k), v) for k, v in current.items()
                   if k not in ("resume", "stop_after", "progress", "threads") and old.get(k) != v}
        if changed:
            raise ValueError(f"--resume with a different config than {saved}: {changed}")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(current, indent=2))
    return Run(out, resolve_device(cfg.device), cfg.tensorboard, cfg.progress)  # stop_after: RL iterations


def train_levels(cfg: Config) -> tuple[int, ...]:
    fam_levels = envs.make_family(cfg.family).levels
    levels = tuple(lv for lv in cfg.levels if lv in fam_levels) if cfg.levels else tuple(fam_levels)
    if not levels:
        raise ValueError(f"--levels {cfg.levels} are not levels of {cfg.family} {fam_levels}")
    return levels


def starting_model(cfg: Config, run: Run) -> tuple[torch.nn.Module, TaskSpec, int]:
    """(model, this family's decoding spec, demonstrations the warm start used)."""
    if cfg.init:
        path, demos = Path(cfg.init), 0
    else:
        path = warm_start(cfg, run)
        demos = cfg.warm_steps * cfg.warm_batch
    payload = torch.load(path, map_location="cpu", weights_only=True)
    specs = [TaskSpec.from_dict(d) for d in (payload.get("extra") or {}).get("specs", [])]
    spec = next((s for s in specs if s.family == cfg.family), None)
    if spec is None:
        raise ValueError(f"{path} has no decoding spec for family {cfg.family!r} (extra['specs'] lists "
                         f"{[s.family for s in specs]}); train one with train/imitate.py "
                         f"--families {cfg.family}")
    return model_from_checkpoint(path).to(run.device), spec, demos


def warm_start(cfg: Config, run: Run) -> Path:
    from r3m.train import imitate

    stages = "1,2" if cfg.halt else "1"
    out = run.dir / "warmstart"
    path = out / "ckpt" / ("stage2.pt" if cfg.halt else "stage1.pt")
    if path.exists() and load_checkpoint(path)["extra"]["fit"]["done"]:
        return path
    icfg = imitate.Config(stage=stages, families=(cfg.family,), levels=train_levels(cfg), preset=cfg.preset,
                          device=cfg.device, seed=cfg.seed, steps=cfg.warm_steps,
                          halt_steps=cfg.warm_steps // 2, batch_size=cfg.warm_batch, k_train=cfg.k,
                          grad_steps=min(2, cfg.k), warmup=max(1, cfg.warm_steps // 5), lr=2e-3,
                          drift_penalty=0.0,  # short copy-like warm start: the settings it was tuned with
                          tool_fraction=cfg.warm_tool_fraction, eval_n=5, eval_ks=(cfg.k,), baseline=False,
                          out=str(out), resume=(out / "config.json").exists(), tensorboard=cfg.tensorboard,
                          progress=cfg.progress, threads=cfg.threads)
    log.info(f"warm start: {cfg.warm_steps} imitation steps on {cfg.family} -> {out}")
    imitate.main(icfg)
    return path


def carry_phase(cfg: Config, run: Run, model: torch.nn.Module, spec: TaskSpec) -> int:
    """Episode imitation with the carried memory (``training.imitation_loss``); returns the
    expected number of expert env steps it used."""
    if cfg.warm_carry_steps <= 0:
        return 0
    n = max(1, cfg.warm_batch // 2)
    source = rl.EpisodeSource(dataclasses.replace(spec, levels=train_levels(cfg)), model.cfg.tool_names, n,
                              cfg.seed + 4, cfg.warm_tool_fraction)
    K = cfg.k or getattr(model.cfg, "K", None)
    steps = cfg.warm_carry_steps
    fit(run, "warm_carry", model, make_optimizer(model, cfg.carry_lr, 0.0),
        FitSpec(steps, cfg.carry_lr, warmup=max(1, steps // 10), ckpt_every=max(1, steps // 2), log_every=10,
                samples_per_step=n), lambda step: imitation_loss(model, spec, source.get(step), K=K, grad_steps=None),
        extra={"specs": [spec.as_dict()]})
    model.eval()
    has_tool = envs.make_family(cfg.family).tool is not None
    return round(steps * n * (1 + cfg.warm_tool_fraction * has_tool))


def make_policy(cfg: Config, model: torch.nn.Module, spec: TaskSpec) -> Policy:
    K = cfg.k or getattr(getattr(model, "cfg", None), "K", None)
    return Policy(model, spec.mode, spec.width, K=K, halt=cfg.halt, align=spec.align)


# -- one RL iteration -------------------------------------------------------------------------------
def rollout(cfg: Config, it: int, policy: Policy, vec, curriculum: rl.Curriculum, levels: tuple[int, ...]):
    """G sampled episodes of each of ``groups`` train instances: a function of (seed, iteration, weights)."""
    rng = step_rng(cfg.seed, it, stream=RL_STREAM)
    if cfg.curriculum:
        group_levels = curriculum.sample(rng, cfg.groups)
    else:
        group_levels = [int(x) for x in rng.choice(levels, cfg.groups)]
    seeds = np.repeat(rng.integers(0, 2**31 - 1, size=cfg.groups), cfg.group_size).tolist()
    options = [{"split": "train", "difficulty": lv} for lv in group_levels for _ in range(cfg.group_size)]
    gen = torch.Generator(device=policy.device)
    gen.manual_seed(int(rng.integers(0, 2**62)))
    policy.model.eval()
    with torch.no_grad():
        episodes = run_episodes(policy, vec, seeds, options, allow_tools=True, sample=True,
                                temperature=cfg.temperature, generator=gen)
    return episodes, group_levels


def rl_iteration(cfg: Config, it: int, policy: Policy, ref: Policy, optimizer, vec, curriculum: rl.Curriculum,
                 replay: rl.EpisodeSource, levels: tuple[int, ...]) -> dict:
    episodes, group_levels = rollout(cfg, it, policy, vec, curriculum, levels)
    G = cfg.group_size
    rewards = torch.tensor([rl.shaped_reward(e, cfg.tool_cost, cfg.malformed_cost) for e in episodes])
    rewards = rewards.view(-1, G)
    adv, zero = rl.group_advantages(rewards, cfg.advantage)
    solved = torch.tensor([e.correct for e in episodes], dtype=torch.float32).view(-1, G)
    if cfg.curriculum:
        curriculum.update(group_levels, solved.mean(1).tolist())
    keep = [i for i in range(len(episodes)) if not bool(zero[i // G])]
    fam = envs.make_family(cfg.family)
    tm = rl.tool_metrics(episodes, fam.tool)
    stats = {"rl/reward": float(rewards.mean()), "rl/pass@1": float(solved.mean()),
             "rl/zero_variance_groups": float(zero.float().mean()),
             "rl/all_solved_groups": float((solved.mean(1) == 1).float().mean()),
             "rl/all_failed_groups": float((solved.mean(1) == 0).float().mean()),
             "rl/mean_level": float(np.mean(group_levels)),
             "rl/env_steps": float(sum(len(e.turns) for e in episodes)),
             "tools/call_rate": tm["call_rate"], "tools/precision": tm["precision"],
             "tools/recall": tm["recall"],
             "tools/format_validity": tm["format_validity"], "tools/calls_per_solved": tm["calls_per_solved"],
             "tools/malformed_rate": float(np.mean([e.malformed_calls > 0 for e in episodes])),
             "halt/steps": float(np.mean([e.steps for e in episodes]))}
    if keep:
        batch = rl.turn_batch([episodes[i] for i in keep], [float(adv.view(-1)[i]) for i in keep])
        batch.ref_lp = reference_log_probs(ref, batch, cfg.minibatch)
        stats.update(update(cfg, it, policy, optimizer, batch, replay))
    return stats


@torch.no_grad()
def reference_log_probs(ref: Policy, batch: rl.TurnBatch, chunk: int) -> torch.Tensor:
    """log pi_ref of the sampled actions, scored with the carry the sampling policy saw."""
    out = []
    for s in range(0, len(batch), chunk):
        mb = batch.select(torch.arange(s, min(s + chunk, len(batch))))
        out.append(ref.log_prob(mb.observations, mb.carry, mb.tool, mb.payload, allow_tools=True)[0].cpu())
    return torch.cat(out)


def update(cfg: Config, it: int, policy: Policy, optimizer, batch: rl.TurnBatch,
           replay: rl.EpisodeSource) -> dict:
    model, dev = policy.model, policy.device
    gen = torch.Generator().manual_seed(int(step_rng(cfg.seed, it, stream=UPDATE_STREAM).integers(0, 2**62)))
    logs: dict[str, list[float]] = {}
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(batch), generator=gen)
        for s in range(0, len(batch), cfg.minibatch):
            mb = batch.select(order[s : s + cfg.minibatch])
            scored = policy.score(mb.observations, mb.carry, mb.tool, mb.payload, allow_tools=True)
            pg = rl.clipped_objective(scored.log_prob, mb.old_lp.to(dev), mb.ref_lp.to(dev), mb.adv.to(dev),
                                      rl.action_tokens(mb.payload).to(dev), cfg.clip, cfg.kl_coef)
            loss = pg.loss - cfg.entropy_coef * scored.entropy.mean()
            if cfg.halt:
                loss = loss + cfg.halt_cost * scored.expected_steps.mean()
            if cfg.replay_coef > 0:
                demos = replay.get(it * 1000 + step)
                replayed = imitation_loss(model, replay.spec, demos, K=policy.K, grad_steps=None)
                loss = loss + cfg.replay_coef * replayed.loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            if math.isfinite(norm):
                optimizer.step()
            for k, v in (("rl/loss", float(loss.detach())), ("rl/pg_loss", pg.pg_loss), ("rl/kl", pg.kl),
                         ("rl/clip_fraction", pg.clip_fraction), ("rl/ratio", pg.ratio),
                         ("rl/entropy", float(scored.entropy.mean().detach())), ("rl/grad_norm", norm),
                         ("halt/expected_steps", float(scored.expected_steps.mean().detach()))):
                logs.setdefault(k, []).append(v)
            if step == 0:
                logs["rl/ratio_first"] = [pg.ratio]
            step += 1
    return {k: float(np.mean(v)) for k, v in logs.items()}


# -- the RL phase ---------------------------------------------------------------------------------
def train_rl(cfg: Config, run: Run, policy: Policy, ref: Policy, spec: TaskSpec, start: dict) -> dict:
    """Run (or resume) the iterations; returns the RL state (history, curriculum, env steps)."""
    model = policy.model
    optimizer = make_optimizer(model, cfg.lr, 0.0)
    levels = train_levels(cfg)
    state = {"iteration": 0, "history": [], "env_steps": 0, "done": False, "start": start,
             "curriculum": rl.Curriculum(levels).state()}
    path = run.ckpt("rl")
    if path.exists():
        state = load_checkpoint(path, model, optimizer, map_location=run.device)["extra"]["rl"]
        if state["done"]:
            return state
        log.info(f"rl: resuming at iteration {state['iteration']} from {path}")
    curriculum = rl.Curriculum(**state["curriculum"])
    replay = rl.EpisodeSource(spec, model.cfg.tool_names, cfg.replay_batch, cfg.seed + 1,
                              cfg.warm_tool_fraction)
    vec = make_vec(cfg.env, cfg.groups * cfg.group_size, call_budget=cfg.call_budget,
                   partial_credit=cfg.partial_credit)
    logger = run.logger("rl")
    bar = tqdm(total=cfg.iterations, initial=state["iteration"], desc="rl", disable=not cfg.progress,
               dynamic_ncols=True)
    done_here = 0
    try:
        while state["iteration"] < cfg.iterations:
            if cfg.stop_after and done_here >= cfg.stop_after:
                _save_rl(path, model, optimizer, state, curriculum, spec)
                raise Interrupted(f"rl: stopped after {done_here} iterations (stop_after)")
            t0 = time.time()
            stats = rl_iteration(cfg, state["iteration"], policy, ref, optimizer, vec, curriculum, replay,
                                 levels)
            state["iteration"] += 1
            done_here += 1
            state["env_steps"] += int(stats["rl/env_steps"])
            stats["rl/seconds"] = time.time() - t0
            state["history"].append(stats)
            logger.scalars(state["iteration"], stats)
            bar.update(1)
            bar.set_postfix(reward=f"{stats['rl/reward']:.3f}", pass1=f"{stats['rl/pass@1']:.2f}",
                            calls=f"{stats['tools/call_rate']:.2f}", kl=f"{stats.get('rl/kl', 0.0):.3f}")
            if state["iteration"] % cfg.ckpt_every == 0:
                _save_rl(path, model, optimizer, state, curriculum, spec)
        state["done"] = True
        _save_rl(path, model, optimizer, state, curriculum, spec)
    finally:
        bar.close()
        logger.close()
        vec.close()
    return state


def _save_rl(path: Path, model, optimizer, state: dict, curriculum: rl.Curriculum, spec: TaskSpec) -> None:
    state["curriculum"] = curriculum.state()
    save_checkpoint(path, model, optimizer, step=state["iteration"],
                    extra={"rl": state, "specs": [spec.as_dict()]})


# -- main -------------------------------------------------------------------------------------------
def main(cfg: Config) -> dict:
    t_start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = make_run(cfg)
    log.info(f"run directory {run.dir} on {run.device}: {cfg.env} ({cfg.family})")
    torch.manual_seed(cfg.seed)
    model, spec, demos = starting_model(cfg, run)
    demos += carry_phase(cfg, run, model, spec)
    ref_path = run.ckpt("reference")
    if ref_path.exists():
        load_checkpoint(ref_path, model)  # the start of RL (the RL checkpoint, if any, loads over it)
    else:
        save_checkpoint(ref_path, model, extra={"specs": [spec.as_dict()]})
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    policy, ref = make_policy(cfg, model, spec), make_policy(cfg, ref_model, spec)
    t_rl = time.time()
    start = _cached(run.dir / "start.json", lambda: rl_eval.snapshot(cfg, policy, train_levels(cfg)))
    try:
        state = train_rl(cfg, run, policy, ref, spec, start)
    except Interrupted as exc:
        log.info(str(exc))
        return {"interrupted": True, "run_dir": str(run.dir)}
    rl_seconds = time.time() - t_rl
    model.eval()
    end = rl_eval.snapshot(cfg, policy, train_levels(cfg))
    metrics = rl_eval.report(cfg, run, policy, spec, state, start, end, demos)
    metrics["seconds"] = {"rl": rl_seconds}
    if rl_eval.distill_applies(cfg):
        metrics["distill"] = rl_eval.run_distill(cfg, run, policy, spec, train_levels(cfg))
    if cfg.baselines:
        budget = metrics["env_step_budget"]
        success, details = rl_eval.run_baselines(cfg, run, model.cfg, spec, budget, train_levels(cfg))
        metrics["baselines"].update(success)
        metrics["baseline_details"] = details
    metrics["seconds"]["total"] = metrics["wall_seconds"] = time.time() - t_start
    return rl_eval.finish(cfg, run, metrics, state)


def _cached(path: Path, compute) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.write_text(json.dumps(value, indent=2))
    return value


if __name__ == "__main__":
    main(parse_config(Config))
