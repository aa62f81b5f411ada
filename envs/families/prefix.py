"""``prefix``: running parity of a bit string (prefix sums mod 2).

Prompt ``prefix: 0110100``; answer ``0100111``: bit i of the answer is the parity of input bits
0..i. This is the prefix-sum task of Deep Thinking (Schwarzschild et al. 2021, Bansal et al.
2022), the standard test of whether more iterations solve longer instances: each output bit
depends on every input bit before it, a single parallel pass must compute a long parity (hard
for a fixed-depth network), while an iterated local rule ("my bit = left neighbour's bit xor my
input") needs a number of steps that grows with the length.

Levels (length in bits; more bits = more sequential steps):
    1: 6-8   2: 10-12   3: 14-16   4: 18-20   5: 24-32

No tool applies: the expert answers directly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from r3m.envs.base import Instance, TaskFamily
from r3m.envs.text_env import TextTaskEnv
from r3m.verifiers import Verdict
from r3m.verifiers.prefix import prefix_parity, verify

PREFIX = "prefix: "
LENGTHS = {1: (6, 8), 2: (10, 12), 3: (14, 16), 4: (18, 20), 5: (24, 32)}


class PrefixFamily(TaskFamily):
    name = "prefix"
    levels = (1, 2, 3, 4, 5)
    max_prompt_chars = len(PREFIX) + 32
    max_answer_chars = 32

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        lo, hi = LENGTHS[difficulty]
        bits = "".join("1" if b else "0" for b in rng.integers(0, 2, int(rng.integers(lo, hi + 1))))
        return Instance(self.name, difficulty, PREFIX + bits, prefix_parity(bits), key=bits, data={"bits": bits})

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return verify(instance.data["bits"], answer)

    def payload_chars(self, levels: Sequence[int] | None = None) -> int:
        """The longest bit string of ``levels``: the answer has one bit per input bit."""
        return max(LENGTHS[level][1] for level in self.check_levels(levels))


class PrefixEnv(TextTaskEnv):
    """Running parity of a bit string as a text episode (see ``envs.families.prefix``).

    ## Observation
    The transcript: the prompt ``prefix: 0110100`` (6 to 32 bits), then any tool calls and results.

    ## Action
    The final answer: as many bits as the input, bit i the parity of input bits 0..i
    (``0100111`` for the prompt above; whitespace ignored). No tool applies.

    Printable ASCII only, the answer at most 32 characters (``max_answer_chars``) once
    surrounding whitespace is stripped: other text ends the episode with reward 0
    (``TextTaskEnv``).

    ## Reward
    1 for the exact bit string, else 0; with ``partial_credit=True``, the fraction of bits right
    when the answer has the right length.

    ## Episode End
    Terminated after the final answer; truncated (reward 0) past the call budget.
    """

    def __init__(self, family: str | TaskFamily = "prefix", **kwargs):
        super().__init__(family, **kwargs)
