"""``listops``: compositions of list transforms on lists of digits.

Prompt ``list: sort(map(+3,[4,1,7]))``; answer ``[0,4,7]`` (format and op semantics in
``verifiers.listops``: sort, rev, rot(k,.), map(+k,.)/map(*k,.) mod 10, scan (running sums
mod 10), dedup, keep(>k,.)/keep(<k,.)). Elements are single digits, so a list of n elements
is always 2n+1 characters wide.

Levels (composition depth = sequential steps):
    1: 1 op,   lists of 4-5    length-preserving ops only: sort rev rot map scan
    2: 2 ops,  lists of 5-6    length-preserving only
    3: 3 ops,  lists of 6-8    length-preserving only
    4: 4 ops,  lists of 8-10   adds dedup and keep; at least one of them shortens the list
    5: 5-6 ops, lists of 10-12 as level 4
At levels 1-3 the answer has exactly the width of the list in the prompt (fill decoding can
align them); at 4-5 it is shorter. Every op changes the list it gets (no ``rev(rev(.))``,
no sort of an already sorted list, no rev/rot right under a sort), and answers are never
empty, so each step of the composition matters.

Tool: ``list_eval`` on the expression; the expert answers with its output.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from r3m.envs.base import Instance, TaskFamily
from r3m.envs.text_env import TextTaskEnv
from r3m.verifiers import Verdict
from r3m.verifiers.listops import LENGTH_PRESERVING, apply, format_list, verify

PREFIX = "list: "
_SHORTENING = ("dedup", "keep")
_MAX_TRIES = 20


class Level(NamedTuple):
    length: tuple[int, int]  # inclusive range of the input list's length
    depth: tuple[int, int]  # inclusive range of the number of ops
    ops: tuple[str, ...]


LEVELS = {
    1: Level((4, 5), (1, 1), LENGTH_PRESERVING),
    2: Level((5, 6), (2, 2), LENGTH_PRESERVING),
    3: Level((6, 8), (3, 3), LENGTH_PRESERVING),
    4: Level((8, 10), (4, 4), LENGTH_PRESERVING + _SHORTENING),
    5: Level((10, 12), (5, 6), LENGTH_PRESERVING + _SHORTENING),
}


def _param(rng: np.random.Generator, op: str, xs: list[int]) -> str | None:
    """A parameter for ``op`` on ``xs`` (None when ``op`` cannot act usefully on ``xs``)."""
    if op == "rot":
        return str(int(rng.integers(1, len(xs)))) if len(xs) > 1 else None
    if op == "map":
        return f"+{int(rng.integers(1, 10))}" if rng.random() < 0.5 else f"*{int(rng.integers(2, 10))}"
    if op == "keep":
        sign = "<" if rng.random() < 0.5 else ">"
        useful = [k for k in range(10) if 0 < len(apply("keep", f"{sign}{k}", xs)) < len(xs)]
        return f"{sign}{int(rng.choice(useful))}" if useful else None
    return ""


def _allowed(op: str, previous: str | None) -> bool:
    if op == previous and op != "scan":
        return False
    return not (op == "sort" and previous in ("rev", "rot"))


def random_chain(rng: np.random.Generator, xs: list[int], depth: int, ops: tuple[str, ...]):
    """``depth`` (op, param) pairs, each changing the list it gets; None when no such chain was found."""
    chain: list[tuple[str, str]] = []
    for _ in range(depth):
        previous = chain[-1][0] if chain else None
        for _ in range(_MAX_TRIES):
            op = str(rng.choice(ops))
            param = _param(rng, op, xs) if _allowed(op, previous) else None
            if param is not None and (new := apply(op, param, xs)) != xs:
                chain.append((op, param))
                xs = new
                break
        else:
            return None
    return chain


def render(xs: list[int], chain: list[tuple[str, str]]) -> str:
    text = format_list(xs)
    for op, param in chain:
        text = f"{op}({param},{text})" if param else f"{op}({text})"
    return text


def max_expression_chars(level: Level) -> int:
    """Longest expression ``level`` can draw: the longest list (``2n + 1`` characters, one digit
    per element) wrapped in the deepest chain of the widest op. No op lengthens a list, so every
    answer is shorter than the list literal and this bounds answers too."""
    n = level.length[1]
    params = {"rot": len(str(n - 1)) + 1, "map": 3, "keep": 3}  # "11," "+3," ">4,"
    widest = max(len(op) + 2 + params.get(op, 0) for op in level.ops)
    return 2 * n + 1 + level.depth[1] * widest


class ListOpsFamily(TaskFamily):
    name = "listops"
    tool = "list_eval"
    max_prompt_chars = 128
    max_answer_chars = 32

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        level = LEVELS[difficulty]
        while True:
            n = int(rng.integers(level.length[0], level.length[1] + 1))
            xs = [int(x) for x in rng.integers(0, 10, n)]
            depth = int(rng.integers(level.depth[0], level.depth[1] + 1))
            chain = random_chain(rng, xs, depth, level.ops)
            if chain is None:
                continue
            if level.ops == LENGTH_PRESERVING or any(op in _SHORTENING for op, _ in chain):
                break
        out = xs
        for op, param in chain:
            out = apply(op, param, out)
        expression = render(xs, chain)
        return Instance(self.name, difficulty, PREFIX + expression, format_list(out), key=expression,
                        data={"expression": expression})

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return verify(instance.data["expression"], answer)

    def tool_args(self, instance: Instance) -> str:
        return instance.data["expression"]

    def payload_chars(self, levels: Sequence[int] | None = None) -> int:
        """The longest expression (``list_eval``'s ARGS, longer than any answer) of the levels."""
        return max(max_expression_chars(LEVELS[lvl]) for lvl in self.check_levels(levels))


class ListOpsEnv(TextTaskEnv):
    """List transforms as a text episode (ops and levels in ``envs.families.listops``).

    ## Observation
    The transcript: the prompt ``list: sort(map(+3,[4,1,7]))`` (at most 128 characters), then
    each tool call and its ``<result>...</result>``.

    ## Action
    The final answer: the resulting list as ``[0,4,7]`` (digits, commas, brackets; whitespace
    tolerated). Or a tool call ``<call>list_eval EXPR</call>`` whose result is the list (the
    expert passes the expression after ``list: `` and answers with the result).

    Printable ASCII only, the answer at most 32 characters (``max_answer_chars``) once
    surrounding whitespace is stripped: other text ends the episode with reward 0
    (``TextTaskEnv``).

    ## Reward
    1 for the exact list, else 0; with ``partial_credit=True``, an answer of the right length
    earns the fraction of positions right (``verifiers.listops``).

    ## Episode End
    Terminated after the final answer; truncated (reward 0) past the call budget.
    """

    def __init__(self, family: str | TaskFamily = "listops", **kwargs):
        super().__init__(family, **kwargs)
