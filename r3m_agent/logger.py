"""One logger, several sinks: TensorBoard scalars, a JSONL file, and warnings to stdout.

Tags use fixed prefixes so curves from every script line up in TensorBoard:
``train/``, ``eval/``, ``halt/``, ``memory/``, ``tools/``, ``rl/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping

PREFIXES = ("train/", "eval/", "halt/", "memory/", "tools/", "rl/")

log = logging.getLogger("r3m")
if not log.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("[r3m] %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class Logger:
    """``scalars(step, {tag: value})`` to TensorBoard (``DIR/tb/NAME``) and ``DIR/scalars_NAME.jsonl``.

    One logger per phase of a run (``stage1``, ``dense``, ``stage2``, ...): the phases share tag
    names, so TensorBoard overlays them as runs of one experiment.
    """

    def __init__(self, run_dir: str, name: str = "main", tensorboard: bool = True,
                 hparams: Mapping[str, Any] | None = None):
        os.makedirs(run_dir, exist_ok=True)
        self.run_dir, self.name = run_dir, name
        self._jsonl = open(os.path.join(run_dir, f"scalars_{name}.jsonl"), "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=os.path.join(run_dir, "tb", name))
            if hparams:
                table = "\n".join(f"|{k}|{v}|" for k, v in hparams.items())
                self._tb.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        clean = {}
        for tag, value in values.items():
            if not tag.startswith(PREFIXES):
                raise ValueError(f"tag {tag!r} must start with one of {PREFIXES}")
            value = float(value)
            clean[tag] = value if math.isfinite(value) else None
            if self._tb is not None:
                self._tb.add_scalar(tag, value, step)
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")

    def figure(self, tag: str, fig, step: int = 0) -> None:
        if self._tb is not None:
            self._tb.add_figure(tag, fig, step)

    def flush(self) -> None:
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
