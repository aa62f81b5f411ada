"""``list_eval``: evaluate a listops expression (language in ``verifiers.listops``).

    <call>list_eval sort(rev([3,1,4,1]))</call>  ->  <result>[1,1,3,4]</result>

Budget: one operation per element each op reads, plus one per op. Caps: 1,024 characters,
lists of at most 64 digits, at most 16 nested operations.
"""

from __future__ import annotations

from r3m.tools import ToolResult
from r3m.verifiers.listops import ListOpsError, format_list, parse_listops, run


def evaluate(args: str, budget: int) -> ToolResult:
    """The value of the expression ``args`` as ``[d,d,...]``, or ``ok=False`` with the reason."""
    try:
        tree = parse_listops(args)
    except ListOpsError as exc:
        return ToolResult.fail(str(exc))
    try:
        xs, cost = run(tree, budget)
    except ListOpsError as exc:
        return ToolResult.fail(str(exc), budget)
    return ToolResult(True, format_list(xs), cost)
