"""The R³M task suite as Gymnasium environments.

``import envs`` registers the families and their env ids; then ``gymnasium.make("sudoku-v0")``.
Add your own task with ``envs.register_task`` (see the README's plug-in guide). External
evaluation sets are in ``envs.eval_sets`` (``list_eval_sets``, ``load_eval_set``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from r3m.envs.base import (
    SPLITS,
    Instance,
    TaskFamily,
    list_families,
    make_family,
    register_family,
    split_of,
)
from r3m.envs.eval_sets import (
    eval_dir,
    eval_set_path,
    list_eval_sets,
    load_eval_set,
    register_eval_set,
    unregister_eval_set,
)
from r3m.envs.text_env import TextTaskEnv

__all__ = [
    "ENV_IDS", "SPLITS", "Instance", "TaskFamily", "TextTaskEnv", "eval_dir", "eval_set_path", "list_eval_sets",
    "list_families", "load_eval_set", "make_family", "register_env", "register_eval_set", "register_family",
    "register_task", "split_of", "unregister_eval_set",
]

# family name -> (module, family class, env class)
_BUILTIN = {
    "sudoku": ("r3m.envs.families.sudoku", "SudokuFamily", "SudokuEnv"),
    "arithmetic": ("r3m.envs.families.arithmetic", "ArithmeticFamily", "ArithmeticEnv"),
    "listops": ("r3m.envs.families.listops", "ListOpsFamily", "ListOpsEnv"),
    "logic": ("r3m.envs.families.logic", "LogicFamily", "LogicEnv"),
    "dsl": ("r3m.envs.families.dsl", "DslFamily", "DslEnv"),
    "memory": ("r3m.envs.families.memory", "MemoryFamily", "MemoryEnv"),
    "instruct": ("r3m.envs.families.instruct", "InstructFamily", "InstructEnv"),
    "prefix": ("r3m.envs.families.prefix", "PrefixFamily", "PrefixEnv"),
}
ENV_IDS: dict[str, str] = {}  # env id -> family name, for every text env registered here


def register_env(env_id: str, entry_point: Any = "r3m.envs.text_env:TextTaskEnv", *, family: str, **kwargs) -> None:
    """``gymnasium.register`` that refuses to overwrite an existing id (Gymnasium only warns)."""
    if env_id in gym.registry:
        raise ValueError(f"env id {env_id!r} is already registered")
    gym.register(id=env_id, entry_point=entry_point, kwargs={"family": family, **kwargs})
    ENV_IDS[env_id] = family


def register_task(name: str, family: str | type[TaskFamily], env_id: str | None = None, **env_kwargs) -> str:
    """Register a user task family and its text env (``{name}-v0`` by default); returns the env id."""
    register_family(name, family)
    env_id = env_id or f"{name}-v0"
    register_env(env_id, family=name, **env_kwargs)
    return env_id


for _name, (_module, _family_cls, _env_cls) in _BUILTIN.items():
    register_family(_name, f"{_module}:{_family_cls}")
    register_env(f"{_name}-v0", f"{_module}:{_env_cls}", family=_name)

gym.register(id="sudoku-grid-v0", entry_point="r3m.envs.sudoku_grid:SudokuGridEnv")
