"""``PrintableText``: the ``Text`` space of the text envs, safe in Gymnasium's async vector env.

Why a subclass. ``AsyncVectorEnv(shared_memory=True)`` (the default of
``gymnasium.make_vec(..., vectorization_mode="async")``) calls ``read_from_shared_memory`` once,
in its constructor, and returns that object after every ``reset`` and ``step``: it relies on
the result being a *view* of the shared buffer, which holds for ``Box`` and ``Discrete``
(numpy arrays over the buffer). For ``Text`` (Gymnasium 1.x) the function decodes the buffer
into a tuple of Python strings instead: a snapshot of the still zero-filled buffer, so every
observation is ``max_length`` copies of the charset's first character (``"\\n"`` for ours)
whatever the workers write. The workers do write the right codes; only the read is stale.

The fix registers, for this subclass only, a ``read_from_shared_memory`` that returns a live
view (``SharedTexts``: decodes the buffer on every access; ``deepcopy``, which the vector env
applies with its default ``copy=True``, gives a plain tuple of strings, as the sync vector env
returns). Registering it for ``Text`` itself would patch Gymnasium for every other env in the
process; switching shared memory off would need every caller to know to do it.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory

from r3m.envs.ascii import PRINTABLE


class PrintableText(spaces.Text):
    """``Text`` over the printable-ASCII contract (``envs.ascii.PRINTABLE``), shareable across processes."""

    def __init__(self, max_length: int, *, min_length: int = 1, seed: Any = None):
        super().__init__(max_length, min_length=min_length, charset=PRINTABLE, seed=seed)
        # index -> ASCII byte, to decode a row of character indexes in one numpy take
        self._bytes = np.frombuffer("".join(self.character_list).encode("ascii"), np.uint8)

    def decode(self, codes: np.ndarray) -> str:
        """A string from its flattened form (character indexes, padded with ``len(charset)``)."""
        return self._bytes[codes[codes < len(self._bytes)]].tobytes().decode("ascii")


class SharedTexts(Sequence):
    """The strings in a shared-memory buffer of ``PrintableText`` values, read on every access."""

    def __init__(self, space: PrintableText, shared_memory: Any, n: int):
        self._space = space
        self._codes = np.frombuffer(shared_memory.get_obj(), dtype=np.int32).reshape(n, space.max_length)

    def __len__(self) -> int:
        return len(self._codes)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self)[index]
        return self._space.decode(self._codes[index])

    def __iter__(self) -> Iterator[str]:
        return (self._space.decode(row) for row in self._codes)

    def __deepcopy__(self, memo: dict) -> tuple[str, ...]:
        return tuple(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and tuple(self) == tuple(other)

    def __repr__(self) -> str:
        return f"SharedTexts({tuple(self)!r})"


@create_shared_memory.register(PrintableText)
def _create_printable_shared_memory(space: PrintableText, n: int = 1, ctx: ModuleType = mp) -> Any:
    memory = ctx.Array(np.dtype(np.int32).char, n * space.max_length)
    # padding everywhere: a slot no worker has written yet reads as "", not as "\n" * max_length
    np.frombuffer(memory.get_obj(), dtype=np.int32)[:] = len(space.character_list)
    return memory


@read_from_shared_memory.register(PrintableText)
def _read_printable_from_shared_memory(space: PrintableText, shared_memory: Any, n: int = 1) -> SharedTexts:
    return SharedTexts(space, shared_memory, n)
