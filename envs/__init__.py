"""The R³M task suite as Gymnasium environments.

``from r3m import envs`` registers the families and their env ids; then
``gymnasium.make("sudoku-v0")``. Add your own task with ``envs.register_task`` (the README's
plug-in guide) and check it with ``envs.check_family``; external evaluation sets are in
``envs.eval_sets`` (``list_eval_sets``, ``load_eval_set``).
"""

from __future__ import annotations

import gymnasium as gym

from r3m.envs.ascii import PRINTABLE, ascii_fold
from r3m.envs.base import (
    DECODES,
    NOOP,
    SPLITS,
    Instance,
    StreamStep,
    TaskFamily,
    list_families,
    make_family,
    register_family,
    split_of,
)
from r3m.envs.checks import FamilyCheck, check_family
from r3m.envs.eval_sets import (
    eval_dir,
    eval_set,
    eval_set_path,
    list_eval_sets,
    load_eval_set,
    register_eval_set,
    unregister_eval_set,
)
from r3m.envs.registration import ENV_IDS, register_env, register_task, unregister_task
from r3m.envs.spaces import PrintableText
from r3m.envs.text_env import TextTaskEnv

__all__ = [
    "DECODES", "ENV_IDS", "NOOP", "PRINTABLE", "SPLITS", "FamilyCheck", "Instance", "PrintableText", "StreamStep",
    "TaskFamily",
    "TextTaskEnv", "ascii_fold", "check_family", "eval_dir", "eval_set", "eval_set_path", "list_eval_sets",
    "list_families", "load_eval_set", "make_family", "register_env", "register_eval_set", "register_family",
    "register_task", "split_of", "unregister_eval_set", "unregister_task",
]

# family name -> (module, family class, env class); loaded on first use, not checked at import
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

for _name, (_module, _family_cls, _env_cls) in _BUILTIN.items():
    register_family(_name, f"{_module}:{_family_cls}")
    register_env(f"{_name}-v0", f"{_module}:{_env_cls}", family=_name)

gym.register(id="sudoku-grid-v0", entry_point="r3m.envs.sudoku_grid:SudokuGridEnv")
