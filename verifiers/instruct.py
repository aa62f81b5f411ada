"""Instruction-following verifier: checks constraints, not string equality.

A spec (``instance.data`` of the ``instruct`` family, or its JSON text) is pure data::

    {"content": {...one content check...}, "mods": [{...modifier...}, ...]}

Content checks, on the reply's lower-cased words (runs of ``[a-z0-9]``) after the modifiers'
wrapping is removed:

    {"check": "words", "words": ["hello", "anna"]}      exactly these words, in order
    {"check": "items", "n": 3, "pool": ["apple", ...]}  n distinct words from pool ("and" ignored)
    {"check": "number", "value": 5}                     the only number said is 5 (digits or
                                                        a word up to "twenty"), in <= 8 words
    {"check": "mention", "word": "paris", "avoid": [...]}  names word, none of avoid, <= 8 words

Modifiers: ``upper`` (no lower-case letter), ``lower`` (no upper-case letter), ``quote`` (the
reply is wrapped in double quotes), ``start``/``end`` with ``"word"`` (the first/last word, any
case). They unwrap in that order: quotes, then the start word, then the end word.

Partial credit: 0 if the content check fails (so garbage scores 0); otherwise the fraction
of all constraints met, counting the content as one (content right, 1 of 2 modifiers: 2/3).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from r3m.verifiers import RIGHT, Verdict, never_raises, wrong

NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                "fifteen sixteen seventeen eighteen nineteen twenty").split()
MOD_KINDS = ("upper", "lower", "quote", "start", "end")
MAX_MENTION_WORDS = 8
_WORD = re.compile(r"[a-z0-9]+")
_SPAN = re.compile(r"[A-Za-z0-9]+")
_NUMBER = re.compile(r"[0-9]+")  # ASCII digits only, as in every verifier


class SpecError(ValueError):
    pass


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def load_spec(spec: Mapping[str, Any] | str) -> tuple[dict, list[dict]]:
    """Validate a spec (a mapping or its JSON text); returns (content, mods)."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except (ValueError, RecursionError) as exc:
            raise SpecError(f"spec is not JSON ({type(exc).__name__})") from None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("content"), Mapping):
        raise SpecError("spec needs a 'content' mapping")
    content, mods = dict(spec["content"]), list(spec.get("mods", []))
    required = {"words": ("words",), "items": ("n", "pool"), "number": ("value",), "mention": ("word",)}
    if content.get("check") not in required or any(k not in content for k in required[content["check"]]):
        raise SpecError(f"bad content check {str(content)[:60]}")
    for mod in mods:
        if not isinstance(mod, Mapping) or mod.get("kind") not in MOD_KINDS:
            raise SpecError(f"bad modifier {str(mod)[:60]}")
        if mod["kind"] in ("start", "end") and not isinstance(mod.get("word"), str):
            raise SpecError(f"modifier {mod['kind']} needs a word")
    return content, mods


def check_mods(text: str, mods: list[Mapping[str, Any]]) -> tuple[str, list[tuple[str, bool]]]:
    """Check each modifier on ``text``; returns the unwrapped body and (kind, met) per modifier."""
    by_kind = {mod["kind"]: mod for mod in mods}
    met: dict[str, bool] = {}
    if "upper" in by_kind:
        met["upper"] = not any("a" <= c <= "z" for c in text)
    if "lower" in by_kind:
        met["lower"] = not any("A" <= c <= "Z" for c in text)
    if "quote" in by_kind:
        met["quote"] = len(text) >= 2 and text[0] == '"' and text[-1] == '"'
        text = text[1:-1].strip() if met["quote"] else text
    if "start" in by_kind:
        first = _SPAN.search(text)
        met["start"] = bool(first) and first[0].lower() == by_kind["start"]["word"].lower()
        text = text[first.end():] if met["start"] else text
    if "end" in by_kind:
        last = None
        for last in _SPAN.finditer(text):
            pass
        met["end"] = bool(last) and last[0].lower() == by_kind["end"]["word"].lower()
        text = text[:last.start()] if met["end"] else text
    return text, [(mod["kind"], met[mod["kind"]]) for mod in mods]


def _numbers(tokens: list[str]) -> list[int]:
    out = []
    for token in tokens:
        if _NUMBER.fullmatch(token) and len(token) <= 6:
            out.append(int(token))
        elif _NUMBER.fullmatch(token) or token in NUMBER_WORDS:
            out.append(NUMBER_WORDS.index(token) if token in NUMBER_WORDS else -1)
    return out


def check_content(body: str, content: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the unwrapped reply ``body`` meets the content check, and why not."""
    tokens = words(body)
    check = content["check"]
    if check == "words":
        expected = [str(w).lower() for w in content["words"]]
        return tokens == expected, "wrong words" if tokens != expected else ""
    if check == "items":
        items = [t for t in tokens if t != "and"]
        pool = {str(w).lower() for w in content["pool"]}
        if len(items) != int(content["n"]):
            return False, f"{len(items)} items instead of {int(content['n'])}"
        if len(set(items)) != len(items):
            return False, "repeated items"
        outside = [t for t in items if t not in pool]
        return not outside, f"{outside[0][:20]!r} is not in the category" if outside else ""
    if len(tokens) > MAX_MENTION_WORDS:
        return False, f"too long ({len(tokens)} words; at most {MAX_MENTION_WORDS})"
    if check == "number":
        return _numbers(tokens) == [int(content["value"])], "wrong number"
    word, avoid = str(content["word"]).lower(), {str(w).lower() for w in content.get("avoid", [])}
    if word not in tokens:
        return False, "the answer is not named"
    return not avoid.intersection(tokens), "names a wrong answer too"


@never_raises
def verify(spec: Mapping[str, Any] | str, answer: str) -> Verdict:
    """Score ``answer`` against the constraints in ``spec`` (format and partial credit: module doc)."""
    try:
        content, mods = load_spec(spec)
    except SpecError as exc:
        return wrong(f"bad problem: {exc}")
    body, met = check_mods(answer.strip(), mods)
    ok, why = check_content(body, content)
    if not ok:
        return wrong(f"content: {why}")
    failed = [kind for kind, good in met if not good]
    if not failed:
        return RIGHT
    score = (1 + len(met) - len(failed)) / (1 + len(met))
    return wrong(f"content right, but not: {', '.join(failed)}", score)
