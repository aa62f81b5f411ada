"""``dsl``: program search from input/output examples over the list DSL of ``verifiers/dsl.py``.

Prompt ``dsl: [3,1,2]->[6,4,2]; [5,0,-1]->[10,0,-2]`` (k shown examples); answer a program
such as ``sort|reverse|map(*2)``. ``instance.data`` keeps the shown and held-out examples
(6 more) and the verifier runs the answer on all of them.

Each instance draws a random program of the level's length from the canonical operations
(``LIST_OPS``; with probability 0.3 the last one from ``INT_OPS``), random inputs (values
-9..9), and rejects degenerate draws: a run-time error on any input, an output past |99|,
outputs equal to the inputs on every shown example, the same output on every shown example,
empty outputs on more than half the shown examples, a syntactically redundant program
(``sort|sort``, ``reverse|sum``, ``take(2)|take(3)``, ...).

Levels (length = operations in the drawn program; shown examples, held-out examples 6):
    1: length 1, 3 shown   every length-1 program that fits the shown examples fits all 9
    2: length 2, 4 shown   no length-1 program fits; the search's first fit fits all 10
    3: length 3, 5 shown   no program of length <= 2 fits the shown examples
    4: length 4, 5 shown   no program of length <= 2 fits the shown examples
    5: length 5, 6 shown   no program of length <= 2 fits the shown examples

At levels 1-2 the answer is the program ``dsl_search`` finds first (the shortest, first in
vocabulary order: a function of the prompt, which helps imitation) and the expert
demonstration calls the tool. A deeper search costs too much to run for every generated
instance (env resets regenerate, and a test-split instance takes ~5 draws): median ~3.6k
nodes (~15 ms) at length 3, ~30k at 4, ~50k at 5 with 40% past the 200k budget
(``bench/bench_dsl.py``). So at levels 3-5 the answer is the drawn program and the expert
answers without the tool (a policy may still call it). Levels 3-5 guarantee
only that no program of length <= 2 fits (levels 4-5 may have a length-3 or -4 solution) and
leave a small chance that another program fits the shown examples but not the held-out ones
(the bench's "generalized" column: 20/20 at level 3, 19/20 at 4).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from r3m import tools
from r3m.envs.base import Instance, TaskFamily
from r3m.envs.text_env import TextTaskEnv
from r3m.tools.dsl_search import synthesize
from r3m.verifiers import Verdict
from r3m.verifiers.dsl import INT_OPS, LIST_OPS, DslError, format_examples, parse_program, run, verify

PREFIX = "dsl: "
HELD_OUT = 6
MAX_VALUE = 99
TOOL_LEVELS = (1, 2)
ORDER_FREE = {"sort", "sum", "max", "min", "count"}  # ignore the order of their input


class Level(NamedTuple):
    length: int
    shown: int
    list_len: tuple[int, int]  # input length range, inclusive


LEVELS = {
    1: Level(1, 3, (3, 7)),
    2: Level(2, 4, (3, 7)),
    3: Level(3, 5, (4, 8)),
    4: Level(4, 5, (4, 8)),
    5: Level(5, 6, (4, 8)),
}


IDEMPOTENT_OR_INVOLUTION = {"sort", "reverse", "map(*-1)", "map(%2)", "scanl1(max)", "scanl1(min)"}
CANCELLING = {("map(+1)", "map(-1)"), ("map(-1)", "map(+1)")}


def _redundant(ops: list[str]) -> bool:
    """Cheap syntactic filter for adjacent pairs that collapse to one operation or none."""
    for a, b in zip(ops, ops[1:]):
        name_a, name_b = a.split("(")[0], b.split("(")[0]
        if a == b and (a in IDEMPOTENT_OR_INVOLUTION or name_a == "filter"):
            return True
        if name_a == name_b and name_a in ("take", "drop"):
            return True
        if (a in ("sort", "reverse") and name_b in ORDER_FREE) or (a, b) in CANCELLING:
            return True
    return False


def draw_program(rng: np.random.Generator, length: int) -> str:
    while True:
        ops = [str(LIST_OPS[rng.integers(len(LIST_OPS))]) for _ in range(length)]
        if rng.random() < 0.3:
            ops[-1] = str(INT_OPS[rng.integers(len(INT_OPS))])
        if not _redundant(ops):
            return "|".join(ops)


def draw_inputs(rng: np.random.Generator, n: int, list_len: tuple[int, int]) -> list[tuple[int, ...]]:
    lengths = rng.integers(list_len[0], list_len[1] + 1, size=n)
    return [tuple(int(v) for v in rng.integers(-9, 10, size=k)) for k in lengths]


def _outputs(program: str, inputs: list[tuple]) -> list | None:
    ops = parse_program(program)
    try:
        outs = [run(ops, x) for x in inputs]
    except DslError:
        return None
    flat = [v for o in outs for v in (o if isinstance(o, tuple) else (o,))]
    return outs if all(abs(v) <= MAX_VALUE for v in flat) else None


def _degenerate(inputs: list[tuple], outputs: list) -> bool:
    return (
        all(x == y for x, y in zip(inputs, outputs))
        or len(set(outputs)) == 1
        or 2 * sum(y == () for y in outputs) > len(outputs)
    )


def _length1_ambiguous(shown: list, held: list) -> bool:
    """Whether some length-1 program fits the shown examples but not the held-out ones."""
    for text in LIST_OPS + INT_OPS:
        fits = _outputs(text, [x for x, _ in shown]) == [y for _, y in shown]
        if fits and _outputs(text, [x for x, _ in held]) != [y for _, y in held]:
            return True
    return False


@functools.lru_cache(maxsize=4096)
def _has_short_program(shown: tuple) -> bool:
    """Whether a program of length <= 2 fits ``shown`` (~1k nodes; cached, as env resets regenerate)."""
    return synthesize(shown, budget=100_000, max_len=2).program is not None


class DslFamily(TaskFamily):
    name = "dsl"
    tool = "dsl_search"
    max_prompt_chars = 512
    max_answer_chars = 128

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        level = LEVELS[difficulty]
        for _ in range(10_000):
            inst = self._draw(rng, difficulty, level)
            if inst is not None:
                return inst
        raise RuntimeError(f"dsl: no valid instance at level {difficulty} in 10000 draws")

    def _draw(self, rng: np.random.Generator, difficulty: int, level: Level) -> Instance | None:
        program = draw_program(rng, level.length)
        inputs = draw_inputs(rng, level.shown + HELD_OUT, level.list_len)
        outputs = _outputs(program, inputs)
        if outputs is None or _degenerate(inputs[: level.shown], outputs[: level.shown]):
            return None
        pairs = list(zip(inputs, outputs))
        shown, held = pairs[: level.shown], pairs[level.shown :]
        prompt = PREFIX + format_examples(shown)
        data = {"shown": tuple(shown), "held_out": tuple(held), "program": program}
        answer = program
        if difficulty in TOOL_LEVELS:
            if difficulty == 1 and _length1_ambiguous(shown, held):
                return None
            found = tools.call(self.tool, prompt)  # cached: the expert's identical call is free
            if not found.ok or len(parse_program(found.output)) != level.length:
                return None
            if not verify(data, found.output).correct:
                return None
            answer = found.output
        elif _has_short_program(tuple(shown)):
            return None
        if len(prompt) > self.max_prompt_chars:
            return None
        return Instance(self.name, difficulty, prompt, answer, key=prompt, data=data)

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return verify(instance.data, answer)

    def tool_args(self, instance: Instance) -> str:
        return instance.prompt

    def expert_actions(self, instance: Instance, use_tools: bool) -> list[str]:
        if instance.difficulty not in TOOL_LEVELS:
            return [instance.answer]
        return super().expert_actions(instance, use_tools)


class DslEnv(TextTaskEnv):
    """Program synthesis from examples as a text episode (levels in ``envs.families.dsl``).

    ## Observation
    The transcript: the prompt ``dsl: [3,1,2]->[6,4,2]; [5,0]->[10,0]`` (3-6 input/output
    examples, at most 512 characters), then each tool call and its ``<result>...</result>``.

    ## Action
    The final answer: a program in the list DSL, a ``|``-separated pipeline such as
    ``sort|map(*2)|take(3)`` (grammar in ``verifiers/dsl.py``). Or a tool call
    ``<call>dsl_search dsl: [3,1,2]->[6,4,2]; ...</call>`` whose args are the prompt verbatim
    and whose result is the first (shortest) program fitting the examples, or an error such as
    ``budget exceeded``. The expert calls it at levels 1-2 and answers with its result; at
    levels 3-5 it answers directly (see the module docstring).

    Printable ASCII only, the answer at most 128 characters (``max_answer_chars``) once
    surrounding whitespace is stripped: other text ends the episode with reward 0
    (``TextTaskEnv``).

    ## Reward
    1 if the program reproduces every shown and held-out example (9-12 in all), else 0; with
    ``partial_credit=True`` the fraction of examples reproduced (a malformed program scores 0).

    ## Episode End
    Terminated after the final answer; truncated (reward 0) past the call budget.
    """

    def __init__(self, family: str | TaskFamily = "dsl", **kwargs):
        super().__init__(family, **kwargs)

