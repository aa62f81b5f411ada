"""External evaluation sets: a registry of files nobody on the project wrote, for evaluation only.

    from r3m import envs
    envs.list_eval_sets("sudoku")           # ['magictour_top1465', 'norvig_easy50', ...]
    insts = envs.load_eval_set("norvig_top95")  # list[Instance], or None (one warning) if absent
    env.reset(options={"instance": insts[0]})

The files live outside the repository, in ``eval_dir()``: ``$R3M_EVAL_DIR`` when set, else
``<repository root>/../shared/eval`` (the layout of a checkout beside the shared data; an
installed copy sets ``R3M_EVAL_DIR``). Both are read when a set is loaded, never at import.
A loader is ``loader(path, limit, seed) -> list[Instance]`` (a callable or a lazy
``"module:function"``); it keeps a fixed sample of ``limit`` rows drawn with ``seed`` when the
file is larger (``sample_indices``), so a sampled set is the same set in every run.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from r3m.envs.base import Instance

Loader = Callable[[Path, int | None, int], list[Instance]]
_NAME = re.compile(r"[a-z][a-z0-9_]*")
MISSING = ("warn", "raise")
log = logging.getLogger("r3m")


@dataclass(frozen=True)
class EvalSet:
    name: str
    family: str
    relpath: str  # under eval_dir(), "/"-separated
    loader: str | Loader
    limit: int | None = None  # rows kept by default (a fixed sample); None: the whole file
    description: str = ""


_SETS: dict[str, EvalSet] = {}
_WARNED: set[str] = set()  # sets whose missing file was already reported in this process


def eval_dir() -> Path:
    """The folder of the external evaluation sets: ``$R3M_EVAL_DIR``, else ``<repo>/../shared/eval``."""
    if os.environ.get("R3M_EVAL_DIR"):
        return Path(os.environ["R3M_EVAL_DIR"])
    return Path(__file__).resolve().parent.parent.parent / "shared" / "eval"


def sample_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """Rows kept from a file of ``n``: all of them, or ``limit`` drawn with ``seed``, in file order."""
    if limit is None or limit >= n:
        return list(range(n))
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False)).tolist()


def register_eval_set(name: str, family: str, relpath: str, loader: str | Loader,
                      limit: int | None = None, description: str = "") -> None:
    """Register an evaluation set of ``family`` stored at ``eval_dir() / relpath``; duplicates raise."""
    if name in _SETS:
        raise ValueError(f"evaluation set {name!r} is already registered ({_SETS[name].relpath})")
    if not _NAME.fullmatch(name):
        raise ValueError(f"evaluation set name {name!r} must match [a-z][a-z0-9_]*")
    rel = PurePosixPath(relpath)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"evaluation set {name!r}: relpath must be relative to eval_dir(), got {relpath!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"evaluation set {name!r}: limit must be a positive int or None, got {limit!r}")
    if not (callable(loader) or (isinstance(loader, str) and ":" in loader)):
        raise TypeError(f"evaluation set {name!r}: loader must be a callable or 'module:function'")
    _SETS[name] = EvalSet(name, family, str(rel), loader, limit, description)


def unregister_eval_set(name: str) -> None:
    """Forget an evaluation set (so a notebook cell that registers it can run again)."""
    _spec(name)
    del _SETS[name]
    _WARNED.discard(name)


def list_eval_sets(family: str | None = None) -> list[str]:
    """Registered set names, all or those of ``family``."""
    return sorted(n for n, s in _SETS.items() if family is None or s.family == family)


def eval_set(name: str) -> EvalSet:
    """The registration of set ``name`` (family, relpath, default limit, description)."""
    return _spec(name)


def eval_set_path(name: str) -> Path:
    """Where set ``name``'s file is expected now (``eval_dir()`` is read at each call)."""
    return eval_dir().joinpath(*PurePosixPath(_spec(name).relpath).parts)


def load_eval_set(name: str, limit: int | None = None, seed: int = 0,
                  missing: str = "warn") -> list[Instance] | None:
    """The instances of set ``name``: a fixed sample of ``limit`` rows drawn with ``seed`` when the
    file is larger (``limit=None``: the registered default).

    A missing file is normal on a machine without the shared data: with ``missing="warn"`` it
    logs one warning per set per process (logger ``"r3m"``) and returns None; with ``"raise"``
    it raises FileNotFoundError.
    """
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
    spec = _spec(name)
    path = eval_set_path(name)
    if not path.is_file():
        message = (f"evaluation set {name!r} not found at {path}; set R3M_EVAL_DIR to the folder that "
                   f"holds {spec.relpath}")
        if missing == "raise":
            raise FileNotFoundError(message)
        if name not in _WARNED:
            _WARNED.add(name)
            log.warning(message)
        return None
    limit = spec.limit if limit is None else limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    return list(_loader(spec)(path, limit, seed))


def _spec(name: str) -> EvalSet:
    if name not in _SETS:
        raise KeyError(f"unknown evaluation set {name!r}; registered: {list_eval_sets()}")
    return _SETS[name]


def _loader(spec: EvalSet) -> Loader:
    if callable(spec.loader):
        return spec.loader
    module, _, attr = spec.loader.partition(":")
    return getattr(importlib.import_module(module), attr)


# Built-in sets (files described in <eval_dir>/README.md); loaders are imported on first load.
_SUDOKU_CSV = "r3m.envs.families.sudoku:load_sudoku_csv"
register_eval_set("norvig_easy50", "sudoku", "sudoku/norvig_easy50.csv", _SUDOKU_CSV,
                  description="50 easy grids (Project Euler 96, Norvig's essay)")
register_eval_set("norvig_top95", "sudoku", "sudoku/norvig_top95.csv", _SUDOKU_CSV,
                  description="95 hard grids ('top95', Norvig's essay)")
register_eval_set("norvig_hardest", "sudoku", "sudoku/norvig_hardest.csv", _SUDOKU_CSV,
                  description="11 very hard grids ('hardest', Norvig's essay)")
register_eval_set("magictour_top1465", "sudoku", "sudoku/magictour_top1465.csv", _SUDOKU_CSV,
                  description="1,465 hard grids (magictour 'top1465')")
register_eval_set("royle17_1000", "sudoku", "sudoku/royle_sudoku17.csv", _SUDOKU_CSV, limit=1000,
                  description="a fixed sample (seed 0) of 1,000 of Gordon Royle's 49,151 17-clue grids")
