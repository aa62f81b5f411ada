"""Character-level tokenizer over the suite's alphabet (printable ASCII 32..126 and "\\n").

Special tokens come first so their ids never move when the alphabet is read:
pad, bos, eos, sep, mask, then the four tool delimiters of ``tools.syntax``. ``encode`` maps
each delimiter's text (``<call>``, ``</call>``, ``<result>``, ``</result>``) to one id, and
``decode`` renders it back as that text, so ``decode(encode(s)) == s`` for every printable s.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from r3m.tools.syntax import CALL_CLOSE, CALL_OPEN, DELIMITERS, RESULT_CLOSE, RESULT_OPEN

CONTROL_TOKENS = ("<pad>", "<bos>", "<eos>", "<sep>", "<mask>")
PAD_ID, BOS_ID, EOS_ID, SEP_ID, MASK_ID = range(len(CONTROL_TOKENS))
CALL_ID, CALL_CLOSE_ID, RESULT_ID, RESULT_CLOSE_ID = (len(CONTROL_TOKENS) + i for i in range(4))
ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))
TOKENS: tuple[str, ...] = CONTROL_TOKENS + DELIMITERS + tuple(ALPHABET)
VOCAB_SIZE = len(TOKENS)


class Tokenizer:
    """Stateless; every instance is identical (ids are fixed by construction)."""

    pad_id, bos_id, eos_id, sep_id, mask_id = PAD_ID, BOS_ID, EOS_ID, SEP_ID, MASK_ID
    call_id, call_close_id, result_id, result_close_id = CALL_ID, CALL_CLOSE_ID, RESULT_ID, RESULT_CLOSE_ID
    vocab_size = VOCAB_SIZE
    tokens = TOKENS

    def __init__(self) -> None:
        first = len(CONTROL_TOKENS) + len(DELIMITERS)
        self._char_id = {ch: first + i for i, ch in enumerate(ALPHABET)}
        self._delims = {CALL_OPEN: CALL_ID, CALL_CLOSE: CALL_CLOSE_ID,
                        RESULT_OPEN: RESULT_ID, RESULT_CLOSE: RESULT_CLOSE_ID}
        self.control_ids = frozenset(range(len(CONTROL_TOKENS)))

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of ``text``; raises ``ValueError`` naming the first character outside the alphabet."""
        ids = [BOS_ID] if add_bos else []
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch == "<":
                delim = next((d for d in self._delims if text.startswith(d, i)), None)
                if delim is not None:
                    ids.append(self._delims[delim])
                    i += len(delim)
                    continue
            tid = self._char_id.get(ch)
            if tid is None:
                raise ValueError(f"unknown character {ch!r} (U+{ord(ch):04X}) at position {i}")
            ids.append(tid)
            i += 1
        if add_eos:
            ids.append(EOS_ID)
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor, show_special: bool = False,
               stop_at_eos: bool = False) -> str:
        """Text of ``ids``; pad/bos/eos/sep/mask are skipped unless ``show_special``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        out = []
        for tid in ids:
            tid = int(tid)
            if not 0 <= tid < VOCAB_SIZE:
                raise ValueError(f"token id {tid} outside vocabulary of size {VOCAB_SIZE}")
            if stop_at_eos and tid == EOS_ID:
                break
            if tid in self.control_ids and not show_special:
                continue
            out.append(TOKENS[tid])
        return "".join(out)

    def batch_encode(self, texts: Sequence[str], pad_side: str = "right", add_bos: bool = False,
                     add_eos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids LongTensor[B, T], attention_mask BoolTensor[B, T])``, True on real tokens."""
        if pad_side not in ("left", "right"):
            raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
        rows = [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]
        width = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for b, row in enumerate(rows):
            span = slice(0, len(row)) if pad_side == "right" else slice(width - len(row), width)
            ids[b, span] = torch.tensor(row, dtype=torch.long)
            mask[b, span] = True
        return ids, mask

    def batch_decode(self, ids: torch.Tensor, show_special: bool = False,
                     stop_at_eos: bool = False) -> list[str]:
        return [self.decode(row, show_special, stop_at_eos) for row in ids]
