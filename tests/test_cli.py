"""Every script's command line: --help, the flag conventions, and user mistakes that end as one line on
stderr with exit status 2 and nothing created."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
import torch

from r3m.learn import cli
from r3m.learn.cli import build_parser, parse_config
from r3m.learn.data import TaskSpec, task_spec
from r3m.train import distill, evaluate, imitate, rl_verify, sb3_baseline
from r3m_agent import R3M, R3MConfig, save_checkpoint

SCRIPTS = {"imitate": imitate, "rl_verify": rl_verify, "evaluate": evaluate, "sb3_baseline": sb3_baseline,
           "distill": distill}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_prints_every_option_once_with_its_default(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_config(SCRIPTS[name].Config, ["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(SCRIPTS[name].Config):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
    fields = dataclasses.fields(SCRIPTS[name].Config)
    must = [f for f in fields if f.metadata.get("required")]
    assert text.count("(default:") == len(fields) - len(must) and text.count("(required)") == len(must)
    assert "[true|false]" in text and "[HALT]" not in text.upper().replace("[TRUE|FALSE]", "")


HELP = [f"train/{n}.py" for n in ("imitate", "rl_verify", "evaluate", "distill", "consolidate", "sb3_baseline")] + \
       [f"bench/bench_{n}.py" for n in ("envs", "sudoku", "dsl", "model")]


def _config_class(path: str) -> type:
    import importlib.util

    module = importlib.import_module(f"r3m.train.{path[6:-3]}") if path.startswith("train/") else None
    if module is None:  # bench scripts are files, not a package
        spec = importlib.util.spec_from_file_location(path[6:-3], Path(__file__).resolve().parents[1] / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return getattr(module, "Config", None) or module.Args


@pytest.mark.parametrize("path", HELP)
def test_help_says_in_full_what_the_script_does(path):
    """The description is the config docstring's whole first paragraph (its first line alone stopped
    mid-sentence), says what the script does or measures, and an empty default reads "empty"."""
    cls = _config_class(path)
    text = " ".join(build_parser(cls).format_help().split())
    description = cli.help_description(cls)
    assert description in text and description.endswith("."), description
    assert not description.startswith("Options of")
    assert "(default: '')" not in text and "(default: )" not in text


@pytest.mark.parametrize("path", HELP)
def test_help_quotes_no_measurement(path):
    """A number measured in a run belongs in a result file the README quotes, not in --help, where
    it outlives the defaults it was measured with: the help gives the reason alone."""
    import re

    text = " ".join(build_parser(_config_class(path)).format_help().split())
    assert not re.search(r"\b(measured|probes?)\b|\d+x slower|\d+% of the steps", text, re.I), path


@pytest.mark.parametrize("name", ["evaluate", "distill"])
def test_a_required_option_is_required_in_the_usage(name, capsys):
    import importlib

    cls = importlib.import_module(f"r3m.train.{name}").Config
    usage = build_parser(cls).format_usage()
    assert " --checkpoint CHECKPOINT" in usage and "[--checkpoint" not in usage
    with pytest.raises(SystemExit) as exit_:
        parse_config(cls, [])
    assert exit_.value.code == 2 and "required: --checkpoint" in capsys.readouterr().err


def test_booleans_abbreviations_and_percent_signs(capsys):
    cfg = parse_config(imitate.Config, ["--baseline", "false", "--tensorboard", "--progress", "off"])
    assert cfg.baseline is False and cfg.tensorboard is True and cfg.progress is False
    with pytest.raises(SystemExit):
        parse_config(rl_verify.Config, ["--iter", "3"])  # no abbreviation of --iterations
    assert "unknown option(s) --iter" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(rl_verify.Config, ["--halt", "maybe"])
    assert "expected a boolean" in capsys.readouterr().err
    assert "cosine to 10%" in build_parser(imitate.Config).format_help()  # argparse %-formats help: escaped


def _ckpt(path, spec_family: str | None = "prefix") -> str:
    torch.manual_seed(0)
    model = R3M(R3MConfig(d_model=16, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=2, semantic_slots=0))
    extra = {"specs": [TaskSpec(spec_family, "fill", 10, (1,)).as_dict()]} if spec_family else None
    save_checkpoint(path, model, extra=extra)
    return str(path)


def _mistakes(tmp):
    blocker = tmp / "a_file"
    blocker.write_text("x")
    empty, corrupt = tmp / "empty.pt", tmp / "corrupt.pt"
    empty.write_bytes(b"")
    corrupt.write_bytes(os.urandom(2048))
    existing = tmp / "existing"
    existing.mkdir()
    (existing / "config.json").write_text("{}")
    good = _ckpt(tmp / "good.pt")
    out = ["--out", str(tmp / "new")]
    return [
        ("imitate", ["--families", "nosuch"], "not registered"),
        ("imitate", ["--levels", "9"], "not levels of"),
        ("imitate", ["--steps", "-3"], "--steps must be >= 1"),
        ("imitate", ["--steps", "0"], "--steps must be >= 1"),
        ("imitate", ["--stage", "2", "--halt-steps", "0", "--resume"], "--halt-steps must be >= 1"),
        ("imitate", ["--device", "cuda:7"] if torch.cuda.is_available() else ["--device", "cuda"], "--device"),
        ("imitate", ["--device", "tpu"], "--device"),
        ("imitate", ["--out", str(blocker)], "is a file"),
        ("imitate", ["--out", str(blocker / "sub")], "is a file"),
        ("imitate", ["--out", "/proc/r3m-run"], "cannot write"),
        ("imitate", ["--out", str(existing)], "already holds a run"),
        ("rl_verify", ["--env", "nosuch-v0"], "registered text env"),
        ("rl_verify", ["--init", str(tmp / "missing.pt")], "does not exist"),
        ("rl_verify", ["--init", str(empty)], "is empty"),
        ("rl_verify", ["--init", str(corrupt)], "not a readable checkpoint"),
        ("rl_verify", ["--init", good, "--env", "arithmetic-v0"], "no decoding spec"),
        ("rl_verify", ["--levels", "0", "7"], "has levels"),
        ("rl_verify", ["--device", "cuda:7"] if torch.cuda.is_available() else ["--device", "cuda"], "--device"),
        ("evaluate", ["--checkpoint", str(tmp / "missing.pt")], "does not exist"),
        ("evaluate", ["--checkpoint", str(empty)], "is empty"),
        ("evaluate", ["--checkpoint", str(corrupt)], "not a readable checkpoint"),
        ("evaluate", ["--checkpoint", good, "--envs", "nosuch-v0"], "unknown env id"),
        ("evaluate", ["--checkpoint", good, "--envs", "sudoku-grid-v0"], "not a text env"),
        ("evaluate", ["--checkpoint", good, "--sets", "nosuch"], "not registered"),
        ("evaluate", ["--checkpoint", good, "--levels", "9"], "none is a level"),
        ("imitate", ["--k-train", "0"], "--k-train must be >= 1, got 0"),
        ("imitate", ["--eval-ks", "0"], "--eval-ks needs one or more values >= 1"),
        ("rl_verify", ["--iterations", "-3"], "--iterations must be >= 0, got -3"),
        ("rl_verify", ["--group-size", "1"], "--group-size must be >= 2, got 1"),
        ("evaluate", ["--checkpoint", good, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        ("distill", ["--checkpoint", good, "--env", "arithmetic-v0"], "was trained on prefix, not on arithmetic"),
        ("distill", ["--checkpoint", good, "--env", "prefix-v0", "--steps", "0"], "--steps must be >= 1, got 0"),
        ("sb3_baseline", ["--timesteps", "-5"], "--timesteps must be >= 1, got -5"),
        ("sb3_baseline", ["--levels", "9"], "--levels/--eval-levels must be"),
        ("sb3_baseline", ["--out", str(blocker)], "is a file"),
    ], out


def test_user_mistakes_end_in_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cases, out = _mistakes(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, argv, expected in cases:
        with pytest.raises(SystemExit) as exit_:
            cli.run(SCRIPTS[name].main, SCRIPTS[name].Config, [*argv, *out] if "--out" not in argv else argv)
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert exit_.value.code == 2, (name, argv, err)
        assert len(lines) == 1 and ": error: " in lines[0] and expected in lines[0], (name, argv, err)
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run folder, no runs/


ALL_SCRIPTS = {**SCRIPTS, "distill": None, "consolidate": None}
# a valid non-default value for options whose generic variant (below) the scripts reject
SPECIAL = {"preset": "cpu-small", "lm_preset": "cpu-small", "env": "listops-v0", "advantage": "grpo", "families": ("listops",),
           "stage": "1", "levels": (2,), "eval_levels": (2, 3), "envs": ("listops-v0",), "sets": ("norvig_top95",),
           "plugin": ("r3m.envs",), "eval_ks": (1, 2), "init": "init.pt", "checkpoint": "model.pt", "write_thresholds": (0.5, 0.7),
           "babi": ("stories.txt",), "halt_rule": "stable", "source": "harvest"}


GENERIC = {"consolidate": {"families"}}  # options whose generic variant is the valid one for this script
# per script, a valid non-default value where the script needs its own (consolidate: a checkpoint with a semantic
# memory that reads its families, an existing episodes file)
BY_SCRIPT = {"consolidate": {"checkpoint": "consolidate.pt", "rl_episodes": "episodes.jsonl"}}
ONLY_VALUE = {("sb3_baseline", "family")}  # one registered family has a numeric env: set to its one value


def _variant(script: str, name: str, default, tp):
    """A value other than ``default`` for a field of type ``tp``."""
    import typing

    if name in BY_SCRIPT.get(script, {}):
        return BY_SCRIPT[script][name]
    if name in SPECIAL and SPECIAL[name] != default and name not in GENERIC.get(script, ()):
        return SPECIAL[name]
    if name == "device":
        return "auto" if default == "cpu" else "cpu"
    if typing.get_args(tp) and type(None) in typing.get_args(tp):  # bool | None
        return True
    if typing.get_origin(tp) is typing.Literal:
        return next(a for a in typing.get_args(tp) if a != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default / 2 if default else 0.25
    if isinstance(default, tuple):
        item = typing.get_args(tp)[0]
        return default[:-1] if len(default) > 1 else (*default, *default) if default else (item(1),)
    return (default or "") + "x"


def _flag_value(value) -> list[str]:
    if isinstance(value, tuple):
        return [str(v) for v in value]
    return [str(value).lower() if isinstance(value, bool) else str(value)]


@pytest.mark.parametrize("name", sorted(ALL_SCRIPTS))
def test_every_option_is_set_once_by_a_test_and_reaches_the_config(name, tmp_path, monkeypatch):
    """Each option, set alone on the command line to a non-default value, parses, passes the
    script's validation and lands in the config unchanged (options nothing sets get deleted)."""
    import importlib
    import typing

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = R3M(R3MConfig(d_model=16, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=2, semantic_slots=0))
    specs = [task_spec(fam, (1, 2)).as_dict() for fam in ("arithmetic", "listops", "prefix", "sudoku")]
    for path in ("init.pt", "model.pt"):
        save_checkpoint(tmp_path / path, model, extra={"specs": specs})
    (tmp_path / "stories.txt").write_text("1 Mary moved to the bathroom.\n2 Where is Mary? \tbathroom\t1\n")
    if name == "consolidate":
        from r3m.train import consolidate

        save_checkpoint(tmp_path / "consolidate.pt", consolidate.meta_model(consolidate.Config()))
        (tmp_path / "episodes.jsonl").write_text("")
    base = ["--checkpoint", "model.pt"] if name in ("evaluate", "distill") else []
    cls = importlib.import_module(f"r3m.train.{name}").Config
    hints = typing.get_type_hints(cls)
    rejected = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = default if (name, f.name) in ONLY_VALUE else _variant(name, f.name, default, hints[f.name])
        assert value != default or (name, f.name) in ONLY_VALUE, f.name
        argv = ["--" + f.name.replace("_", "-"), *_flag_value(value)]
        try:
            cfg = parse_config(cls, [*base, *argv] if f.name != "checkpoint" else argv)
        except SystemExit:
            rejected.append(" ".join(argv))
            continue
        assert getattr(cfg, f.name) == value, f.name
    assert not rejected, rejected
