"""Script configs: one frozen dataclass per script, its CLI generated from it.

Every field needs a default and a docstring (the string literal right below it, as in
cleanrl's ``Args``); that docstring becomes the ``--help`` text. Unknown flags are rejected.

    @dataclass(frozen=True)
    class Config:
        lr: float = 1e-3
        \"\"\"AdamW learning rate.\"\"\"

    cfg = parse_config(Config)            # from sys.argv
    cfg = parse_config(Config, ["--lr", "3e-4"])
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import types
import typing
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field to the string literal that follows it in its class body (a
    subclass's fields and those it inherits)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(inspect.getsource(cls).lstrip())
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _parser_for(tp: Any) -> tuple[Any, dict[str, Any]]:
    """(argparse type callable, extra add_argument kwargs) for a field type."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        inner, kw = _parser_for(args[0])
        return (lambda s: None if s.lower() == "none" else inner(s)), kw
    if tp is bool:  # a bare ``--flag`` means true; ``--flag false`` still works
        return _bool, {"nargs": "?", "const": True, "metavar": "true|false"}
    if origin is tuple:
        item = args[0] if args else str
        return _parser_for(item)[0], {"nargs": "*"}
    if origin is typing.Literal:
        return type(args[0]), {"choices": list(args)}
    if tp in (int, float, str):
        return tp, {}
    raise TypeError(f"config field type {tp!r} has no CLI parser")


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    # No abbreviations: ``--iter`` must not silently mean ``--iterations``.
    parser = argparse.ArgumentParser(description=description or (cls.__doc__ or "").strip().split("\n")[0],
                                     allow_abbrev=False)
    for f in dataclasses.fields(cls):
        conv, kw = _parser_for(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else str(default)
        text = f"{docs.get(f.name, '')} (default: {shown or repr('')})"
        text = text.replace("%", "%%")  # argparse %-formats help strings: a literal % must be doubled
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=conv, default=default,
                            help=text, **kw)
    return parser


def parse_config(cls: type[T], argv: Sequence[str] | None = None) -> T:
    """Parse ``argv`` (default ``sys.argv[1:]``) into ``cls``; unknown flags exit with a clear error."""
    parser = build_parser(cls)
    ns, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if unknown:
        known = ", ".join("--" + f.name.replace("_", "-") for f in dataclasses.fields(cls))
        parser.error(f"unknown option(s) {' '.join(unknown)}; known options: {known}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(ns).items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a config from a dict (e.g. a run's saved config), rejecting unknown keys by name."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
