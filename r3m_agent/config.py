"""The base of the model configs: frozen dataclasses, type-checked against each field's default,
saved in every checkpoint as a plain dict (unknown keys rejected when read back)."""

from __future__ import annotations

import re
from dataclasses import asdict, fields
from typing import Any, Mapping

from r3m_agent.tokenizer import VOCAB_SIZE

_TOOL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")  # the tool-name syntax of r3m.tools
_COORD = re.compile(r".+=([1-9][0-9]*)")  # a coordinate channel: "name=size"


def choice_count(tool_names: tuple[str, ...]) -> int:
    """Classes of the tool head: 0 answers, 1..n call tool i, n + 1 answers with the last verified
    tool result (``use_result_choice``)."""
    return 2 + len(tool_names)


def use_result_choice(tool_names: tuple[str, ...]) -> int:
    """The choice that answers with the last verified tool result (the policy renders it)."""
    return 1 + len(tool_names)


def coord_table_size(coords: tuple[str, ...]) -> int:
    """Rows of the coordinate embedding: row 0 is "none", then each channel's sizes in order."""
    return 1 + sum(int(_COORD.fullmatch(c).group(1)) for c in coords)


def coord_offsets(coords: tuple[str, ...]) -> dict[str, int]:
    """Channel name -> the row of its value 0 (a value v in 1..size is row offset + v)."""
    out, row = {}, 0
    for c in coords:
        name, _, size = c.rpartition("=")
        out[name] = row
        row += int(size)
    return out


class ConfigBase:
    """Shared by the frozen model configs: type checks against each field's default, dict I/O."""

    def _check_types(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value, default = getattr(self, f.name), f.default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if ok:
                    object.__setattr__(self, f.name, float(value))
            elif isinstance(default, str):
                ok = isinstance(value, str)
            elif isinstance(default, tuple):
                if isinstance(value, list):
                    value = tuple(value)
                    object.__setattr__(self, f.name, value)
                ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
            else:
                ok = True
            if not ok:
                raise TypeError(f"{type(self).__name__}.{f.name} must be like {default!r}, got {value!r}")

    def _check_trunk(self, d_model: int, n_heads: int, vocab_size: int, tool_names: tuple[str, ...],
                     symbols: tuple[str, ...] = (), coords: tuple[str, ...] = ()) -> None:
        name = type(self).__name__
        if n_heads < 1 or d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"{name}: d_model ({d_model}) must split into n_heads ({n_heads}) even-sized heads")
        if vocab_size < VOCAB_SIZE + len(symbols):
            raise ValueError(f"{name}: vocab_size {vocab_size} < the tokenizer's {VOCAB_SIZE} + {len(symbols)} "
                             f"view symbols")
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"{name}: symbols must be distinct")
        bad = [c for c in coords if not _COORD.fullmatch(c)]
        names = [c.rpartition("=")[0] for c in coords]
        if bad or len(set(names)) != len(names):
            raise ValueError(f"{name}: coords must be distinct 'name=size' channels, got {bad or coords}")
        if len(set(tool_names)) != len(tool_names) or not all(_TOOL_NAME.fullmatch(t) for t in tool_names):
            raise ValueError(f"{name}: tool_names must be distinct tool names, got {tool_names}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build from a dict (e.g. a checkpoint's); unknown keys are rejected, lists become tuples."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]
