"""The run scaffold every script shares: run folder, ``config.json``, the resume check, seeding,
threads, device and (under ``torchrun``) the process group.

Data are a pure function of (seed, stream, step): the batch at step s of a stream is drawn from
``stream_rng(seed, stream, s)``, so a resumed run sees exactly the batches the uninterrupted run
would have, and two phases never share draws.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

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

    def logger(self, phase: str) -> Logger:
        return Logger(str(self.dir), phase, tensorboard=self.tensorboard and self.main)


def jsonable(cfg: Any) -> dict:
    """A config dataclass as JSON-ready data (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, step]))


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


def start_run(cfg: Any, prefix: str, stop_after: int = 0) -> Run:
    """The run folder of ``cfg`` (``cfg.out`` or ``runs/<prefix>-<time>``), its device and threads.

    A folder that already holds a run needs ``--resume``, and resuming needs the same config
    (up to ``RESUMABLE``). ``stop_after`` > 0 makes the run stop as if killed after that many
    optimiser steps (a testing aid). Under torchrun every process joins the process group and rank 0 writes.
    """
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
    saved = out / "config.json"
    current = jsonable(cfg)
    if saved.exists() and not cfg.resume:
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if cfg.resume and saved.exists():
        old = json.loads(saved.read_text())
        changed = {k: (old.get(k), v) for k, v in current.items() if k not in RESUMABLE and old.get(k) != v}
        if changed:
            raise ValueError(f"--resume with a different config than {saved}: {changed}")
    barrier()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(current, indent=2))
    barrier()
    return Run(out, device, getattr(cfg, "tensorboard", True), getattr(cfg, "progress", True), stop_after,
               rank=rank, world=world)
