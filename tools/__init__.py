"""Tool registry, shaped like Gymnasium's env registry.

    from r3m import tools
    tools.list_tools()                      # ['calculator', 'csp_solver', ...]
    r = tools.call("calculator", "2*(3+4)") # ToolResult(ok=True, output='14', cost=..., error=None)

A tool is a function ``fn(args: str, budget: int) -> ToolResult``; ``budget`` counts the
tool's own work units (search nodes, constraint checks), never seconds. ``call`` never
raises: a bad argument, an unknown tool or a bug inside the tool all come back as
``ok=False`` with the error, so an env can put the message in the transcript.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from r3m.tools.syntax import (
    CALL_CLOSE,
    CALL_OPEN,
    RESULT_CLOSE,
    RESULT_OPEN,
    ParsedCall,
    format_call,
    format_result,
    is_call,
    parse_call,
)

__all__ = [
    "CALL_CLOSE", "CALL_OPEN", "RESULT_CLOSE", "RESULT_OPEN", "ParsedCall", "ToolResult",
    "ToolSpec", "call", "format_call", "format_result", "is_call", "list_tools", "parse_call",
    "register_tool", "spec", "unregister_tool",
]

MAX_ARGS_CHARS = 4096


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    output: str
    cost: int = 0
    error: str | None = None

    @classmethod
    def fail(cls, error: str, cost: int = 0) -> "ToolResult":
        return cls(ok=False, output="", cost=cost, error=error)

    def transcript_text(self) -> str:
        """What the env appends to the transcript: the output, or ``error: ...``."""
        return self.output if self.ok else f"error: {self.error}"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    entry_point: str | Callable[[str, int], ToolResult]
    budget: int
    description: str = ""

    def load(self) -> Callable[[str, int], ToolResult]:
        if callable(self.entry_point):
            return self.entry_point
        module, _, attr = self.entry_point.partition(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, ToolSpec] = {}
_LOADED: dict[str, Callable[[str, int], ToolResult]] = {}


def register_tool(
    name: str,
    entry_point: str | Callable[[str, int], ToolResult],
    *,
    budget: int,
    description: str = "",
) -> None:
    """Register ``entry_point`` (a callable or a lazy ``"module:function"``) under ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"tool {name!r} is already registered ({_REGISTRY[name].entry_point!r})")
    if parse_call(format_call(name, "")).error:
        raise ValueError(f"tool name {name!r} must match [a-z][a-z0-9_]*")
    if budget <= 0:
        raise ValueError(f"tool {name!r}: budget must be positive, got {budget}")
    _REGISTRY[name] = ToolSpec(name, entry_point, int(budget), description)


def unregister_tool(name: str) -> None:
    """Remove tool ``name`` (so a notebook cell that registers it can run again); KeyError if unknown."""
    spec(name)
    del _REGISTRY[name]
    _LOADED.pop(name, None)


def list_tools() -> list[str]:
    return sorted(_REGISTRY)


def spec(name: str) -> ToolSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown tool {name!r}; registered: {list_tools()}")
    return _REGISTRY[name]


def call(name: str, args: str, budget: int | None = None) -> ToolResult:
    """Run tool ``name`` on ``args`` within ``budget`` (default: the registered one). Never raises."""
    if name not in _REGISTRY:
        return ToolResult.fail(f"unknown tool {name!r}; available: {', '.join(list_tools())}")
    if not isinstance(args, str):
        return ToolResult.fail(f"args must be a string, got {type(args).__name__}")
    if len(args) > MAX_ARGS_CHARS:
        return ToolResult.fail(f"args too long ({len(args)} > {MAX_ARGS_CHARS} characters)")
    spec_ = _REGISTRY[name]
    try:
        fn = _LOADED.get(name) or _LOADED.setdefault(name, spec_.load())
        result = fn(args, spec_.budget if budget is None else int(budget))
    except Exception as exc:  # a tool bug must not crash an episode
        return ToolResult.fail(f"{name} failed: {type(exc).__name__}: {exc}")
    if not isinstance(result, ToolResult):
        return ToolResult.fail(f"{name} returned {type(result).__name__}, not ToolResult")
    return result


# Built-in tools, imported lazily on first call.
register_tool("sudoku_solver", "r3m.tools.sudoku_solver:solve", budget=200_000,
              description="solve a 9x9 sudoku: args are 81 characters, '.' or '0' for blanks")
register_tool("calculator", "r3m.tools.calculator:calculate", budget=10_000,
              description="exact arithmetic (+ - * / // % ** and parentheses) on integers and decimals; exact fractions out")
register_tool("list_eval", "r3m.tools.list_eval:evaluate", budget=10_000,
              description="evaluate a listops expression such as sort(rev([3,1,2]))")
register_tool("dsl_search", "r3m.tools.dsl_search:search", budget=200_000,
              description="find a list-DSL program from input/output examples")
register_tool("csp_solver", "r3m.tools.csp_solver:solve", budget=200_000,
              description="solve a small logic puzzle stated as a constraint problem")
