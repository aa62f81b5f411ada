"""Tool registry contract: names, duplicates, lazy loading, never-raising calls."""

from __future__ import annotations

import pytest

from r3m import tools


def test_builtin_tools_listed():
    assert {"sudoku_solver", "calculator", "dsl_search", "csp_solver", "list_eval"} <= set(tools.list_tools())


def test_duplicate_and_bad_names_raise():
    with pytest.raises(ValueError, match="already registered"):
        tools.register_tool("calculator", "r3m.tools.calculator:calculate", budget=1)
    with pytest.raises(ValueError, match="must match"):
        tools.register_tool("Bad Name", lambda a, b: tools.ToolResult(True, a), budget=1)
    with pytest.raises(ValueError, match="budget"):
        tools.register_tool("zero_budget_tool", lambda a, b: tools.ToolResult(True, a), budget=0)


def test_call_never_raises():
    assert "unknown tool" in tools.call("no_such_tool", "x").error
    assert not tools.call("calculator", None).ok
    assert "too long" in tools.call("calculator", "1+" * 5000).error

    def broken(args: str, budget: int) -> tools.ToolResult:
        raise ZeroDivisionError("boom")

    tools.register_tool("test_broken_tool", broken, budget=5)
    result = tools.call("test_broken_tool", "x")
    assert not result.ok and "ZeroDivisionError" in result.error


def test_budget_is_passed_and_overridable():
    seen = []

    def echo(args: str, budget: int) -> tools.ToolResult:
        seen.append(budget)
        return tools.ToolResult(True, args.upper(), cost=1)

    tools.register_tool("test_echo_tool", echo, budget=7)
    assert tools.call("test_echo_tool", "hi") == tools.ToolResult(True, "HI", 1, None)
    tools.call("test_echo_tool", "hi", budget=3)
    assert seen == [7, 3]


@pytest.mark.parametrize(
    "action, expected",
    [
        ("<call>calculator 1+2</call>", ("calculator", "1+2", None)),
        ("  <call>calculator</call> ", ("calculator", "", None)),
        ("<call>calculator 1+2", None),
        ("<call>Calc 1</call>", None),
        ("<call>a <call>b</call></call>", None),
    ],
)
def test_parse_call(action, expected):
    parsed = tools.parse_call(action)
    if expected is None:
        assert parsed.error and parsed.error.startswith("malformed")
    else:
        assert tuple(parsed) == expected
    assert tools.is_call(action)
    assert tools.parse_call(tools.format_call("calculator", "x y")) == ("calculator", "x y", None)
