"""Checkpoints: ``{model, config, config_class, model_class, optimizer, step, rng, extra}``.

The model is saved unwrapped (the module under ``torch.compile``'s ``_orig_mod`` and DDP's
``module``, found by unwrapping objects, never by editing key strings), so a checkpoint loads
into a plain model. Files are written atomically: temporary file in the same directory, fsync,
``os.replace``. Everything stored is plain data, so loading uses ``weights_only=True`` and a
checkpoint cannot run code; ``extra`` must be plain data too (dicts, lists, numbers, strings, tensors).
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from r3m_agent.dense import DenseConfig, DenseTransformer
from r3m_agent.r3m import R3M, R3MConfig

class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this project (missing, empty, corrupt, foreign)."""


MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "R3M": (R3M, R3MConfig),
    "DenseTransformer": (DenseTransformer, DenseConfig),
}
FORMAT_VERSION = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile / DDP / DataParallel wrappers (nested in any order)."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def rng_state() -> dict[str, Any]:
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_kind, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    step: int = 0, extra: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint atomically; returns its path."""
    model = unwrap(model)
    name = type(model).__name__
    if name not in MODELS:
        raise TypeError(f"cannot checkpoint {name}: known models are {sorted(MODELS)}")
    payload = {
        "format_version": FORMAT_VERSION,
        "model_class": name,
        "config_class": type(model.cfg).__name__,
        "config": model.cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "rng": rng_state(),
        "extra": extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable ``field: checkpoint X, model Y`` for every differing field."""
    def norm(v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    names = sorted(set(saved) | set(current))
    return [f"{n}: checkpoint {saved.get(n, '<missing>')!r}, model {current.get(n, '<missing>')!r}"
            for n in names if norm(saved.get(n, "<missing>")) != norm(current.get(n, "<missing>"))]


def _load_reason(path: Path, exc: Exception) -> str:
    """One readable clause for why torch.load failed: its first sentence, cut at a word."""
    with open(path, "rb") as f:
        if f.read(2) != b"PK":  # torch.save writes a zip archive
            return "not a torch checkpoint: the file is not the zip archive torch.save writes"
    text = str(exc).strip()
    if "Unsupported global" in text:
        return "it holds objects other than tensors and plain data"
    first = re.split(r"(?<=[.!?])\s", text.splitlines()[0] if text else "", maxsplit=1)[0].rstrip(".")
    if len(first) < 12 or not re.search(r"[A-Za-z]{3}", first):  # "(101)" and the like say nothing
        return f"damaged ({type(exc).__name__})"
    return first if len(first) <= 160 else first[:160].rsplit(" ", 1)[0] + " ..."


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The payload of a checkpoint file; ``CheckpointError`` says plainly what is wrong with a file
    that is missing, empty, unreadable or not written by ``save_checkpoint``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes); save_checkpoint writes atomically, "
                              "so this file was not written by it")
    try:
        with warnings.catch_warnings():  # random bytes make torch warn about pickle protocols first
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint ({_load_reason(path, exc)})") from None
    if not isinstance(payload, dict) or payload.get("model_class") not in MODELS or "model" not in payload:
        raise CheckpointError(f"{str(path)!r} is not a checkpoint written by save_checkpoint "
                              f"(expected a model of {sorted(MODELS)})")
    return payload


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, map_location: str | torch.device = "cpu",
                    restore_rng: bool = False) -> dict[str, Any]:
    """Read a checkpoint; load it into ``model`` / ``optimizer`` when given. Returns the payload.

    Raises ``ValueError`` naming every differing field when ``model``'s config differs from the
    saved one, or when the model class differs.
    """
    payload = read_checkpoint(path, map_location)
    if model is not None:
        model = unwrap(model)
        if type(model).__name__ != payload["model_class"]:
            raise ValueError(f"checkpoint {path} holds a {payload['model_class']}, not a {type(model).__name__}")
        diffs = config_differences(payload["config"], model.cfg.to_dict())
        if diffs:
            raise ValueError(f"checkpoint {path} config differs from the model's: " + "; ".join(diffs))
        model.load_state_dict(payload["model"])
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise ValueError(f"checkpoint {path} has no optimizer state")
        optimizer.load_state_dict(payload["optimizer"])
    if restore_rng:
        set_rng_state(payload["rng"])
    return payload


def model_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the saved model class from its saved config and load its weights."""
    payload = read_checkpoint(path, map_location)
    model_cls, config_cls = MODELS[payload["model_class"]]
    model = model_cls(config_cls.from_dict(payload["config"]))
    model.load_state_dict(payload["model"])
    return model.to(map_location)
