"""Registering task families and their text envs: checked, atomic, and undoable.

``register_task`` is the plug-in entry point: it checks a family against the contract
(``envs.checks``) before anything is registered, so a family is either fully registered
(family and env id) or not at all, and ``unregister_task`` removes both so a notebook cell can
run again. Built-in families are registered lazily in ``envs/__init__.py`` and not checked at
import (``tests/test_registration.py`` checks them instead).
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym

from r3m import tools
from r3m.envs.base import (
    DECODES,
    FamilyEntry,
    TaskFamily,
    list_families,
    load_family,
    register_family,
    unregister_family,
)
from r3m.envs.checks import action_problems, instance_problems
from r3m.envs.text_env import TextTaskEnv

ENV_IDS: dict[str, str] = {}  # env id -> family name, for every text env registered here
TASK_NAME = re.compile(r"[a-z][a-z0-9_]*")
ENV_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*-v[0-9]+")


def register_env(env_id: str, entry_point: Any = "r3m.envs.text_env:TextTaskEnv", *, family: str,
                 **kwargs: Any) -> None:
    """``gymnasium.register`` that refuses to overwrite an existing id (Gymnasium only warns)."""
    _check_env_id(env_id)
    gym.register(id=env_id, entry_point=entry_point, kwargs={"family": family, **kwargs})
    ENV_IDS[env_id] = family


def register_task(name: str, family: FamilyEntry, env_id: str | None = None, *, validate: bool = True,
                  **env_kwargs: Any) -> str:
    """Register a user task family under ``name`` and its text env (``{name}-v0`` by default).

    ``family``: a ``TaskFamily`` subclass, an instance, a zero-argument factory returning one
    (or a ``"module:Class"`` string). Checked before anything is registered, each failure a
    ValueError (TypeError for a wrong kind of object) that names the family: the name
    (``[a-z][a-z0-9_]*``, equal to ``family.name``, not taken), the env id (``NAME-vN``, not in
    ``gymnasium.registry``), ``levels`` (a non-empty tuple of distinct ints), ``decode``, the
    limits, the ``tool`` (registered), and ``env_kwargs`` (by building the env once). With
    ``validate``, one train instance per level must have a printable-ASCII prompt, oracle answer
    and expert actions (with and without the tool) within the family's limits. Returns the env id.
    """
    env_id = f"{name}-v0" if env_id is None else env_id
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise ValueError(f"task name {name!r} must match [a-z][a-z0-9_]*")
    if name in list_families():
        raise ValueError(f"task family {name!r} is already registered (unregister_task({name!r}) first)")
    _check_env_id(env_id)
    fam = load_family(family)
    check_declaration(name, fam)
    TextTaskEnv(fam, **env_kwargs)  # unknown or bad env arguments fail now, not at gym.make
    if validate:
        check_samples(fam)
    register_family(name, fam)  # the object just checked is the one every env shares
    try:
        register_env(env_id, family=name, **env_kwargs)
    except BaseException:
        unregister_family(name)
        raise
    return env_id


def unregister_task(name: str) -> None:
    """Remove family ``name`` and its text env ids (from ``ENV_IDS`` and ``gymnasium.registry``)."""
    unregister_family(name)  # KeyError for an unknown name, before anything changes
    for env_id in [i for i, fam in ENV_IDS.items() if fam == name]:
        del ENV_IDS[env_id]
        gym.registry.pop(env_id, None)


def check_declaration(name: str, fam: TaskFamily) -> None:
    """The family's class attributes against the contract; raises ValueError naming what is wrong."""
    where = f"task family {name!r} ({type(fam).__name__})"
    if getattr(fam, "name", None) != name:
        raise ValueError(f"{where}: family.name is {getattr(fam, 'name', None)!r}; it must equal the "
                         "registered name, which instances carry")
    levels = fam.levels
    if (not isinstance(levels, tuple) or not levels or len(set(levels)) != len(levels)
            or not all(_is_int(lvl) for lvl in levels)):
        raise ValueError(f"{where}: levels must be a non-empty tuple of distinct ints, got {levels!r}")
    if fam.decode not in DECODES:
        raise ValueError(f"{where}: decode must be one of {DECODES}, got {fam.decode!r}")
    for attr in ("max_prompt_chars", "max_answer_chars"):
        if not _is_positive_int(getattr(fam, attr)):
            raise ValueError(f"{where}: {attr} must be a positive int, got {getattr(fam, attr)!r}")
    for attr in ("max_tool_args_chars", "answer_len"):
        value = getattr(fam, attr)
        if value is not None and not _is_positive_int(value):
            raise ValueError(f"{where}: {attr} must be None or a positive int, got {value!r}")
    if fam.answer_len is not None and fam.answer_len > fam.max_answer_chars:
        raise ValueError(f"{where}: answer_len={fam.answer_len} exceeds "
                         f"max_answer_chars={fam.max_answer_chars}")
    if fam.tool is not None and fam.tool not in tools.list_tools():
        raise ValueError(f"{where}: tool {fam.tool!r} is not registered (tools.register_tool first); "
                         f"registered: {tools.list_tools()}")
    if fam.numeric_env is not None and not isinstance(fam.numeric_env, str):
        raise ValueError(f"{where}: numeric_env must be None or an env id, got {fam.numeric_env!r}")


def check_samples(fam: TaskFamily) -> None:
    """One train instance per level, its prompt, oracle answer and expert actions within the contract."""
    for level in fam.levels:
        where = f"task family {fam.name!r}, level {level}"
        try:
            inst = fam.instance("train", 0, difficulty=level)
        except Exception as exc:
            raise ValueError(f"{where}: generating a train instance failed "
                             f"({type(exc).__name__}: {exc})") from exc
        problems = instance_problems(fam, inst)
        for use_tools in ((False, True) if fam.tool else (False,)):
            try:
                actions = fam.expert_actions(inst, use_tools)
            except Exception as exc:
                mode = "with" if use_tools else "without"
                raise ValueError(f"{where}: the expert demonstration {mode} tools failed "
                                 f"({type(exc).__name__}: {exc})") from exc
            problems += action_problems(fam, actions, use_tools)
        if problems:
            more = f" (and {len(problems) - 1} more)" if problems[1:] else ""
            raise ValueError(f"{where}: {problems[0]}{more}")


def _check_env_id(env_id: str) -> None:
    if not isinstance(env_id, str) or not ENV_ID.fullmatch(env_id):
        raise ValueError(f"env id {env_id!r} must look like NAME-v0 (letters, digits, _ and -, then -vN)")
    if env_id in gym.registry or env_id in ENV_IDS:
        raise ValueError(f"env id {env_id!r} is already registered")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value: object) -> bool:
    return _is_int(value) and value > 0
