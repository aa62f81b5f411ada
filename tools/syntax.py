"""The one tool-call syntax shared by every tool, env and tokenizer.

A policy calls a tool by emitting exactly ``<call>NAME ARGS</call>``; the env answers by
appending ``<result>OUTPUT</result>`` (or ``<result>error: ...</result>``) to the transcript.
NAME is a registered tool name; ARGS is free text that the tool parses itself.
"""

from __future__ import annotations

import re
from typing import NamedTuple

CALL_OPEN = "<call>"
CALL_CLOSE = "</call>"
RESULT_OPEN = "<result>"
RESULT_CLOSE = "</result>"
DELIMITERS = (CALL_OPEN, CALL_CLOSE, RESULT_OPEN, RESULT_CLOSE)

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class ParsedCall(NamedTuple):
    """A tool call read from an action: ``error`` is set (and name may be empty) when malformed."""

    name: str
    args: str
    error: str | None


def format_call(name: str, args: str) -> str:
    return f"{CALL_OPEN}{name} {args}{CALL_CLOSE}"


def format_result(output: str) -> str:
    return f"{RESULT_OPEN}{output}{RESULT_CLOSE}"


def is_call(action: str) -> bool:
    """Whether an action is an attempt at a tool call (well-formed or not)."""
    return isinstance(action, str) and action.lstrip().startswith(CALL_OPEN)


def parse_call(action: str) -> ParsedCall:
    """Parse an action that ``is_call``; never raises."""
    text = action.strip()
    if not text.startswith(CALL_OPEN):
        return ParsedCall("", "", "not a tool call")
    if not text.endswith(CALL_CLOSE):
        return ParsedCall("", "", f"malformed call: missing {CALL_CLOSE}")
    body = text[len(CALL_OPEN) : -len(CALL_CLOSE)]
    if any(d in body for d in DELIMITERS):
        return ParsedCall("", "", "malformed call: nested delimiters")
    name, _, args = body.partition(" ")
    if not _NAME.fullmatch(name):
        return ParsedCall("", "", f"malformed call: bad tool name {name[:32]!r}")
    return ParsedCall(name, args, None)
