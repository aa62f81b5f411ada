"""``arithmetic``: integer expressions with + - * and parentheses.

Prompt ``calc: (47+385)*6-12``; answer the value in plain decimal (``2580``, ``-1234``).
Expressions are random binary trees printed with the fewest parentheses their value needs,
so every parenthesis in a prompt matters. A ``*`` always has a one-digit factor (two digits
at level 5): long multiplication is not the skill measured; the number of dependent steps is.

Levels (operations = sequential steps):
    1: a+b                                  1 op,   operands of 2-3 digits
    2: two of + -                           2 ops,  2-3 digits (results may be negative)
    3: two ops, one of them *               2 ops,  2-3 digits, factor 2-9
    4: three ops of + - *, with parentheses 3 ops,  2-3 digits, at least one needed ( )
    5: four or five ops, nested parentheses 4-5 ops, 2-4 digits, factor 2-99, ( ) two deep

Tool: ``calculator`` on the expression; the expert answers with its output.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from r3m.envs.base import Instance, TaskFamily
from r3m.envs.text_env import TextTaskEnv
from r3m.verifiers import Verdict
from r3m.verifiers.arithmetic import Binary, Node, Num, evaluate_int, parse_expression, verify

PREFIX = "calc: "
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


class Level(NamedTuple):
    ops: tuple[int, int]  # number of operators, inclusive range
    symbols: str  # operators drawn from
    digits: tuple[int, int]  # digits of a non-factor operand
    factor_digits: int  # digits of the small factor of each *
    min_mul: int  # at least this many *
    paren_depth: int  # exactly this nesting depth of needed parentheses (0: none)


LEVELS = {
    1: Level((1, 1), "+", (2, 3), 1, 0, 0),
    2: Level((2, 2), "+-", (2, 3), 1, 0, 0),
    3: Level((2, 2), "+-*", (2, 3), 1, 1, 0),
    4: Level((3, 3), "+-*", (2, 3), 1, 0, 1),
    5: Level((4, 5), "+-*", (2, 4), 2, 0, 2),
}


def _number(rng: np.random.Generator, digits: int) -> Num:
    return Num(int(rng.integers(10 ** (digits - 1), 10**digits)))


def random_tree(rng: np.random.Generator, n_ops: int, level: Level) -> Node:
    """A random expression tree with ``n_ops`` operators drawn as ``level`` prescribes."""
    if n_ops == 0:
        return _number(rng, int(rng.integers(level.digits[0], level.digits[1] + 1)))
    op = str(rng.choice(list(level.symbols)))
    if op == "*":
        factor_digits = int(rng.integers(1, level.factor_digits + 1))
        factor = Num(int(rng.integers(2, 10**factor_digits)))
        other = random_tree(rng, n_ops - 1, level)
        return Binary(op, factor, other) if rng.random() < 0.5 else Binary(op, other, factor)
    n_left = int(rng.integers(0, n_ops))
    return Binary(op, random_tree(rng, n_left, level), random_tree(rng, n_ops - 1 - n_left, level))


def render(node: Node) -> tuple[str, int]:
    """The expression text with only the parentheses its value needs, and their nesting depth."""
    if isinstance(node, Num):
        return str(node.value), 0
    parts, depth = [], 0
    for side, child in (("left", node.left), ("right", node.right)):
        text, d = render(child)
        if isinstance(child, Binary) and _needs_parens(node.op, child.op, side):
            text, d = f"({text})", d + 1
        parts.append(text)
        depth = max(depth, d)
    return parts[0] + node.op + parts[1], depth


def _needs_parens(parent: str, child: str, side: str) -> bool:
    if _PRECEDENCE[child] != _PRECEDENCE[parent]:
        return _PRECEDENCE[child] < _PRECEDENCE[parent]
    return side == "right" and parent == "-"  # a-(b+c); a+(b-c) is a+b-c and a*(b*c) is a*b*c


def _count_mul(node: Node) -> int:
    if isinstance(node, Num):
        return 0
    return (node.op == "*") + _count_mul(node.left) + _count_mul(node.right)


def max_expression_chars(level: Level) -> int:
    """Longest expression ``level`` can draw: ``n + 1`` operands of the widest literal, ``n``
    operators and, when the level has parentheses, at most one pair around each non-root operation."""
    n = level.ops[1]
    parens = 2 * (n - 1) if level.paren_depth else 0
    return (n + 1) * max(level.digits[1], level.factor_digits) + n + parens


def max_answer_chars(level: Level) -> int:
    """Longest value ``level`` can produce, sign included: ``|a +- b| <= |a| + |b|`` and
    ``|f * x| <= F * |x|`` bound the magnitude of a tree with ``n`` operators by ``bound[n]``."""
    bound = [10 ** level.digits[1] - 1]
    for n in range(1, level.ops[1] + 1):
        options = []
        if set(level.symbols) & {"+", "-"}:
            options.append(max(bound[k] + bound[n - 1 - k] for k in range(n)))
        if "*" in level.symbols:
            options.append((10**level.factor_digits - 1) * bound[n - 1])
        bound.append(max(options))
    return len(str(bound[-1])) + ("-" in level.symbols)


class ArithmeticFamily(TaskFamily):
    name = "arithmetic"
    tool = "calculator"
    max_prompt_chars = 64
    max_answer_chars = 16

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        level = LEVELS[difficulty]
        while True:  # rejection keeps each level's shape exact; acceptance is high at every level
            n_ops = int(rng.integers(level.ops[0], level.ops[1] + 1))
            tree = random_tree(rng, n_ops, level)
            expression, depth = render(tree)
            if depth == level.paren_depth and _count_mul(tree) >= level.min_mul:
                break
        value = evaluate_int(parse_expression(expression))
        return Instance(self.name, difficulty, PREFIX + expression, str(value), key=expression,
                        data={"expression": expression})

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return verify(instance.data["expression"], answer)

    def tool_args(self, instance: Instance) -> str:
        return instance.data["expression"]

    def payload_chars(self, levels: Sequence[int] | None = None) -> int:
        """The longest expression (the calculator's ARGS) or value the levels can produce."""
        return max(max(max_expression_chars(LEVELS[lvl]), max_answer_chars(LEVELS[lvl]))
                   for lvl in self.check_levels(levels))


class ArithmeticEnv(TextTaskEnv):
    """Integer arithmetic as a text episode (see ``envs.families.arithmetic`` for the levels).

    ## Observation
    The transcript: the prompt ``calc: (47+385)*6-12`` (at most 64 characters), then each tool
    call and its ``<result>...</result>``.

    ## Action
    The final answer: the value as an integer in plain decimal (``2580``, ``-1234``; a leading
    ``+``, leading zeros and surrounding whitespace are tolerated). Or a tool call
    ``<call>calculator EXPR</call>``, whose result is the exact value (the expert passes the
    expression after ``calc: `` and answers with the result).

    Printable ASCII only, the answer at most 16 characters (``max_answer_chars``) once
    surrounding whitespace is stripped: other text ends the episode with reward 0
    (``TextTaskEnv``).

    ## Reward
    1 for the exact value, else 0; with ``partial_credit=True``, a wrong answer with the right
    sign earns the fraction of digits right, aligned from the right (``verifiers.arithmetic``).

    ## Episode End
    Terminated after the final answer; truncated (reward 0) past the call budget.
    """

    def __init__(self, family: str | TaskFamily = "arithmetic", **kwargs):
        super().__init__(family, **kwargs)
