"""bench/reproduce.py and bench/report.py: a result is fresh only when its commit is an ancestor of
HEAD, its tree was clean and its recorded configuration is what its command gives at HEAD."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import reproduce  # noqa: E402


def _job(tmp_path, monkeypatch, args=("--seed", "3")):
    monkeypatch.setattr(reproduce, "RESULTS", tmp_path)
    return reproduce.Job("x", "train/imitate.py", tuple(args), "x", "seeds")


def _write(job, commit: str, dirty: bool = False, **config_changes):
    config = {**reproduce.script_config(job), **config_changes, "out": f"results/{job.name}"}
    job.out.mkdir(parents=True, exist_ok=True)
    (job.out / "metrics.json").write_text(json.dumps({"config": config,
                                                      "provenance": {"commit": commit, "dirty": dirty}}))


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def test_fresh_missing_dirty_foreign_commit_and_changed_config(tmp_path, monkeypatch):
    job = _job(tmp_path, monkeypatch)
    assert reproduce.staleness(job) == "missing"
    _write(job, _head())
    assert reproduce.staleness(job) is None
    _write(job, _head(), dirty=True)
    assert "uncommitted" in reproduce.staleness(job)
    _write(job, "0" * 40)
    assert "not an ancestor" in reproduce.staleness(job)
    _write(job, _head(), lr=123.0)  # the command no longer gives the recorded configuration
    assert "lr=123.0" in reproduce.staleness(job)
    _write(job, "")
    assert reproduce.staleness(job) == "no commit recorded"


def test_script_config_parses_the_jobs_command_and_drops_run_only_fields(tmp_path, monkeypatch):
    job = _job(tmp_path, monkeypatch, ("--seed", "3", "--stage", "1"))
    cfg = reproduce.script_config(job)
    assert cfg["seed"] == 3 and cfg["stage"] == "1" and "out" not in cfg and "progress" not in cfg
    assert {j.name for j in reproduce.PLAN} >= {"imitate-default-cpu", "memory-stream-cpu"}
    assert len({j.name for j in reproduce.PLAN}) == len(reproduce.PLAN)
    for j in reproduce.PLAN:  # every planned command parses at HEAD
        reproduce.script_config(j)


def test_report_renders_a_missing_result_as_missing(tmp_path, monkeypatch):
    import report

    job = _job(tmp_path, monkeypatch)
    text = "\n".join(report.imitate_section(job))
    assert "is missing" in text and "python bench/reproduce.py --only x" in text


def test_provenance_names_the_code_the_run_started_from(monkeypatch):
    """A commit or an edit made while a run trains is not credited to the run."""
    from r3m.learn import reporting

    monkeypatch.setattr(reporting, "_CODE_STATE", None)
    monkeypatch.setattr(reporting, "_git", lambda *a: "a" * 40 if a[0] == "rev-parse" else "")
    assert reporting.code_state() == {"commit": "a" * 40, "dirty": False}  # at the start
    monkeypatch.setattr(reporting, "_git", lambda *a: "b" * 40 if a[0] == "rev-parse" else " M x.py")
    prov = reporting.provenance()  # at the end, after a commit and an edit
    assert prov["commit"] == "a" * 40 and prov["dirty"] is False


def test_prune_keeps_the_metrics_and_plots_only(tmp_path):
    for name in ("metrics.json", "a.png", "config.json", "scalars_rl.jsonl"):
        (tmp_path / name).write_text("x")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "rl.pt").write_bytes(b"x")
    reproduce.prune(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "metrics.json"]


def test_each_timed_command_in_the_readme_is_the_command_of_its_result(tmp_path, monkeypatch):
    """The Commands table's times come from results: a row's command gives its result's configuration,
    and a row without a result (or a missing result) says it was not measured."""
    import importlib
    import shlex

    import report
    from r3m.learn.cli import parse_config
    from r3m.learn.run import RESUMABLE, jsonable

    timed = [(commands, name) for _, commands, name in report.COMMANDS if name]
    assert {name for _, name in timed} >= {"imitate-seed0-cpu", "imitate-default-cpu", "memory-stream-cpu"}
    for commands, name in timed:
        job = next(j for j in reproduce.PLAN if j.name == name)
        argv = shlex.split(commands[0])
        assert len(commands) == 1 and argv[:2] == ["python", job.script], (commands, name)
        cfg = parse_config(importlib.import_module("r3m.train." + Path(job.script).stem).Config,
                           [*argv[2:], "--out", f"results/{job.name}"])
        assert {k: v for k, v in jsonable(cfg).items() if k not in (*RESUMABLE, "out")} == reproduce.script_config(job)
    _job(tmp_path, monkeypatch)  # results/ is tmp_path from here on
    assert report.measured_time(None) == "not measured at this commit"
    assert report.measured_time("imitate-seed0-cpu") == "not measured at this commit"  # RESULTS is empty here
    (tmp_path / "imitate-seed0-cpu").mkdir()
    (tmp_path / "imitate-seed0-cpu" / "metrics.json").write_text(json.dumps(
        {"fit": {"stage1": {"seconds": 90.0}}, "provenance": {"commit": "a" * 40, "machine": {"cores": 2, "threads": 1}}}))
    assert report.measured_time("imitate-seed0-cpu").startswith("1.5 min of training on 2 CPU cores, 1 thread(s)")
