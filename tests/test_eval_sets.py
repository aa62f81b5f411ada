"""External evaluation sets: the registry, where files are looked up, missing files, sampling."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import gymnasium as gym
import pytest

import r3m.envs
from r3m import envs
from r3m.envs import eval_sets
from r3m.envs.families.sudoku import load_sudoku_csv

SUDOKU_SETS = ["magictour_top1465", "norvig_easy50", "norvig_hardest", "norvig_top95", "royle17_1000"]


@pytest.fixture
def tiny_sets(tmp_path, monkeypatch):
    """R3M_EVAL_DIR at a tmp folder holding one 6-row Sudoku CSV; two sets registered on it."""
    monkeypatch.setenv("R3M_EVAL_DIR", str(tmp_path))
    fam = envs.make_family("sudoku")
    rows = [fam.instance("test", i, difficulty=1 + i % 5) for i in range(6)]
    (tmp_path / "mine").mkdir()
    with open(tmp_path / "mine" / "tiny.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["puzzle", "solution", "n_clues"])
        for inst in rows:
            writer.writerow([inst.data["puzzle"].replace(".", "0"), inst.answer, inst.data["givens"]])
    envs.register_eval_set("test_tiny", "sudoku", "mine/tiny.csv", load_sudoku_csv, description="6 rows")
    envs.register_eval_set("test_tiny3", "sudoku", "mine/tiny.csv",
                           "r3m.envs.families.sudoku:load_sudoku_csv", limit=3)
    envs.register_eval_set("test_absent", "sudoku", "mine/absent.csv", load_sudoku_csv)
    yield rows
    for name in ("test_tiny", "test_tiny3", "test_absent"):
        envs.unregister_eval_set(name)


def test_builtin_sets_registered():
    assert envs.list_eval_sets("sudoku") == SUDOKU_SETS and envs.list_eval_sets("dsl") == []
    assert eval_sets.eval_set("royle17_1000").limit == 1000
    assert eval_sets.eval_set("norvig_top95").limit is None
    assert eval_sets.eval_set("royle17_1000").relpath == "sudoku/royle_sudoku17.csv"


def test_eval_dir_is_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("R3M_EVAL_DIR", str(tmp_path))
    assert envs.eval_dir() == tmp_path
    assert envs.eval_set_path("norvig_top95") == tmp_path / "sudoku" / "norvig_top95.csv"
    monkeypatch.delenv("R3M_EVAL_DIR")
    repo_root = Path(r3m.envs.__file__).resolve().parent.parent
    assert envs.eval_dir() == repo_root.parent / "shared" / "eval"  # the documented default
    assert "/work" not in Path(eval_sets.__file__).read_text()  # derived from the file, not a machine path


def test_missing_file_warns_once_and_returns_none(tiny_sets, caplog):
    with caplog.at_level(logging.WARNING, logger="r3m"):
        assert envs.load_eval_set("test_absent") is None
        assert envs.load_eval_set("test_absent", limit=2) is None
    warnings = [r for r in caplog.records if r.name == "r3m"]
    assert len(warnings) == 1 and "test_absent" in warnings[0].getMessage()
    assert "R3M_EVAL_DIR" in warnings[0].getMessage()


def test_builtin_set_missing_under_an_empty_eval_dir(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("R3M_EVAL_DIR", str(tmp_path))
    monkeypatch.setattr(eval_sets, "_WARNED", set())  # whatever earlier tests reported
    with caplog.at_level(logging.WARNING, logger="r3m"):
        assert all(envs.load_eval_set(name) is None for name in SUDOKU_SETS + SUDOKU_SETS)
    assert len([r for r in caplog.records if r.name == "r3m"]) == len(SUDOKU_SETS)  # one per set
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*set R3M_EVAL_DIR"):
        envs.load_eval_set("norvig_top95", missing="raise")


def test_load_and_sample_deterministically(tiny_sets):
    rows = tiny_sets
    whole = envs.load_eval_set("test_tiny")
    assert [i.prompt for i in whole] == [r.prompt for r in rows] and [i.key for i in whole][:2] == ["tiny:0",
                                                                                                     "tiny:1"]
    assert all(i.family == "sudoku" and i.difficulty == 0 for i in whole)
    a, b = envs.load_eval_set("test_tiny", limit=3, seed=0), envs.load_eval_set("test_tiny", limit=3, seed=0)
    assert a == b and len(a) == 3
    prompts = [r.prompt for r in rows]
    assert [prompts.index(i.prompt) for i in a] == sorted(prompts.index(i.prompt) for i in a)  # file order
    other = [envs.load_eval_set("test_tiny", limit=3, seed=s) for s in range(1, 6)]
    assert any([i.prompt for i in o] != [i.prompt for i in a] for o in other)  # the seed picks the sample
    assert envs.load_eval_set("test_tiny3") == a  # the registered default limit, seed 0
    assert len(envs.load_eval_set("test_tiny3", limit=5)) == 5
    env = gym.make("sudoku-v0").unwrapped
    for inst in a:  # external instances play through the env and its verifier
        env.reset(options={"instance": inst})
        _, reward, *_ = env.step(inst.answer)
        assert reward == 1.0


def test_registry_refuses_bad_entries(tiny_sets):
    with pytest.raises(ValueError, match="already registered"):
        envs.register_eval_set("test_tiny", "sudoku", "mine/tiny.csv", load_sudoku_csv)
    for name, relpath, kwargs, pattern in [
        ("Bad-Name", "x.csv", {}, "must match"), ("test_x", "/abs/x.csv", {}, "relative"),
        ("test_x", "../x.csv", {}, "relative"), ("test_x", "x.csv", {"limit": 0}, "positive int"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            envs.register_eval_set(name, "sudoku", relpath, load_sudoku_csv, **kwargs)
    with pytest.raises(KeyError, match="unknown evaluation set"):
        envs.load_eval_set("test_nope")
    with pytest.raises(ValueError, match="missing"):
        envs.load_eval_set("test_tiny", missing="ignore")
    assert "test_x" not in envs.list_eval_sets()


@pytest.mark.skipif(not envs.eval_set_path("norvig_hardest").exists(),
                    reason="external evaluation sets absent (set R3M_EVAL_DIR)")
def test_real_sets_load():
    hardest = envs.load_eval_set("norvig_hardest")
    assert len(hardest) == 11 and hardest[0].key == "norvig_hardest:0"
    royle = envs.load_eval_set("royle17_1000")
    assert len(royle) == 1000 and royle == envs.load_eval_set("royle17_1000")
    assert all(i.data["givens"] == 17 for i in royle)
