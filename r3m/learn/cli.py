"""Script configs: one frozen dataclass per script, its CLI generated from it.

Every field needs a default and a docstring (the string literal right below it, as in
cleanrl's ``Args``); that docstring becomes the ``--help`` text. Unknown flags and abbreviations
are rejected; a boolean is ``--flag`` (true) or ``--flag true|false``.

    @dataclass(frozen=True)
    class Config:
        lr: float = 1e-3
        \"\"\"AdamW learning rate.\"\"\"

    cfg = parse_config(Config)            # from sys.argv
    cfg = parse_config(Config, ["--lr", "3e-4"])

A user's mistake (a bad value, a missing checkpoint, a device that is not there) ends as one line
on stderr and exit status 2, before anything is created: ``__post_init__`` raises ``ValueError``
for values, and ``main`` raises ``UsageError`` for what only it can check; ``run(main, Config)``
turns both into that line. ``--plugin MODULE`` (a module name importable from the current folder,
or a path to a ``.py`` file) is imported before the config is built, so a user's families and
tools registered there can be named by the other options.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.util
import inspect
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence, TypeVar

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


def required(**kw: Any) -> Any:
    """A field the command line must give (``checkpoint: str = required(default="")``): its usage
    shows it without brackets and leaving it out is a one-line error; the default only lets the
    dataclass be built in code, where ``__post_init__`` checks it."""
    return dataclasses.field(metadata={"required": True}, **kw)


def help_description(cls: type) -> str:
    """The ``--help`` description: the class docstring's first paragraph, whole (its first line
    alone stopped mid-sentence)."""
    first = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    return " ".join(first.split())


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    # No abbreviations: ``--iter`` must not silently mean ``--iterations``.
    parser = _Parser(description=description or help_description(cls), allow_abbrev=False)
    for f in dataclasses.fields(cls):
        conv, kw = _parser_for(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        must = bool(f.metadata.get("required"))
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else str(default)
        text = f"{docs.get(f.name, '')} " + ("(required)" if must else f"(default: {shown or 'empty'})")
        text = text.replace("%", "%%")  # argparse %-formats help strings: a literal % must be doubled
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=conv, default=default,
                            help=text, required=must, **kw)
    return parser


class UsageError(ValueError):
    """A mistake in what the user asked for (printed as one line, exit status 2)."""


class RunStopped(RuntimeError):
    """A run that stopped for a reason the user should read (printed as one line, exit status 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def load_plugins(names: Sequence[str]) -> None:
    """Import each user module (by name, from the current folder too, or by ``.py`` path)."""
    for name in names:
        try:
            if name.endswith(".py"):
                path = Path(name)
                if not path.is_file():
                    raise UsageError(f"--plugin {name}: no such file")
                spec = importlib.util.spec_from_file_location(path.stem, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = module
                spec.loader.exec_module(module)
            else:
                if os.getcwd() not in sys.path:
                    sys.path.insert(0, os.getcwd())
                importlib.import_module(name)
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"--plugin {name} could not be imported: {type(exc).__name__}: {exc}") from exc


def parse_config(cls: type[T], argv: Sequence[str] | None = None) -> T:
    """Parse ``argv`` (default ``sys.argv[1:]``) into ``cls``; mistakes exit with one clear line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(cls)
    if any(f.name == "plugin" for f in dataclasses.fields(cls)):
        early = _Parser(add_help=False, allow_abbrev=False)
        early.add_argument("--plugin", nargs="*", default=[])
        try:
            load_plugins(early.parse_known_args(argv)[0].plugin)
        except UsageError as exc:
            parser.error(str(exc))
    ns, unknown = parser.parse_known_args(argv)
    if unknown:
        known = ", ".join("--" + f.name.replace("_", "-") for f in dataclasses.fields(cls))
        parser.error(f"unknown option(s) {' '.join(unknown)}; known options: {known}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(ns).items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))


# What the scripts import on load; the rest of the ``train`` extra (tensorboard, stable-baselines3)
# is imported where it is used.
TRAIN_MODULES = ("torch", "tqdm", "matplotlib")


def require_train_extra(module_name: str) -> None:
    """A script's guard before its first ``import torch``: run as ``__main__`` in an install without
    the ``train`` extra (``pip install .`` installs the task suite alone), end with one line that
    names the extra instead of a ModuleNotFoundError traceback. Imported as a module, do nothing:
    the import error is the library's answer."""
    if module_name != "__main__":
        return
    missing = [m for m in TRAIN_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "r3m"
        sys.stderr.write(f"{prog}: error: {', '.join(missing)} not installed; the models and their training "
                         "need the 'train' extra: pip install -e \".[train]\"\n")
        raise SystemExit(2)


def check_at_least(cfg: Any, **minimums: float) -> None:
    """Raise ValueError naming the first option below its minimum (``--iterations must be >= 0, got
    -3``): a message that lists every bound leaves the user to find which value was wrong."""
    for name, low in minimums.items():
        value = getattr(cfg, name)
        if value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low:g}, got {value}")


def check_device(name: str) -> None:
    """Raise ValueError unless ``name`` (cpu, cuda, cuda:N, mps or auto) is usable on this machine."""
    import torch

    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu, cuda, cuda:N and auto are supported")


def run(main: Callable[[T], Any], cls: type[T], argv: Sequence[str] | None = None) -> Any:
    """A script's ``__main__``: parse the config, run ``main``, and report a ``UsageError`` (exit 2)
    or a ``RunStopped`` (exit 1) as one line on stderr."""
    from r3m_agent.checkpoint import CheckpointError

    cfg = parse_config(cls, argv)
    try:
        return main(cfg)
    except (UsageError, CheckpointError, RunStopped) as exc:
        prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else cls.__module__
        sys.stderr.write(f"{prog}: error: {' '.join(str(exc).split())}\n")
        raise SystemExit(1 if isinstance(exc, RunStopped) else 2) from None


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a config from a dict (e.g. a run's saved config), rejecting unknown keys by name."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
