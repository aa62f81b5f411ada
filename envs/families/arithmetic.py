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

View ``places`` (the default, ``PlaceValueView``): the digits aligned by place value, least
significant first, as arithmetic Transformers need to learn from thousands of examples instead of
millions: one column token per place value holding every operand's digit there, each writing the
answer's digit at that place (a carry travels one column per step), after the expression's
skeleton (operand markers, operators, parentheses in order); a slot after them writes the sign.
The character view stays as ``chars``.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

import numpy as np

from r3m.envs.base import Instance, TaskFamily
from r3m.envs.text_env import TextTaskEnv
from r3m.envs.views import CharView, SymbolView, Token
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


OPERANDS = 6  # level 5: at most five operators
PLACES = 16  # columns: level 5's values have at most 15 characters
NO_DIGIT = 11  # an operand's digit at a place beyond its length (digits d are d + 1)
# an operand's role: added, subtracted, or a factor of a product (one role per operand, so the
# factors keep who is who); its digit coordinate is digit + 11 x role
ROLES = 2 + OPERANDS
_LEXEME = re.compile(r"\s*(?:([0-9]+)|([-+*()]))")


def _roles(node: Node, subtracted: bool = False, product: bool = False):
    """Each operand's role in the sum, left to right: 0 added, 1 subtracted, None a factor of a product."""
    if isinstance(node, Num):
        yield None if product else int(subtracted)
        return
    if node.op == "*":
        yield from _roles(node.left, subtracted, True)
        yield from _roles(node.right, subtracted, True)
        return
    yield from _roles(node.left, subtracted, product)
    yield from _roles(node.right, subtracted != (node.op == "-"), product)


class PlaceValueView(SymbolView):
    """Digits aligned by place value (see the module docstring). Coordinates: the operand a
    skeleton marker stands for, or for an operator or parenthesis the first operand after it; a
    column's place (1 = units); each operand's digit at that place with its role in the sum: added,
    subtracted (``a-(b+c)`` subtracts b and c), or a factor of a product (which one: the skeleton
    says how factors combine). The digit channels share one table, so a column holds the bag of
    its signed digits and what "7, subtracted" means is learned once for every operand.

    Measured on levels 1-2 (cpu-small/cpu-tiny, a few thousand steps): without the roles the
    columns had to find which operator applies to which operand's digits through the skeleton,
    and a+b-c stayed at 3%; with a table per operand a+b-c reached 66% after 5,000 steps."""

    name = "places"
    symbols = ("num", "col")
    out_symbols = tuple("0123456789") + ("+", "-")
    coords = (OPERANDS, PLACES) + (NO_DIGIT * ROLES,) * OPERANDS
    coord_tables = ("operand", "place") + ("digit",) * OPERANDS
    slots = 1  # the sign

    def parse(self, prompt: str) -> tuple[str, list[str], list[str]]:
        """(expression, operands, skeleton lexemes with ``#i`` for operand i)."""
        expression = (prompt[len(PREFIX):] if prompt.startswith(PREFIX) else prompt).strip()
        operands, skeleton, pos = [], [], 0
        while pos < len(expression):
            m = _LEXEME.match(expression, pos)
            if m is None:
                raise ValueError(f"arithmetic places view: cannot read {expression[pos:pos + 10]!r}")
            if m.group(1):
                skeleton.append(f"#{len(operands)}")
                operands.append(m.group(1).lstrip("0") or "0")
            else:
                skeleton.append(m.group(2))
            pos = m.end()
        if not operands or len(operands) > OPERANDS:
            raise ValueError(f"arithmetic places view: 1 to {OPERANDS} operands, got {len(operands)}")
        return expression, operands, skeleton

    def columns(self, expression: str, operands: list[str]) -> int:
        """Place values the answer can need: the value's bound with every - read as + (no cancelling)."""
        bound = evaluate_int(parse_expression(expression.replace("-", "+")))
        width = max(len(str(bound)), *map(len, operands))
        if width > PLACES:
            raise ValueError(f"arithmetic places view: {expression!r} needs {width} places, the view has {PLACES}")
        return width

    def tokens(self, prompt: str) -> list[Token]:
        expression, operands, skeleton = self.parse(prompt)
        none = (0,) * len(self.coords)
        toks = []
        for j, lex in enumerate(skeleton):
            nxt = next((int(x[1:]) + 1 for x in skeleton[j:] if x.startswith("#")), 0)
            toks.append(Token("num" if lex.startswith("#") else lex, (nxt,) + none[1:]))
        roles = [2 + i if r is None else r for i, r in enumerate(_roles(parse_expression(expression)))]
        for p in range(self.columns(expression, operands)):
            digits = [(int(o[-1 - p]) + 1 if p < len(o) else NO_DIGIT) + NO_DIGIT * r for o, r in zip(operands, roles)]
            toks.append(Token("col", (0, p + 1, *digits, *[0] * (OPERANDS - len(operands))), True))
        return toks

    def target(self, observation: str, answer: str) -> tuple[str, ...]:
        value = int(answer.strip())
        width = len(self.encode(observation).outputs) - 1
        digits = str(abs(value))
        if len(digits) > width:
            raise ValueError(f"arithmetic places view: {answer!r} has more than {width} places")
        return tuple(digits[::-1].ljust(width, "0")) + ("-" if value < 0 else "+",)

    def decode(self, observation: str, outputs) -> str:
        *digits, sign = outputs
        if not all(d.isdigit() for d in digits) or sign not in "+-":
            return "".join(outputs)  # not a number: the verifier says so
        text = "".join(reversed(digits)).lstrip("0") or "0"
        return "-" + text if sign == "-" and text != "0" else text

    def call_args(self, observation: str) -> str:
        return self.parse(observation.partition("<call>")[0])[0]


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

    def views(self):
        return {"places": PlaceValueView(), "chars": CharView("fill")}

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
