"""Stage 4: consolidation by replay into the semantic memory, measured over a sequence of tasks.

    python train/consolidate.py                                   # ~10-15 CPU-minutes, cpu-tiny
    python train/consolidate.py --families memory prefix listops instruct --steps 400 --out runs/c
    python train/consolidate.py --checkpoint runs/rl/ckpt/rl2.pt     # from what Stages 1-3 learned

R3M learns the families one after another (task A, then B, then C, then D; the memory family's
episodes are streamed, one sentence per turn with distractors, so its facts live only in the
episodic memory). Every expert episode the imitation draws (each one verified: the env's verifier
gave it reward 1) is offered to a replay buffer that keeps a uniform sample of the stream by
reservoir sampling (``r3m.learn.replay``). After each task (or on demand: after the tasks that
``--replay-after`` names) a consolidation phase trains ONLY the semantic memory's parameters (the
``semantic`` group; everything else frozen and left out of the optimiser) on episodes replayed
from the buffer, with the episodic write budget tightened (a smaller budget, a higher price per
write), so that what the model keeps rewriting into the episodic slots every episode can move
into the slow, shared memory instead.

``--checkpoint CKPT`` starts every arm from a Stage 1-3 checkpoint instead of a fresh model (its size,
tools and views; each family decoded as the checkpoint's specs say where it lists the family), and the
buffer then also holds the verified rollouts of Stage 3 (``--rl-episodes``: the ``episodes.jsonl``
that ``train/rl_verify.py`` writes, tool calls included), offered before the tasks' episodes. The
buffer's mix by source (imitation, stream, rl) and family is in ``metrics.json`` (``replay``).

Three arms learn the same tasks from the same first-task model on the same batches:
``consolidation``; ``no_consolidation`` (the tasks in sequence, nothing else); ``full_replay``
(after each task, the whole model replays the buffer for as many steps, at the task learning rate
and write budget). Measured (``r3m.learn.continual``): the accuracy matrix R[i][j] of each arm,
average accuracy, backward transfer and per-family forgetting; and, around the first consolidation
after each streamed task, accuracy against episodic writes per sample as the write gate's
threshold rises, with writes-to-target (the fewest writes at which accuracy stays within 1 point
of the model before consolidation at its own threshold) before and after, and their ratio. The
plan's targets (ratio <= 0.7, BWT >= -0.01 with consolidation) are reported with pass or fail.

``--out DIR``: ``metrics.json``, ``accuracy_vs_writes.png``, ``accuracy_matrix.png``, the replay
buffer after each task (``replay/``), a checkpoint per phase (``--resume`` continues a killed run
to the same result) and TensorBoard logs.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python train/consolidate.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r3m.learn.cli import require_train_extra

require_train_extra(__name__)  # without torch: one line naming the extra, not a traceback

import torch

from r3m import envs, tools
from r3m.learn import cli, continual, stages
from r3m.learn.cli import check_device
from r3m.learn.data import TaskSpec, task_spec
from r3m.learn.evaluation import evaluate_family, majority_rate
from r3m.learn.io import with_views
from r3m.learn.loop import STAGE_GROUPS, FitSpec, FitState, Interrupted, train_phase
from r3m.learn.losses import LossOut, imitation_loss, progressive_schedule
from r3m.learn.plots import plot_accuracy_matrix, plot_accuracy_vs_writes
from r3m.learn.policy import Policy
from r3m.learn.replay import ReplayBuffer, rl_examples
from r3m.learn.reporting import log, mean, pct, setup_logging, write_metrics
from r3m.learn.run import Run, autocast, jsonable, seed_everything, start_run, stream_rng
from r3m_agent import PRESETS, R3M
from r3m_agent.checkpoint import read_checkpoint
from r3m_agent.config import use_result_choice
from r3m_agent.r3m import R3MConfig

ARMS = ("consolidation", "no_consolidation", "full_replay")
TARGET_RATIO, TARGET_BWT = 0.7, -0.01  # the plan's Stage-4 exit criteria
LEARNED = 0.30  # their precondition: a task counts as learned at chance + 30 points on its own stage


@dataclass(frozen=True)
class Config:
    """Consolidation into the semantic memory over a sequence of tasks (Stage 4)."""

    families: tuple[str, ...] = ("memory", "listops", "prefix", "arithmetic")
    """The tasks, in the order they are learned (A, B, C, ...); at least two. Arithmetic comes last:
    cpu-tiny learns it slowest, and BWT does not read the last task, so there it can only interfere."""
    levels: tuple[int, ...] = (1,)
    """Levels of each family trained and evaluated (a family's missing levels are skipped; none: its first)."""
    stream: tuple[str, ...] = ("memory",)
    """Families whose episodes are streamed, as ``train/imitate.py --stream`` (memory: one sentence
    per turn, then the question; only the episodic memory carries the story to it)."""
    distractors: float = 0.5
    """Sentences without world information per story sentence in streamed memory episodes (writes
    a consolidated model can learn to skip)."""
    preset: str = "cpu-tiny"
    """R3M size (r3m_agent.PRESETS); the semantic memory is read on every forward. With --checkpoint: unused."""
    checkpoint: str = ""
    """A Stage 1-3 R3M checkpoint every arm starts from (empty: a fresh model). Its model must have a
    semantic memory, every family's tool and view; its K gives way to --k-train."""
    rl_episodes: str = "auto"
    """Verified RL rollouts offered to the replay buffer first (``episodes.jsonl`` of train/rl_verify.py):
    a path, ``auto`` (the one in --checkpoint's run folder, if any) or empty (none)."""
    seed: int = 0
    """Seeds the model init, every batch, the replay buffer and its draws."""
    steps: int = 500
    """Imitation steps per task."""
    batch_size: int = 32
    """Turns per imitation step (families that do not stream)."""
    stream_batch: int = 8
    """Episodes per imitation step of a streamed family (each has a turn per sentence)."""
    lr: float = 2e-3
    """Peak AdamW learning rate of the task phases and of full replay (warmup then cosine to 10%)."""
    warmup: int = 50
    """Warmup steps (at most a fifth of a phase)."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices."""
    grad_clip: float = 1.0
    """Gradient-norm clipping."""
    max_bad_steps: int = 20
    """Stop after this many optimiser steps in a row with a NaN/inf loss or gradient."""
    k_train: int = 4
    """Largest number of refinement steps in training (the evaluation's K)."""
    grad_steps: int = 2
    """Most refinement steps per batch that keep gradients."""
    tool_fraction: float = 0.0
    """Share of demonstrations that use the family's tool (evaluation plays without tools)."""
    write_penalty: float = 1.0
    """Weight of the episodic write budget in the task phases (as train/imitate.py)."""
    write_budget: float = 8.0
    """Writes per episode before the penalty applies, in the task phases."""
    write_cost: float = 0.0
    """Price of each soft write in the task phases (none by default: a price from the start can close
    the memory family's write gate for good, before writing has paid off)."""
    drift_penalty: float = 1.0
    """Weight of the state's change in the last supervised step (as train/imitate.py)."""
    replay_capacity: int = 512
    """Episodes the replay buffer holds (a uniform sample of every episode drawn so far)."""
    replay_turns: int = 32
    """Turns per replay step (whole episodes of one family, drawn from the buffer)."""
    consolidate_steps: int = 100
    """Optimiser steps of each consolidation phase (and of each full-replay phase)."""
    consolidate_lr: float = 3e-3
    """Peak learning rate of the consolidation phases (the semantic memory alone)."""
    consolidate_write_budget: float = 2.0
    """The tightened write budget of the consolidation phases (writes per episode)."""
    consolidate_write_penalty: float = 1.0
    """Weight of that budget in the consolidation phases."""
    consolidate_write_cost: float = 0.1
    """Price of each soft write in the consolidation phases (the task phases' is --write-cost)."""
    replay_after: tuple[int, ...] = ()
    """Tasks (1, 2, ...) after which the consolidation and full-replay arms replay the buffer (empty:
    after every task); e.g. ``--replay-after 4`` consolidates once, on demand, after the fourth."""
    write_thresholds: tuple[float, ...] = (0.5, 0.7, 0.9, 0.97, 0.99, 0.999, 1.0)
    """Write-gate thresholds swept before and after consolidation (the first, 0.5, is the gate's own: the
    unrestricted model; 1.0 writes nothing)."""
    eval_n: int = 50
    """Test instances per level and family for every measurement."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto. On CUDA the forward runs under bf16 autocast."""
    threads: int = 1
    """torch CPU threads (0: torch's default); one is as fast as two for cpu-tiny on a busy machine."""
    out: str = ""
    """Run directory (empty: runs/consolidate-<time>)."""
    resume: bool = False
    """Continue the run in --out from its checkpoints."""
    ckpt_every: int = 100
    """Checkpoint interval (steps)."""
    log_every: int = 25
    """TensorBoard interval (steps)."""
    tensorboard: bool = True
    """Write TensorBoard logs."""
    progress: bool = True
    """Show progress bars."""
    plugin: tuple[str, ...] = ()
    """User modules to import first (families the other options can then name)."""
    stop_after: int = 0
    """Testing aid: stop (as if killed) after this many optimiser steps in this process."""

    def __post_init__(self) -> None:
        known = envs.list_families()
        unknown = [f for f in self.families if f not in known]
        if unknown:
            raise ValueError(f"--families {' '.join(unknown)}: not registered; registered: {', '.join(known)}")
        if len(self.families) < 2 or len(set(self.families)) != len(self.families):
            raise ValueError(f"--families needs at least two distinct families, got {self.families}")
        bad = [f for f in self.stream if f not in self.families or not envs.make_family(f).streams]
        if bad:
            raise ValueError(f"--stream {' '.join(bad)}: not among --families, or a family that does not stream")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if not PRESETS[self.preset].semantic_slots:
            raise ValueError(f"preset {self.preset} has no semantic memory (semantic_slots=0)")
        for name in ("steps", "batch_size", "stream_batch", "replay_capacity", "replay_turns", "consolidate_steps",
                     "eval_n", "k_train", "grad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not all(1 <= t <= len(self.families) for t in self.replay_after):
            raise ValueError(f"--replay-after takes task numbers 1..{len(self.families)}, got {self.replay_after}")
        if not self.write_thresholds or self.write_thresholds[0] != 0.5 or \
                not all(0.0 <= t <= 1.0 for t in self.write_thresholds):
            raise ValueError("--write-thresholds: values in [0, 1], the first 0.5 (the gate's own threshold, the "
                             f"unrestricted model), got {self.write_thresholds}")
        if self.rl_episodes not in ("", "auto") and not Path(self.rl_episodes).is_file():
            raise ValueError(f"--rl-episodes {self.rl_episodes}: no such file")
        if self.checkpoint:
            checkpoint_config(self)  # an unreadable or unfit checkpoint fails here, one line
        check_device(self.device)


# -- set-up ----------------------------------------------------------------------------------
def task_specs(cfg: Config) -> list[TaskSpec]:
    """One spec per family, in order: the --levels it has (else its first), streamed where it streams;
    decoded (view, width) as --checkpoint's specs say where they list the family."""
    saved = {}
    if cfg.checkpoint:
        extra = read_checkpoint(cfg.checkpoint).get("extra") or {}
        saved = {d["family"]: TaskSpec.from_dict(d) for d in extra.get("specs", [])}
    specs = []
    for fam in cfg.families:
        family = envs.make_family(fam)
        levels = tuple(lv for lv in cfg.levels if lv in family.levels) or family.levels[:1]
        env = {}
        if fam in cfg.stream:
            env = {"stream": True, **({"distractors": cfg.distractors} if family.max_distractor_rate else {})}
        spec = task_spec(fam, levels, **env)
        if fam in saved and saved[fam].view == spec.view and saved[fam].width >= spec.width:
            spec = dataclasses.replace(spec, mode=saved[fam].mode, width=saved[fam].width)
        specs.append(spec)
    return specs


def model_config(cfg: Config):
    """The preset at ``k_train`` reading its semantic memory, with a tool-head class per registered tool,
    able to read every task's view; with --checkpoint, the checkpoint's model (``checkpoint_config``)."""
    if cfg.checkpoint:
        return checkpoint_config(cfg)
    base = dataclasses.replace(PRESETS[cfg.preset], K=cfg.k_train, semantic=True, tool_names=tuple(tools.list_tools()))
    return with_views(base, task_specs(cfg))


def checkpoint_config(cfg: Config) -> R3MConfig:
    """--checkpoint's model config, reading its semantic memory at K = k_train; ValueError where the
    model cannot do the tasks: no semantic memory, a family's tool or view symbols missing."""
    payload = read_checkpoint(cfg.checkpoint)
    where = f"--checkpoint {cfg.checkpoint}"
    if payload["model_class"] != "R3M":
        raise ValueError(f"{where} holds a {payload['model_class']}, not an R3M")
    saved = R3MConfig.from_dict(payload["config"])
    if not saved.semantic_slots:
        raise ValueError(f"{where}: its model has no semantic memory (semantic_slots=0), the only part "
                         "consolidation trains; train Stages 1-3 with a preset that has one")
    no_tool = [f for f in cfg.families if envs.make_family(f).tool not in (None, *saved.tool_names)]
    needed = with_views(saved, task_specs(cfg))
    unread = sorted(set(needed.symbols) - set(saved.symbols)) + sorted(set(needed.coords) - set(saved.coords))
    if no_tool or unread:
        raise ValueError(f"{where} does not fit --families {' '.join(cfg.families)}: " + "; ".join(
            ([f"no tool head for {', '.join(no_tool)} (it has {list(saved.tool_names)})"] if no_tool else []) +
            ([f"its vocabulary lacks {len(unread)} view symbols ({', '.join(unread[:3])}, ...): train Stage 1 "
              "on these families"] if unread else [])))
    return dataclasses.replace(saved, semantic=True, K=cfg.k_train)


def first_model(cfg: Config, run: Run) -> R3M:
    """Every arm's starting model: --checkpoint's weights, or a fresh one from the seed."""
    seed_everything(cfg.seed)
    model = R3M(model_config(cfg))
    if cfg.checkpoint:
        model.load_state_dict(read_checkpoint(cfg.checkpoint)["model"])
    return model.to(run.device)


def rl_episodes_path(cfg: Config) -> Path | None:
    """--rl-episodes as a file, if any (``auto``: ``episodes.jsonl`` in the checkpoint's run folder)."""
    if cfg.rl_episodes == "auto":
        path = Path(cfg.checkpoint).parent.parent / "episodes.jsonl" if cfg.checkpoint else None
        return path if path is not None and path.is_file() else None
    return Path(cfg.rl_episodes) if cfg.rl_episodes else None


def meta_model(cfg: Config) -> R3M:
    """The model's shape without its weights (parameter counts, tool names)."""
    with torch.device("meta"):
        return R3M(model_config(cfg))


def task_settings(cfg: Config, spec: TaskSpec) -> stages.Imitation:
    """A task phase: streamed episodes are batched by episode, others by turn."""
    streamed = bool(spec.env.get("stream"))
    return stages.Imitation.of(cfg, per_episode=streamed, batch_size=cfg.stream_batch if streamed else cfg.batch_size)


def fill_buffers(cfg: Config, run: Run, specs: list[TaskSpec]) -> list[ReplayBuffer]:
    """The replay buffer after each task: every episode each task's imitation draws, in order,
    offered to one reservoir (the batches are a pure function of seed and step, so this re-draws
    exactly the training episodes). Saved under ``replay/``; a resumed run reads them back."""
    buffers, buffer = [], ReplayBuffer(cfg.replay_capacity, cfg.seed)
    shape = meta_model(cfg)  # what the demonstrations need of the model: its tool names
    rl_path = rl_episodes_path(cfg)
    if rl_path is not None:  # Stage 3 came before these tasks (a resumed run reads its saved buffers below)
        episodes = rl_examples(rl_path, shape.cfg.tool_names, cfg.families)
        buffer.extend(episodes, source="rl")
        log.info(f"replay buffer: {len(episodes)} verified RL episodes from {rl_path}")
    for i, spec in enumerate(specs):
        path = run.dir / "replay" / f"after_task{i + 1}_{spec.family}.json"
        if path.exists():
            buffer = ReplayBuffer.load(path)
        else:
            settings = task_settings(cfg, spec)
            source = stages._demos([spec], shape, settings, cfg.seed, run)  # the training's batches
            kind = "stream" if spec.env.get("stream") else "imitation"
            for step in range(settings.steps):
                buffer.extend(source.get(step)[1], source=kind)
            buffer.save(path)
        log.info(f"replay buffer after {spec.family}: {buffer.summary()['size']} episodes, mix {buffer.mix()}")
        buffers.append(ReplayBuffer.load(path))
    return buffers


# -- phases ----------------------------------------------------------------------------------
def replay_phase(cfg: Config, run: Run, phase: str, model: R3M, buffer: ReplayBuffer, specs: list[TaskSpec],
                 task: int, *, consolidate: bool) -> FitState:
    """Replay of the buffer: ``consolidate`` trains the semantic memory alone (the ``semantic`` group,
    ``STAGE_GROUPS[4]``) under the tightened write budget; otherwise the whole model at the task
    settings (full replay). Both arms draw the same episodes at the same step (key: task, step)."""
    by_family = {s.family: s for s in specs}
    if consolidate:
        lr, groups = cfg.consolidate_lr, STAGE_GROUPS[4]
        penalty, budget, cost = cfg.consolidate_write_penalty, cfg.consolidate_write_budget, cfg.consolidate_write_cost
    else:
        lr, groups, penalty, budget, cost = cfg.lr, STAGE_GROUPS[1], cfg.write_penalty, cfg.write_budget, cfg.write_cost

    def loss_fn(step: int) -> LossOut:
        family, episodes = buffer.batch(stream_rng(cfg.seed, "replay_batches", task, step), cfg.replay_turns)
        K, grad_steps, supervised = progressive_schedule(stream_rng(cfg.seed, "schedule", step), cfg.k_train,
                                                         cfg.grad_steps)
        with autocast(run.device):
            return imitation_loss(model, by_family[family], episodes, K=K, grad_steps=grad_steps,
                                  supervised_steps=supervised, write_penalty=penalty, write_budget=budget,
                                  write_cost=cost, drift_penalty=cfg.drift_penalty)

    # the gradients an earlier phase left on parameters this phase freezes would still count in the
    # clipped norm (``fit`` clips over every parameter) and shrink this phase's steps; a resumed run,
    # which loads that phase instead of training it, has none (found by the resume test)
    model.zero_grad(set_to_none=True)
    steps = cfg.consolidate_steps
    spec = FitSpec(steps, lr, min(cfg.warmup, max(1, steps // 5)), cfg.grad_clip, cfg.ckpt_every, cfg.log_every,
                   cfg.replay_turns, cfg.max_bad_steps)
    return train_phase(run, phase, model, spec, loss_fn, groups=groups, weight_decay=cfg.weight_decay,
                       extra={"specs": [s.as_dict() for s in specs], "phase": phase})


class Evaluator:
    """Greedy accuracy (and writes per sample) on each family's test split at K = k_train, cached per
    (phase, family, write threshold): the arms share their first phase."""

    def __init__(self, cfg: Config):
        self.cfg, self.cache = cfg, {}

    def __call__(self, phase: str, model: R3M, spec: TaskSpec, threshold: float = 0.5) -> dict:
        key = (phase, spec.family, threshold)
        if key not in self.cache:
            policy = Policy(model, spec, K=self.cfg.k_train, write_threshold=threshold)
            with torch.no_grad():
                ev = evaluate_family(policy, spec.family, n_per_level=self.cfg.eval_n, levels=spec.levels,
                                     env_kwargs=dict(spec.env))
            self.cache[key] = {"threshold": threshold, "writes_per_sample": ev.writes, "accuracy": ev.accuracy}
        return self.cache[key]

    def sweep(self, phase: str, model: R3M, spec: TaskSpec) -> list[dict]:
        return [self(phase, model, spec, t) for t in self.cfg.write_thresholds]


def run_arm(cfg: Config, run: Run, arm: str, specs: list[TaskSpec], buffers: list[ReplayBuffer],
            evaluate: Evaluator, metrics: dict) -> list[list[float]]:
    """The tasks in order for one arm; returns its accuracy matrix (row i: after task i and its replay)."""
    model = first_model(cfg, run)
    R, unswept = [], []
    for i, spec in enumerate(specs):
        phase = f"task1_{spec.family}" if i == 0 else f"{arm}_task{i + 1}_{spec.family}"  # task 1 is shared
        model.zero_grad(set_to_none=True)  # see replay_phase
        state = stages.stage1(run, phase, model, [spec], task_settings(cfg, spec), cfg.seed)
        _record_fit(metrics, phase, state)
        if spec.env.get("stream"):
            unswept.append(spec)
        if arm != "no_consolidation" and (not cfg.replay_after or i + 1 in cfg.replay_after):
            swept = unswept if arm == "consolidation" else []  # streamed tasks learned since the last consolidation
            before = {s.family: evaluate.sweep(phase, model, s) for s in swept}
            phase = f"{arm}_after_task{i + 1}"
            _record_fit(metrics, phase, replay_phase(cfg, run, phase, model, buffers[i], specs, i,
                                                      consolidate=arm == "consolidation"))
            for s in swept:
                metrics["_sweeps"][s.family] = {"task": i + 1, "before": before[s.family],
                                                "after": evaluate.sweep(phase, model, s)}
            unswept = []
        R.append([evaluate(phase, model, s)["accuracy"] for s in specs])
        log.info(f"{arm} after task {i + 1} ({spec.family}): " + ", ".join(
            f"{s.family} {a:.3f}" for s, a in zip(specs, R[-1])))
    return R


# -- measurements ----------------------------------------------------------------------------
def writes_report(sweeps: dict) -> dict:
    """Writes-to-target before and after consolidation, per streamed family; the target accuracy is
    the model before consolidation at its own threshold (the sweep's first point)."""
    report = {}
    for fam, s in sweeps.items():
        full = s["before"][0]["accuracy"]
        before, after = (continual.writes_to_target([(p["writes_per_sample"], p["accuracy"]) for p in s[k]], full)
                         for k in ("before", "after"))
        report[fam] = {"before": before, "after": after, "ratio": continual.ratio(after, before),
                       "target_accuracy": full, "after_task": s["task"], "sweep_before": s["before"],
                       "sweep_after": s["after"]}
    return report


def unlearned(R: list[list[float]], families: list[str], chance: dict[str, float]) -> list[str]:
    """The families below chance + ``LEARNED`` right after their own task (R[j][j])."""
    return [f for j, f in enumerate(families) if R[j][j] < chance[f] + LEARNED]


def warnings_for(by_family: dict, matrices: dict, families: list[str], chance: dict[str, float]) -> list[str]:
    """What makes a measurement uninformative, said beside it (each also logged)."""
    found = []
    for fam, r in by_family.items():
        own = r["sweep_before"][0]  # the model before consolidation at its own threshold
        if own["accuracy"] == 0.0 or own["writes_per_sample"] == 0.0:
            found.append(f"{fam}: accuracy {own['accuracy']:.3f} with {own['writes_per_sample']:.2f} writes per "
                         "sample before consolidation: the task was not learned or the write gate is closed, so "
                         "writes-to-target says nothing about consolidation")
    for arm, R in matrices.items():
        missed = [f for f in unlearned(R, families, chance) if f != families[-1]]  # BWT does not read the last task
        if missed:
            found.append(f"{arm}: {', '.join(missed)} stayed within {100 * LEARNED:.0f} points of chance right after "
                         "training, so BWT cannot show their forgetting (more --steps)")
    for message in found:
        log.warning(f"WARNING {message}")
    return found


def targets(wtt: dict, by_family: dict, bwt_consolidation: float, R: list[list[float]], families: list[str],
            chance: dict[str, float]) -> dict:
    """The plan's targets, each judged only where its precondition holds: the tasks it reads were
    learned (chance + ``LEARNED`` on their own stage). A task never learned has nothing to forget, so
    its BWT is 0 and would "pass"; such a target is "not measurable" (``measurable: false``, ``passed:
    null``, ``why``)."""
    ratio, fam = wtt.get("ratio"), wtt.get("family")
    why_ratio = None
    if fam is None:
        why_ratio = "no streamed task was consolidated"
    elif by_family[fam]["target_accuracy"] < chance[fam] + LEARNED:
        why_ratio = f"{fam} was not learned before consolidation ({pct(by_family[fam]['target_accuracy'])}, chance " \
                    f"{pct(chance[fam])})"
    elif ratio is None:
        why_ratio = f"{fam}: no write threshold kept the accuracy within 1 point of the target"
    missed = [f for f in unlearned(R, families, chance) if f != families[-1]]  # BWT does not read the last task
    why_bwt = None if not missed else \
        f"{', '.join(missed)} not learned (below chance + {100 * LEARNED:.0f} points on their own stage)"
    return {"writes_to_target_ratio": _target(f"<= {TARGET_RATIO}", ratio, why_ratio,
                                              ratio is not None and ratio <= TARGET_RATIO),
            "bwt_consolidation": _target(f">= {TARGET_BWT}", bwt_consolidation, why_bwt,
                                         bwt_consolidation >= TARGET_BWT)}


def _target(target: str, value: float | None, why: str | None, passed: bool) -> dict:
    if why:
        return {"target": target, "value": value, "passed": None, "measurable": False, "why": why}
    return {"target": target, "value": value, "passed": passed, "measurable": True}


def tool_call_turns(buffer: ReplayBuffer, tool_names: tuple[str, ...]) -> int:
    """Turns in the buffer whose action is a tool call (choice 1..n tools; not "use the result")."""
    return sum(0 < t.tool < use_result_choice(tool_names) for item in buffer.items for t in item.turns)


def _record_fit(metrics: dict, phase: str, state: FitState) -> None:
    metrics["fit"][phase] = {"steps": state.step, "seconds": state.seconds, "final_loss": mean(state.losses[-20:]),
                             "nan_steps": state.nan_steps}


def table(metrics: dict) -> str:
    fams = metrics["families"]
    lines = ["| arm | " + " | ".join(f"{f} (after last task)" for f in fams) + " | ACC | BWT |",
             "|---" * (len(fams) + 3) + "|"]
    for arm, R in metrics["accuracy_matrix"].items():
        lines.append(f"| {arm} | " + " | ".join(pct(a) for a in R[-1]) +
                     f" | {pct(metrics['acc'][arm])} | {metrics['bwt'][arm]:+.3f} |")
    w = metrics["writes_to_target"]
    fmt = lambda x: "-" if x is None else f"{x:.3f}"
    lines.append(f"\nwrites-to-target ({w.get('family', '-')}): before {fmt(w.get('before'))}, after "
                 f"{fmt(w.get('after'))}, ratio {fmt(w.get('ratio'))}")
    for name, t in metrics["targets"].items():
        verdict = ("pass" if t["passed"] else "fail") if t["measurable"] else f"not measurable: {t['why']}"
        lines.append(f"target {name} {t['target']}: {fmt(t['value'])} -> {verdict}")
    lines.append(f"replay buffer: {metrics['replay']['size']} episodes, mix {metrics['replay']['mix']}, by source "
                 f"{metrics['replay']['sources']} ({metrics['replay']['tool_call_turns']} tool-call turns)")
    return "\n".join(lines)


def main(cfg: Config) -> dict:
    t0 = time.time()
    setup_logging()
    run = start_run(cfg, "consolidate", stop_after=cfg.stop_after)
    log.info(f"run directory {run.dir} on {run.device}")
    specs = task_specs(cfg)
    metrics: dict = {"config": jsonable(cfg), "device": str(run.device), "families": [s.family for s in specs],
                     "specs": [s.as_dict() for s in specs], "fit": {}, "_sweeps": {}}
    evaluate = Evaluator(cfg)
    try:
        buffers = fill_buffers(cfg, run, specs)
        matrices = {arm: run_arm(cfg, run, arm, specs, buffers, evaluate, metrics) for arm in ARMS}
    except Interrupted as exc:
        log.info(str(exc))
        return {"interrupted": True, "run_dir": str(run.dir)}
    metrics["accuracy_matrix"] = matrices
    metrics["bwt"] = {arm: continual.bwt(R) for arm, R in matrices.items()}
    metrics["acc"] = {arm: continual.average_accuracy(R) for arm, R in matrices.items()}
    metrics["forgetting"] = {arm: dict(zip(metrics["families"], continual.forgetting(R)))
                             for arm, R in matrices.items()}
    by_family = writes_report(metrics.pop("_sweeps"))
    first = next(iter(by_family), None)
    metrics["writes_to_target"] = {"family": first, **{k: by_family[first][k] for k in ("before", "after", "ratio")}} \
        if first else {"family": None, "before": None, "after": None, "ratio": None}
    metrics["writes_to_target_by_family"] = by_family
    metrics["chance"] = {s.family: majority_rate(s.family, s.levels, cfg.eval_n, dict(s.env)) for s in specs}
    metrics["warnings"] = warnings_for(by_family, matrices, metrics["families"], metrics["chance"])
    metrics["targets"] = targets(metrics["writes_to_target"], by_family, metrics["bwt"]["consolidation"],
                                 matrices["consolidation"], metrics["families"], metrics["chance"])
    metrics["replay"] = {**buffers[-1].summary(), "by_task": [b.summary() for b in buffers],
                         "tool_call_turns": tool_call_turns(buffers[-1], meta_model(cfg).cfg.tool_names)}
    metrics["start"] = cfg.checkpoint or "fresh"
    groups = meta_model(cfg).param_groups()
    metrics["params"] = {name: sum(p.numel() for p in ps) for name, ps in groups.items()}
    metrics["seconds"] = time.time() - t0
    _log_eval(run, metrics)
    plot_accuracy_matrix(matrices, metrics["families"], run.dir / "accuracy_matrix.png")
    sweeps = {f"{fam} {k}": r[f"sweep_{k}"] for fam, r in by_family.items() for k in ("before", "after")}
    plot_accuracy_vs_writes(sweeps, run.dir / "accuracy_vs_writes.png")
    public = write_metrics(run.dir, metrics, table(metrics))
    print(f"\nmetrics: {run.dir / 'metrics.json'}   tensorboard --logdir {run.dir / 'tb'}")
    return public


def _log_eval(run: Run, metrics: dict) -> None:
    """Each arm's accuracies after each task (x axis: the task), and the write sweeps."""
    logger = run.logger("continual")
    for arm, R in metrics["accuracy_matrix"].items():
        for i, row in enumerate(R, start=1):
            logger.scalars(i, {f"eval/accuracy/{arm}/{f}": a for f, a in zip(metrics["families"], row)})
    logger.close()


if __name__ == "__main__":
    cli.run(main, Config)
