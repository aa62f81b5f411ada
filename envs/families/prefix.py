"""``prefix``: running parity of a bit string (prefix sums mod 2).

Prompt ``prefix: 0110100``; answer ``0100111``: bit i of the answer is the parity of input bits
0..i. This is the prefix-sum task of Deep Thinking (Schwarzschild et al. 2021, Bansal et al.
2022), the standard test of whether more iterations solve longer instances: each output bit
depends on every input bit before it, a single parallel pass must compute a long parity (hard
for a fixed-depth network), while an iterated local rule ("my bit = left neighbour's bit xor my
input") needs a number of steps that grows with the length.

Levels (length in bits; more bits = more sequential steps):
    1: 6-8   2: 10-12   3: 14-16   4: 18-20   5: 24-32   6: 32   7: 64
Levels 6 and 7 are exactly twice and four times the longest string of levels 1-3, the lengths at
which length generalisation is measured (``scaled_level``).

View ``bits`` (the default, ``BitsView``): one position per bit, its output the running parity
there, attention limited to the previous bit: the rule "my parity is my bit xor my left
neighbour's parity" is then the same at every position and any length runs with the same
weights (as Deep Thinking's recurrent convolutions); the character view stays as ``chars``.

No tool applies: the expert answers directly.

Streaming (``stream``): the bits arrive in chunks of ``chunk`` bits (default 4; the last chunk
may be shorter), the first with the ``prefix: `` tag (``prefix: 0110``), later ones bits only
(``100``). At every chunk the answer is the running parity of that chunk's bits, continuing
from the parity of all earlier bits (``0100`` then ``111``): one bit of state carried from step
to step. Their concatenation is the whole-prompt answer, and is what the verifier scores.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from r3m.envs.base import Instance, StreamStep, TaskFamily, make_family
from r3m.envs.text_env import TextTaskEnv
from r3m.envs.views import CharView, SymbolView, Token
from r3m.verifiers import Verdict
from r3m.verifiers.prefix import prefix_parity, verify

PREFIX = "prefix: "
LENGTHS = {1: (6, 8), 2: (10, 12), 3: (14, 16), 4: (18, 20), 5: (24, 32), 6: (32, 32), 7: (64, 64)}
MAX_BITS = max(hi for _, hi in LENGTHS.values())
DEFAULT_CHUNK = 4


class BitsView(SymbolView):
    """One position per bit (the ``prefix: `` tag dropped), each writing the running parity at
    that bit; attention reaches ``left`` bits back and none ahead."""

    name = "bits"
    out_symbols = ("0", "1")
    coords = (2,)  # the bit's position mod 2: in the window a bit then tells its left neighbour from itself

    def __init__(self, left: int = 1):
        if isinstance(left, bool) or not isinstance(left, int) or left < 1:
            raise ValueError(f"prefix bits view: left must be a positive int, got {left!r}")
        self.window = (left, 0)

    def tokens(self, prompt: str) -> list[Token]:
        bits = (prompt[len(PREFIX):] if prompt.startswith(PREFIX) else prompt).strip()
        if set(bits) - {"0", "1"}:
            raise ValueError(f"prefix bits view: expected a bit string, got {prompt[:40]!r}")
        return [Token(b, (1 + i % 2,), True) for i, b in enumerate(bits)]

    def target(self, observation: str, answer: str) -> tuple[str, ...]:
        return tuple(answer.strip())

    def decode(self, observation: str, outputs) -> str:
        return "".join(outputs)


class PrefixFamily(TaskFamily):
    name = "prefix"
    levels = (1, 2, 3, 4, 5, 6, 7)
    max_prompt_chars = len(PREFIX) + MAX_BITS
    max_answer_chars = MAX_BITS
    streams = True

    def __init__(self, chunk: int = DEFAULT_CHUNK):
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"prefix: chunk must be a positive int (bits per stream step), got {chunk!r}")
        self.chunk = chunk
        self.max_stream_chars = len(PREFIX) + min(chunk, MAX_BITS)

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        lo, hi = LENGTHS[difficulty]
        bits = "".join("1" if b else "0" for b in rng.integers(0, 2, int(rng.integers(lo, hi + 1))))
        return Instance(self.name, difficulty, PREFIX + bits, prefix_parity(bits), key=bits, data={"bits": bits})

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return verify(instance.data["bits"], answer)

    def stream(self, instance: Instance) -> list[StreamStep]:
        """``chunk`` bits per step, each scored by its running parity (the carry from earlier chunks)."""
        bits, answer = instance.data["bits"], prefix_parity(instance.data["bits"])
        return [StreamStep((PREFIX if i == 0 else "") + bits[i:i + self.chunk], "chunk", answer[i:i + self.chunk])
                for i in range(0, len(bits), self.chunk)]

    def verify_stream(self, instance: Instance, answers: Sequence[str]) -> Verdict:
        """The chunk answers together, scored against the whole string."""
        return verify(instance.data["bits"], "".join(answers))

    def payload_chars(self, levels: Sequence[int] | None = None) -> int:
        """The longest bit string of ``levels``: the answer has one bit per input bit."""
        return max(LENGTHS[level][1] for level in self.check_levels(levels))

    def views(self):
        return {"bits": BitsView(), "chars": CharView("fill")}

    def size(self, levels: Sequence[int]) -> int:
        """The longest string at ``levels``, in bits."""
        return max(LENGTHS[lv][1] for lv in self.check_levels(levels))

    def scaled_level(self, levels: Sequence[int], factor: int) -> int | None:
        """The level whose strings are ``factor`` times the longest at ``levels`` (None: none is)."""
        want = factor * max(LENGTHS[lv][1] for lv in self.check_levels(levels))
        return next((lv for lv, (lo, hi) in LENGTHS.items() if lo == hi == want), None)


class PrefixEnv(TextTaskEnv):
    """Running parity of a bit string as a text episode (see ``envs.families.prefix``).

    ## Observation
    The transcript: the prompt ``prefix: 0110100`` (6 to 64 bits), then any tool calls and results.

    With ``stream=True``: one chunk of ``chunk`` bits per step (argument ``chunk``, default 4;
    the last may be shorter), the first tagged ``prefix: 0110``, the next ones bits only
    (``100``); never earlier chunks.

    ## Action
    The final answer: as many bits as the input, bit i the parity of input bits 0..i
    (``0100111`` for the prompt above; whitespace ignored). No tool applies.

    In stream mode one answer per chunk: the running parity of its bits continuing from the
    parity of all earlier bits (``0100``, then ``111``).

    Printable ASCII only, the answer at most 64 characters (``max_answer_chars``) once
    surrounding whitespace is stripped: other text ends the episode with reward 0
    (``TextTaskEnv``).

    ## Reward
    1 for the exact bit string, else 0; with ``partial_credit=True``, the fraction of bits right
    when the answer has the right length. In stream mode 0 for every chunk but the last, then
    the same verdict on the chunk answers joined (``info["stream_correct"]``: each chunk's).

    ## Episode End
    Terminated after the final answer (in stream mode, the answer to the last chunk);
    truncated (reward 0) past the call budget.
    """

    def __init__(self, family: str | TaskFamily = "prefix", chunk: int = DEFAULT_CHUNK, **kwargs):
        fam = make_family(family)
        if isinstance(fam, PrefixFamily) and fam.chunk != chunk:
            fam = type(fam)(chunk=chunk)  # chunking changes the stream, not the instances
        super().__init__(fam, **kwargs)
