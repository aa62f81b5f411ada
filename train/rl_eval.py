"""Measurements of ``train/rl_verify.py``: before/after snapshots, external Sudoku sets, the
distillation phase, the baselines, and the run's outputs (metrics.json, reward curve, table).

Distillation targets, on the easiest trained level by default (``--distill-levels``). Arithmetic,
list transforms and the other families: the verified answer of a tool-using episode becomes the
tool-free target for its prompt. Sudoku: a tiny model cannot learn to solve whole grids in
CPU-minutes, so what is distilled is the part of a tool result that is locally derivable: the
cells of the verified solution that are naked singles of the puzzle (the only digit their row,
column and box givens allow), on level-1 puzzles (45-50 givens). The
loss is on those cells only and leaves the tool head alone (a partial grid is not an answer, so
the policy keeps calling the solver); the report gives tool-free exact success (verifier) and the
accuracy on those cells, before and after.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from r3m import envs
from r3m_agent import rl
from r3m_agent.data import IGNORE, collate_causal, collate_fill
from r3m_agent.evaluation import (
    EVAL_SEED, SUDOKU_EVAL_DIR, FamilyEval, evaluate_family, evaluate_instances, load_sudoku_csv,
)
from r3m_agent.fit import FitSpec, Run, fit
from r3m_agent.logger import log
from r3m_agent.policy import Policy
from r3m_agent.rollout import Episode, make_vec, run_episodes
from r3m_agent.training import BatchSource, LossOut, TaskSpec, imitation_loss, make_optimizer, step_rng

DISTILL_STREAM, DISTILL_BATCH_STREAM = 21, 22
EXTERNAL = {"norvig_easy50": ("norvig_easy50", None), "norvig_top95": ("norvig_top95", None),
            "royle17_1000": ("royle_sudoku17", 1000)}  # key -> (CSV stem, fixed sample size)


def jsonable(cfg) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


# -- evaluations --------------------------------------------------------------------------------
def _split_eval(cfg, policy: Policy, levels: Sequence[int], allow_tools: bool) -> FamilyEval:
    return evaluate_family(policy, cfg.family, n_per_level=cfg.eval_n, levels=levels, allow_tools=allow_tools,
                           env_kwargs={"call_budget": cfg.call_budget}, env_id=cfg.env)


def sampled_test(cfg, policy: Policy, levels: Sequence[int], batch: int = 100) -> dict:
    """Sampled pass@1 and mean shaped reward on fixed test instances (a fixed sampling seed)."""
    jobs = [(EVAL_SEED + i, lv) for lv in levels for i in range(cfg.eval_n)]
    gen = torch.Generator(device=policy.device)
    gen.manual_seed(cfg.seed + 7)
    episodes: list[Episode] = []
    for s in range(0, len(jobs), batch):
        chunk = jobs[s : s + batch]
        vec = make_vec(cfg.env, len(chunk), call_budget=cfg.call_budget, partial_credit=cfg.partial_credit)
        try:
            with torch.no_grad():
                options = [{"split": "test", "difficulty": j[1]} for j in chunk]
                episodes += run_episodes(policy, vec, [j[0] for j in chunk], options, allow_tools=True,
                                         sample=True, temperature=cfg.temperature, generator=gen)
        finally:
            vec.close()
    rewards = [rl.shaped_reward(e, cfg.tool_cost, cfg.malformed_cost) for e in episodes]
    return {"reward": float(np.mean(rewards)), "pass@1": float(np.mean([e.correct for e in episodes]))}


def snapshot(cfg, policy: Policy, levels: Sequence[int]) -> dict:
    """Greedy test-split success with and without tools, tool metrics, sampled reward."""
    with torch.no_grad():
        with_tools = _split_eval(cfg, policy, levels, True)
        without = _split_eval(cfg, policy, levels, False)
    tool = envs.make_family(cfg.family).tool
    return {"with_tools": with_tools.accuracy, "without_tools": without.accuracy,
            "with_tools_by_level": with_tools.by_level, "without_tools_by_level": without.by_level,
            "tools": rl.tool_metrics(with_tools.episodes, tool, without.episodes),
            "steps": with_tools.steps, **sampled_test(cfg, policy, levels)}


def external_sets(limit: int | None = None) -> dict[str, list]:
    sets = {}
    for key, (stem, size) in EXTERNAL.items():
        path = SUDOKU_EVAL_DIR / f"{stem}.csv"
        if path.exists():
            size = size if limit is None else min(size or limit, limit)
            sets[key] = load_sudoku_csv(path, limit=size, seed=0)
        else:
            log.warning(f"external Sudoku set {path} is missing: skipped")
    return sets


def external_eval(cfg, policy: Policy) -> dict[str, dict]:
    """Sudoku: success with and without tools and tool metrics on each external set."""
    out = {}
    tool = envs.make_family(cfg.family).tool
    for key, instances in external_sets().items():
        with torch.no_grad():
            w = evaluate_instances(policy, cfg.env, instances, allow_tools=True,
                                   env_kwargs={"call_budget": cfg.call_budget})
            wo = evaluate_instances(policy, cfg.env, instances, allow_tools=False)
        out[key] = {"with_tools": w.accuracy, "without_tools": wo.accuracy, "n": len(instances),
                    "tools": rl.tool_metrics(w.episodes, tool, wo.episodes)}
    return out


def report(cfg, run: Run, policy: Policy, spec: TaskSpec, state: dict, start: dict, end: dict,
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
    if cfg.family == "sudoku" and cfg.external:
        ext = external_eval(cfg, policy)
        metrics["external"] = ext
        sets.update({k: {"with_tools": v["with_tools"], "without_tools": v["without_tools"]}
                     for k, v in ext.items()})
        for k, v in ext.items():
            metrics["tools"][k] = v["tools"]
    metrics["baselines"] = {"r3m_with_tools": {k: v["with_tools"] for k, v in sets.items()},
                            "r3m_without_tools": {k: v["without_tools"] for k, v in sets.items()}}
    return metrics


# -- distillation -----------------------------------------------------------------------------------
def distill_applies(cfg) -> bool:
    return cfg.distill if cfg.distill is not None else envs.make_family(cfg.family).tool is not None


def distill_levels(cfg, trained: Sequence[int]) -> tuple[int, ...]:
    return tuple(cfg.distill_levels) if cfg.distill_levels else (min(trained),)


def harvest(cfg, policy: Policy, levels: Sequence[int], batch: int = 64) -> list[Episode]:
    """The final policy plays ``distill_n`` train instances greedily with tools (fixed seeds)."""
    rng = step_rng(cfg.seed, 0, stream=DISTILL_STREAM)
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
        out["single_cell_accuracy"] = rl.single_cell_accuracy(wo.episodes)
    return out


def run_distill(cfg, run: Run, policy: Policy, spec: TaskSpec, trained: Sequence[int]) -> dict:
    """Distil verified tool answers of ``distill_levels`` into a copy of the policy.

    The replay (expert episodes with calls) covers only the other trained levels: a prompt has one
    set of payload slots, which a call fills with ARGS and an answer with the result, so replaying
    calls on the distilled prompts would pull the same slots back to the call's arguments.
    """
    levels = distill_levels(cfg, trained)
    others = tuple(lv for lv in trained if lv not in levels)
    examples = rl.distill_examples(harvest(cfg, policy, levels))
    before = _tool_free(cfg, policy, levels)
    student = copy.deepcopy(policy.model)
    if not examples:
        log.warning("distillation: no verified tool-derived answers to distil")
        return {cfg.family: {"before": before["tool_free"], "after": before["tool_free"], "examples": 0}}
    replay = rl.EpisodeSource(dataclasses.replace(spec, levels=others or levels), student.cfg.tool_names,
                              cfg.replay_batch, cfg.seed + 3, cfg.warm_tool_fraction)
    replay_coef = cfg.distill_replay_coef if others else 0.0
    K = policy.K
    # a Sudoku target is partial (its single cells), not an answer, so it does not teach "answer now"
    tool_weight = 0.0 if cfg.family == "sudoku" else 1.0

    def loss_fn(step: int) -> LossOut:
        rng = step_rng(cfg.seed, step, stream=DISTILL_BATCH_STREAM)
        chosen = [examples[i] for i in rng.integers(0, len(examples), size=cfg.warm_batch)]
        batch = distill_batch(cfg.family, spec, chosen)  # collated: one turn, empty memory
        out = imitation_loss(student, spec, batch, K=K, grad_steps=None, tool_weight=tool_weight)
        if replay_coef > 0:
            replayed = imitation_loss(student, spec, replay.get(step), K=K, grad_steps=None)
            out = out._replace(loss=out.loss + replay_coef * replayed.loss)
        return out

    steps = cfg.distill_steps
    fit(run, "distill", student, make_optimizer(student, cfg.distill_lr, 0.0),
        FitSpec(steps, cfg.distill_lr, warmup=max(1, steps // 10), ckpt_every=max(1, steps // 2),
                log_every=25, samples_per_step=cfg.warm_batch), loss_fn, extra={"specs": [spec.as_dict()]})
    student.eval()
    distilled = dataclasses.replace(policy, model=student)
    after = _tool_free(cfg, distilled, levels, called=before["_called"])
    before.pop("_called")
    after.pop("_called")
    res = {"before": before["tool_free"], "after": after["tool_free"], "levels": list(levels),
           "examples": len(examples), "steps": steps, "replay_levels": list(others),
           "before_detail": before, "after_detail": after}
    if others:  # did the replay keep the tool use on the levels that were not distilled?
        res["with_tools_other_levels"] = {"before": _split_eval(cfg, policy, others, True).accuracy,
                                          "after": _split_eval(cfg, distilled, others, True).accuracy}
    return {cfg.family: res}


def distill_batch(family: str, spec: TaskSpec, examples):
    """Collated distillation examples; for Sudoku, targets only on the naked-single cells."""
    if spec.mode != "fill":
        return collate_causal(examples, spec.width)
    batch = collate_fill(examples, spec.width, spec.align)
    if family == "sudoku":
        targets = batch.targets.clone()
        for i, e in enumerate(examples):
            keep = torch.zeros(spec.width, dtype=torch.bool)
            offset = spec.width - len(e.payload) - 1 if spec.align == "right" else 0
            cells = list(rl.naked_singles(e.context.split(":", 1)[1]))
            keep[[offset + c for c in cells]] = True
            targets[i] = targets[i].masked_fill(~keep, IGNORE)
        batch = batch._replace(targets=targets)
    return batch


# -- baselines -----------------------------------------------------------------------------------------
def run_baselines(cfg, run: Run, r3m_cfg, spec: TaskSpec, budget: int,
                  levels: Sequence[int]) -> tuple[dict, dict]:
    """(name -> set -> success, name -> details such as parameters and the budget it got)."""
    success, details = {}, {}
    name = "dense_2x_no_tools"
    success[name], details[name] = dense_baseline(cfg, run, r3m_cfg, spec, budget, levels)
    if cfg.family == "sudoku":
        success["maskable_ppo"], details["maskable_ppo"] = maskable_ppo(cfg, run, budget, levels)
    return success, details


def dense_baseline(cfg, run: Run, r3m_cfg, spec: TaskSpec, budget: int,
                   levels: Sequence[int]) -> tuple[dict, dict]:
    """A dense Transformer with 2x R3M's parameters, imitation without tools, ``budget`` demonstrations."""
    from r3m_agent import DenseTransformer, dense_config_like

    torch.manual_seed(cfg.seed)
    dense_cfg = dense_config_like(r3m_cfg, 2.0)
    model = DenseTransformer(dense_cfg).to(run.device)
    source = BatchSource([spec], dense_cfg.tool_names, cfg.warm_batch, cfg.seed + 2, tool_fraction=0.0)
    steps = max(1, math.ceil(budget / cfg.warm_batch))

    def loss_fn(step: int) -> LossOut:
        s, episodes = source.get(step)
        return imitation_loss(model, s, episodes, K=None, grad_steps=None)

    fit(run, "dense2x", model, make_optimizer(model, cfg.dense_lr, 0.01),
        FitSpec(steps, cfg.dense_lr, warmup=max(1, min(100, steps // 5)), ckpt_every=max(1, steps // 4),
                samples_per_step=cfg.warm_batch), loss_fn, extra={"specs": [spec.as_dict()]})
    model.eval()
    policy = Policy(model, spec.mode, spec.width, align=spec.align)
    with torch.no_grad():
        res = {"test": _split_eval(cfg, policy, levels, False).accuracy}
        if cfg.family == "sudoku" and cfg.external:
            for key, instances in external_sets().items():
                res[key] = evaluate_instances(policy, cfg.env, instances, allow_tools=False).accuracy
    details = {"params": sum(p.numel() for p in model.parameters()), "demonstrations": steps * cfg.warm_batch}
    return res, details


def maskable_ppo(cfg, run: Run, budget: int, levels: Sequence[int]) -> tuple[dict, dict]:
    try:
        from r3m.train import sb3_baseline
    except ImportError as exc:
        log.warning(f"MaskablePPO baseline unavailable: {exc}")
        return {}, {"error": str(exc)}
    scfg = sb3_baseline.Config(timesteps=cfg.sb3_timesteps or budget, eval_levels=tuple(levels),
                               eval_n=cfg.eval_n, seed=cfg.seed, threads=cfg.threads or 1,
                               out=str(run.dir / "sb3"),
                               tensorboard=cfg.tensorboard)
    res = sb3_baseline.main(scfg)
    return dict(res["success"]), {"timesteps": scfg.timesteps, "train_levels": list(scfg.levels)}


# -- outputs ---------------------------------------------------------------------------------------------
def plot_reward_curve(history: Sequence[dict], start: float, end: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    its = np.arange(1, len(history) + 1)
    for key, label in (("rl/reward", "train reward (sampled)"), ("rl/pass@1", "train pass@1 (sampled)")):
        ax.plot(its, [h[key] for h in history], label=label, alpha=0.8)
    ax.axhline(start, color="grey", ls="--", lw=1, label=f"test reward at start ({start:.3f})")
    ax.axhline(end, color="black", ls=":", lw=1, label=f"test reward at end ({end:.3f})")
    ax.set_xlabel("RL iteration")
    ax.set_ylabel("reward / success")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_table(metrics: dict) -> str:
    sets = list(metrics["baselines"]["r3m_with_tools"])
    lines = ["| model | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    for name, res in metrics["baselines"].items():
        cells = [f"{res[s]:.3f}" if isinstance(res.get(s), (int, float)) else "-" for s in sets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    s, s0 = metrics["success"], metrics["success_start"]
    lines += ["", f"reward (sampled, test): {metrics['reward_start']:.3f} -> {metrics['reward_end']:.3f}; "
              f"pass@1 {metrics['pass1_start']:.3f} -> {metrics['pass1_end']:.3f}",
              f"greedy success with tools: {s0['with_tools']:.3f} -> {s['with_tools']:.3f}; "
              f"without tools: {s0['without_tools']:.3f} -> {s['without_tools']:.3f}",
              f"tool precision {metrics['tool_precision']:.3f}, recall {metrics['tool_recall']:.3f} "
              "(test split)"]
    for fam, d in metrics.get("distill", {}).items():
        lines.append(f"distillation ({fam}, levels {d.get('levels')}): tool-free accuracy "
                     f"{d['before']:.3f} -> "
                     f"{d['after']:.3f} on {d['examples']} verified tool answers")
    return "\n".join(lines)


def finish(cfg, run: Run, metrics: dict, state: dict) -> dict:
    plot_reward_curve(state["history"], metrics["reward_start"], metrics["reward_end"],
                      run.dir / "reward_curve.png")
    metrics["history"] = state["history"]
    metrics["results_table"] = table = results_table(metrics)
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    print(table)
    print(f"\nwall time {metrics['seconds']['total']:.0f} s   metrics: {run.dir / 'metrics.json'}   "
          f"tensorboard --logdir {run.dir / 'tb'}")
    return metrics
