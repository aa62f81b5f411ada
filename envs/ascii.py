"""The character contract: printable ASCII (codes 32-126) and ``"\\n"``.

Every prompt, answer, tool call and observation of the suite is written in these 96 characters,
the model tokenizer's alphabet; a character outside it has no token, so it is an error to find
one in a family's output, never something to drop silently. Plug-in authors whose sources hold
other text (accents, typographic quotes) transliterate it once in their generator with
``ascii_fold``.
"""

from __future__ import annotations

import unicodedata

PRINTABLE = frozenset(chr(c) for c in range(32, 127)) | {"\n"}

# Characters NFKD leaves non-ASCII but that have an obvious ASCII spelling.
_FOLD = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u00d7": "x", "\u00f7": "/",
    "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE",
    "\u00f8": "o", "\u00d8": "O",
    "\u0142": "l", "\u0141": "L", "\u0111": "d", "\u0110": "D", "\u00fe": "th", "\u00de": "Th", "\u00f0": "d",
    "\u00d0": "D", "\t": " ", "\r": "\n",
})


def ascii_fold(text: str) -> str:
    """Transliterate ``text`` into the printable-ASCII contract: ``"naïveté"`` -> ``"naivete"``.

    Compatibility decomposition (NFKD) splits accented letters and rewrites ligatures and
    full-width forms; combining marks are dropped; typographic quotes and dashes, a few letters
    without a decomposition (``ß``, ``æ``, ``ø``) and tabs map to ASCII; ``"\\r\\n"`` becomes
    ``"\\n"``. Anything else becomes ``"?"``, so the result is always printable ASCII.
    """
    text = text.replace("\r\n", "\n").translate(_FOLD)
    out = []
    for ch in unicodedata.normalize("NFKD", text):
        if ch in PRINTABLE:
            out.append(ch)
        elif not unicodedata.combining(ch):
            out.append("?")
    return "".join(out)


def first_non_printable(text: str) -> str | None:
    """The first character of ``text`` outside the contract, or None."""
    return next((c for c in text if c not in PRINTABLE), None)


def describe_char(ch: str) -> str:
    """``'é' (U+00E9)``: how error messages name a character."""
    return f"{ch!r} (U+{ord(ch):04X})"
