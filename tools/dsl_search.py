"""``dsl_search``: enumerative program search over the list DSL of ``verifiers/dsl.py``.

    <call>dsl_search dsl: [3,1,2]->[6,4,2]; [5,0]->[10,0]</call>   ->   <result>sort|reverse|map(*2)</result>

ARGS are the examples exactly as the ``dsl`` prompt writes them. The search is breadth-first
by program length over the canonical operations (``LIST_OPS``, then ``INT_OPS`` as the last
operation), with two exact prunings:

- observational equivalence: a pipeline's continuation depends only on the current value on
  each example input, so two prefixes with the same values are interchangeable and only the
  first one found is kept (the classic bottom-up synthesis dedupe, e.g. Udupa et al. 2013);
- length: no operation lengthens a list, so a prefix shorter than a target output is dropped.

Within one length, prefixes are tried by their summed log prior weight and operations by
their own (an optional operator prior: weights by operation text or name, higher first;
default uniform, ties in vocabulary order). ``cost`` counts nodes: one node is one operation
applied to one prefix, either checked against the outputs or kept as a longer prefix. The
first program consistent with all examples is returned, so it is a shortest one. The search
is deterministic, so the tool memoizes its last results (a repeated call costs nothing new).
The parser caps the examples at 256 integers in all, which bounds one node's work: a search
that spends the whole registered budget (200k nodes) takes about 1-3 s on one core.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, NamedTuple, Sequence

from r3m.tools import ToolResult
from r3m.verifiers.dsl import INT_OPS, LIST_OPS, DslError, Op, Value, parse_examples, parse_op

MAX_LEN = 5


class SearchResult(NamedTuple):
    program: str | None
    nodes: int
    error: str | None


def _ordered(texts: Sequence[str], prior: Mapping[str, float] | None) -> list[tuple[Op, float]]:
    """Parsed ops with their log-weights, highest weight first (stable)."""
    out = []
    for t in texts:
        op = parse_op(t)
        w = 1.0 if prior is None else float(prior.get(t, prior.get(op.name, 1.0)))
        if w > 0:
            out.append((op, math.log(w)))
    return sorted(out, key=lambda p: -p[1])


def _apply(op: Op, state: tuple, inputs: tuple) -> tuple | None:
    fn = op.fn
    try:
        return tuple([fn(v, x) for v, x in zip(state, inputs)])
    except DslError:
        return None


def _fits(op: Op, state: tuple, inputs: tuple, target: tuple) -> bool:
    """Whether ``op`` maps ``state`` to ``target``; stops at the first example that differs."""
    fn = op.fn
    try:
        for v, x, y in zip(state, inputs, target):
            if fn(v, x) != y:
                return False
    except DslError:
        return False
    return True


def synthesize(
    examples: Sequence[tuple[tuple, Value]],
    budget: int,
    max_len: int = MAX_LEN,
    prior: Mapping[str, float] | None = None,
) -> SearchResult:
    """The shortest program (first in prior order) consistent with all ``examples``.

    Each length is two passes over the frontier of distinct prefixes: first every final
    operation is checked against the outputs (lazily, example by example), then, if none fits,
    the prefixes are extended by one list operation. ``nodes`` counts operation applications
    in both passes.
    """
    if not examples:
        return SearchResult(None, 0, "no examples")
    inputs = tuple(tuple(x) for x, _ in examples)
    target = tuple(y if isinstance(y, int) else tuple(y) for _, y in examples)
    int_target = isinstance(target[0], int)
    if any(isinstance(y, int) != int_target for y in target):
        return SearchResult(None, 0, "outputs mix integers and lists: no program fits")
    list_ops = _ordered(LIST_OPS, prior)
    final_ops = _ordered(INT_OPS, prior) if int_target else list_ops
    min_len = () if int_target else tuple(len(y) for y in target)
    frontier: list[tuple[float, str, tuple]] = [(0.0, "", inputs)]
    seen = {inputs}
    nodes = 0
    for depth in range(1, max_len + 1):
        for _, prog, state in frontier:
            for op, _ in final_ops:
                nodes += 1
                if nodes > budget:
                    return _exceeded(budget, depth)
                if _fits(op, state, inputs, target):
                    return SearchResult(_join(prog, op), nodes, None)
        if depth == max_len:
            break
        nxt: list[tuple[float, str, tuple]] = []
        for score, prog, state in frontier:
            for op, w in list_ops:
                nodes += 1
                if nodes > budget:
                    return _exceeded(budget, depth + 1)
                new = _apply(op, state, inputs)
                if new is None or new in seen or any(len(v) < n for v, n in zip(new, min_len)):
                    continue
                seen.add(new)
                nxt.append((score + w, _join(prog, op), new))
        if not nxt:
            break
        nxt.sort(key=lambda t: -t[0])
        frontier = nxt
    return SearchResult(None, nodes, f"no program of length <= {max_len} fits the examples")


def _exceeded(budget: int, length: int) -> SearchResult:
    return SearchResult(None, budget, f"budget exceeded ({budget} nodes, at length {length})")


def _join(prog: str, op: Op) -> str:
    return f"{prog}|{op}" if prog else str(op)


@functools.lru_cache(maxsize=4096)
def search(args: str, budget: int) -> ToolResult:
    """The registered tool: ARGS = the examples (``dsl:`` prefix optional); cost = nodes."""
    try:
        examples = parse_examples(args)
    except DslError as exc:
        return ToolResult.fail(f"malformed examples: {exc}")
    res = synthesize(examples, budget)
    if res.program is None:
        return ToolResult.fail(res.error, res.nodes)
    return ToolResult(True, res.program, res.nodes)
