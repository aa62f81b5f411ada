"""The run scaffold every script shares: run folder, ``config.json``, the resume check, seeding,
threads, device and (under ``torchrun``) the process group.

Seeding. ``seed_everything(seed)`` seeds the model initialisations. Every other random draw of
every script comes from one named stream of the table ``STREAMS``: ``stream_rng(seed, name, *key)``
is a NumPy generator seeded with ``SeedSequence([seed, STREAMS[name], *key])``, where the key is
the step (or iteration) and, under torchrun, the process rank. So data are a pure function of
(seed, stream, key): a resumed run sees exactly the batches the uninterrupted run would have, two
streams never share draws, and a new stream never shifts the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from r3m.learn.cli import UsageError
from r3m.learn.reporting import Logger

# Settings that may differ between a run and its ``--resume`` (they do not change the numbers).
RESUMABLE = ("resume", "stop_after", "progress", "threads", "plugin")


@dataclass
class Run:
    """Where a run writes, and what it may spend."""

    dir: Path
    device: torch.device
    tensorboard: bool = True
    progress: bool = True
    stop_after: int = 0  # >0: raise Interrupted after this many optimiser steps in this process
    rank: int = 0
    world: int = 1  # processes under torchrun (each trains on its own batches; rank 0 writes)
    steps_taken: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def ckpt(self, phase: str) -> Path:
        return self.dir / "ckpt" / f"{phase}.pt"

    def logger(self, phase: str, purge_step: int | None = None) -> Logger:
        return Logger(str(self.dir), phase, tensorboard=self.tensorboard and self.main, purge_step=purge_step)


def jsonable(cfg: Any) -> dict:
    """A config dataclass as JSON-ready data (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# name -> stream id; what each stream draws
STREAMS: dict[str, int] = {
    "demos": 1,           # stage-1 and dense-baseline demonstration batches (key: rank, step)
    "schedule": 2,        # the progressive schedule's K and gradient steps (key: step)
    "halt_demos": 3,      # stage-2 demonstration batches (key: rank, step)
    "lm_corpus": 4,       # stage 0: the generated part of the corpus
    "lm_batches": 5,      # stage 0: language-model windows (key: rank, step)
    "carry_demos": 6,     # rl_verify: whole-episode imitation with the carried memory (key: step)
    "rollout": 7,         # rl_verify: instances, levels and sampling of an iteration (key: iteration)
    "update": 8,          # rl_verify: minibatch order (key: iteration)
    "replay": 9,          # rl_verify: expert episodes replayed beside the policy gradient (key: update)
    "eval_sampling": 10,  # sampled (not greedy) test episodes
    "distill_harvest": 11,  # distillation: the train instances the policy plays with tools
    "distill_batches": 12,  # distillation: batches of distillation targets (key: step)
    "distill_replay": 13,   # distillation: expert episodes replayed beside it (key: step)
    "baseline_demos": 14,   # baselines: demonstrations of the dense baseline (key: step)
    "replay_reservoir": 15,  # consolidation: which slot of the replay buffer a new episode replaces
    "replay_batches": 16,    # consolidation: episodes replayed from the buffer (key: task, step)
    "guard": 17,             # rl_verify: the fixed train-split instances of the guard's greedy evaluation
    "distill_fresh": 18,     # distillation: the fresh train instances the tool labels (key: step)
    "distill_replay_calls": 19,  # distillation: call demonstrations of the levels not yet opened (key: step)
    "replay_answer": 20,     # rl_verify after distillation: direct answers replayed on the mastered levels (key: update)
}


def stream_rng(seed: int, stream: str, *key: int) -> np.random.Generator:
    """The generator of stream ``stream`` at ``key`` (see the module docstring)."""
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; add it to STREAMS: {sorted(STREAMS)}")
    return np.random.default_rng(np.random.SeedSequence([seed, STREAMS[stream], *key]))


def stream_seed(seed: int, stream: str, *key: int) -> int:
    """An integer seed from a stream (for a ``torch.Generator``)."""
    return int(stream_rng(seed, stream, *key).integers(0, 2**62))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but torch.cuda.is_available() is False")
    return device


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op on the CPU (where fp32 is both faster and exact)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ddp_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (0, 0, 1 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def check_out(out: Path) -> None:
    """A run folder must be a folder (or not exist yet) under a folder this process can write."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is a file, not a folder")
    try:  # permission bits do not tell (root ignores them; /proc refuses root): try writing
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write under {parent} ({exc.strerror})") from None


def start_run(cfg: Any, prefix: str, stop_after: int = 0) -> Run:
    """The run folder of ``cfg`` (``cfg.out`` or ``runs/<prefix>-<time>``), its device and threads.

    A folder that already holds a run needs ``--resume``, and resuming needs the same config
    (up to ``RESUMABLE``). ``stop_after`` > 0 makes the run stop as if killed after that many
    optimiser steps (a testing aid). Under torchrun every process joins the process group and rank 0 writes.
    """
    from r3m.learn.reporting import code_state

    code_state()  # the provenance is the code the run starts from
    if getattr(cfg, "threads", 0):
        torch.set_num_threads(cfg.threads)
    rank, local_rank, world = ddp_info()
    device = resolve_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if not cfg.out:
            raise ValueError("under torchrun pass --out (every process must write to the same run folder)")
    out = Path(cfg.out or f"runs/{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_out(out)
    saved = out / "config.json"
    current = jsonable(cfg)
    if saved.exists() and not cfg.resume:
        raise UsageError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if cfg.resume and saved.exists():
        old = json.loads(saved.read_text())
        changed = {k: (old.get(k), v) for k, v in current.items() if k not in RESUMABLE and old.get(k) != v}
        if changed:
            raise UsageError(f"--resume with a different config than {saved}: {changed}")
    barrier()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(current, indent=2))
    barrier()
    return Run(out, device, getattr(cfg, "tensorboard", True), getattr(cfg, "progress", True), stop_after,
               rank=rank, world=world)
