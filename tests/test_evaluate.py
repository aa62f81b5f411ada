"""train/evaluate.py on tiny checkpoints saved in the test (R3M with specs, dense without)."""

import json

import pytest
import torch

from conftest import needs_eval_data
from r3m import tools
from r3m.learn.cli import parse_config
from r3m.learn.data import TaskSpec
from r3m.train import evaluate
from r3m.train.evaluate import Config, main
from r3m_agent import DenseConfig, DenseTransformer, R3M, R3MConfig, save_checkpoint

SUDOKU_SPEC = TaskSpec("sudoku", "fill", 82, (1,))
TINY = R3MConfig(d_model=32, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=4, semantic_slots=8, K=4,
                 tool_names=tuple(tools.list_tools()))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    r3m = R3M(TINY)
    save_checkpoint(d / "r3m.pt", r3m, step=7, extra={"specs": [SUDOKU_SPEC.as_dict()], "phase": "stage1"})
    # the same model, but its tool head always chooses sudoku_solver
    with torch.no_grad():
        r3m.tool_head.weight.zero_()
        r3m.tool_head.bias.fill_(-20.0)
        r3m.tool_head.bias[1 + TINY.tool_names.index("sudoku_solver")] = 20.0
    save_checkpoint(d / "caller.pt", r3m, extra={"specs": [SUDOKU_SPEC.as_dict()]})
    save_checkpoint(d / "dense.pt", DenseTransformer(DenseConfig(d_model=32, n_heads=2, n_layers=1)))
    (d / "junk.pt").write_bytes(b"not a checkpoint")
    return d


def run(tmp_path, **kw):
    base = dict(n=2, levels=(1,), out=str(tmp_path / "out"), tensorboard=False, device="cpu")
    return main(Config(**{**base, **kw}))


def test_k_values_and_halting_give_imitate_keys(ckpts, tmp_path):
    m = run(tmp_path, checkpoint=str(ckpts / "r3m.pt"), k=(1, 3), halt=True)
    assert set(m["accuracy_vs_k"]) == {"sudoku"} and set(m["accuracy_vs_k"]["sudoku"]) == {1, 3}
    assert all(0.0 <= a <= 1.0 for a in m["accuracy_vs_k"]["sudoku"].values())
    h = m["halting"]["sudoku"]
    assert {"accuracy", "avg_steps", "fixed_k", "fixed_k_accuracy"} <= set(h)
    assert h["fixed_k"] == 3 and 1.0 <= h["avg_steps"] <= 3.0  # halting is capped at the largest K
    assert m["sets"] == {} and m["specs"]["sudoku"]["width"] == 82
    assert m["notes"] == [evaluate.halting_note({"extra": {"phase": "stage1"}})]  # halting never trained
    assert "before stage 2 trained the halting head" in m["results_table"]
    assert "| accuracy (halting, K<=3) |" in m["results_table"] and "%" in m["results_table"]
    assert m["writes_per_sample"] >= 0 and m["tool_call_rate"] == 0.0  # tools off by default
    assert m["phase"] == "stage1" and m["step"] == 7
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk["accuracy_vs_k"]["sudoku"].keys() == {"1", "3"}
    assert on_disk["halting"]["sudoku"]["fixed_k"] == 3
    assert (tmp_path / "out" / "accuracy_vs_k.png").exists()


def test_halting_of_a_stage2_checkpoint_needs_no_note(ckpts, tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "halt.pt", R3M(TINY), extra={"specs": [SUDOKU_SPEC.as_dict()], "phase": "stage2"})
    m = run(tmp_path, checkpoint=str(tmp_path / "halt.pt"), k=(2,), halt=True)
    assert m["notes"] == [] and "halting" in m
    assert "unknown" in evaluate.halting_note({"extra": {"rl": {}}})  # an RL checkpoint records no phase


def test_the_stable_rule_halts_without_a_trained_head(ckpts, tmp_path):
    """--halt-rule stable: rows stop when their answer settles; no note about an untrained head."""
    m = run(tmp_path, checkpoint=str(ckpts / "r3m.pt"), k=(1, 6), halt=True, halt_rule="stable", halt_patience=1)
    h = m["halting"]["sudoku"]
    assert h["rule"] == "stable" and h["patience"] == 1 and h["fixed_k"] == 6
    assert 2.0 <= h["avg_steps"] <= 6.0  # an answer is seen twice before it counts as settled
    assert m["notes"] == [] and "| accuracy (halting (stable, patience 1), K<=6) |" in m["results_table"]
    with pytest.raises(ValueError, match="--halt-rule must be one of learned, stable"):
        Config(checkpoint=str(ckpts / "r3m.pt"), halt_rule="fixed")
    with pytest.raises(ValueError, match="--halt-patience must be >= 1, got 0"):
        Config(checkpoint=str(ckpts / "r3m.pt"), halt_patience=0)


def test_a_missing_evaluation_set_is_skipped_with_a_note(ckpts, tmp_path, monkeypatch):
    """The README's command (--sets norvig_top95) runs without the external sets, as every script does."""
    monkeypatch.setenv("R3M_EVAL_DIR", str(tmp_path / "no_sets_here"))
    m = run(tmp_path, checkpoint=str(ckpts / "r3m.pt"), k=(1,), sets=("norvig_top95",))
    assert m["sets"] == {} and set(m["accuracy"]) == {"sudoku"}
    assert any(n.startswith("--sets norvig_top95: skipped, its file is missing") for n in m["notes"])
    with pytest.raises(ValueError, match="nothing to evaluate: every --sets file is missing"):
        run(tmp_path, checkpoint=str(ckpts / "r3m.pt"), n=0, sets=("norvig_top95",), out=str(tmp_path / "none"))
    assert not (tmp_path / "none").exists()


def test_default_levels_are_training_levels_plus_next(ckpts, tmp_path):
    m = run(tmp_path, checkpoint=str(ckpts / "r3m.pt"), k=(1,), levels=())
    assert set(m["accuracy_vs_k_by_level"]["sudoku"][1]) == {1, 2}


@needs_eval_data
def test_csv_subset_with_tools(ckpts, tmp_path):
    m = run(tmp_path, checkpoint=str(ckpts / "r3m.pt"), n=0, k=(2,), tools=True,
            sets=("norvig_top95",), set_limit=3)
    res = m["sets"]["norvig_top95"]
    assert res["n"] == 3 and res["accuracy"] == 0.0  # untrained: runs, scores nothing
    assert set(res["accuracy_vs_k"]) == {2}
    assert {"accuracy", "avg_steps", "writes_per_sample", "tool_call_rate", "malformed_rate"} <= set(res)
    assert m["tools"]["norvig_top95"]["enabled"] is True and m["accuracy_vs_k"] == {}


@needs_eval_data
def test_tools_flag_reaches_the_env(ckpts, tmp_path):
    kw = dict(checkpoint=str(ckpts / "caller.pt"), k=(1,), sets=("norvig_easy50",), set_limit=2)
    on = run(tmp_path, tools=True, **kw)
    assert on["tool_call_rate"] == 1.0 and on["tools"]["sudoku"]["call_rate"] == 1.0
    off = run(tmp_path, tools=False, **kw)
    assert off["tool_call_rate"] == 0.0  # the tool head is masked to "answer"


@needs_eval_data
def test_dense_checkpoint_without_specs(ckpts, tmp_path):
    m = run(tmp_path, checkpoint=str(ckpts / "dense.pt"), envs=("sudoku-v0",), k=(1, 2), halt=True,
            sets=("norvig_easy50",), set_limit=2)
    assert "accuracy_vs_k" not in m and "halting" not in m
    assert set(m["baseline_accuracy"]) == {"sudoku"}
    assert m["accuracy"]["sudoku"] == m["baseline_accuracy"]["sudoku"]
    # a model built without the family's cell view reads its characters
    assert m["specs"]["sudoku"] == {"family": "sudoku", "mode": "fill", "width": 82,
                                    "levels": [1, 2, 3, 4, 5], "env": {}, "view": "chars",
                                    "train_env": {}}
    assert sum("no decoding spec" in n for n in m["notes"]) == 1  # env and CSV share the derived spec
    assert any("--k is ignored" in n for n in m["notes"])
    assert m["sets"]["norvig_easy50"]["n"] == 2 and "accuracy_vs_k" not in m["sets"]["norvig_easy50"]


@pytest.mark.parametrize("kw, err, match", [
    (dict(checkpoint="/nonexistent/x.pt"), ValueError, "does not exist"),
    (dict(checkpoint="junk.pt"), ValueError, "not a readable checkpoint"),
    (dict(checkpoint="r3m.pt", envs=("nope-v0",)), ValueError, "unknown env id"),
    (dict(checkpoint="r3m.pt", envs=("sudoku-grid-v0",)), ValueError, "not a text env"),
    pytest.param(dict(checkpoint="r3m.pt", sets=("no_such_set",)), ValueError, "norvig_top95",
                 marks=needs_eval_data),
    (dict(checkpoint="r3m.pt", levels=(9,)), ValueError, "none is a level of sudoku"),
    (dict(checkpoint="dense.pt"), ValueError, "nothing to evaluate"),
])
def test_clear_errors(ckpts, tmp_path, kw, err, match):
    kw["checkpoint"] = kw["checkpoint"] if kw["checkpoint"].startswith("/") else str(ckpts / kw["checkpoint"])
    with pytest.raises(err, match=match):
        run(tmp_path, **kw)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_config_validation_and_cli():
    with pytest.raises(ValueError, match="--checkpoint is required"):
        Config()
    with pytest.raises(ValueError, match="--k"):
        Config(checkpoint="x", k=(0,))
    argv = ["--checkpoint", "x.pt", "--k", "1", "4", "--sets", "norvig_top95", "--tools", "on"]
    cfg = parse_config(Config, argv)
    assert cfg.k == (1, 4) and cfg.sets == ("norvig_top95",) and cfg.tools is True
    with pytest.raises(SystemExit):
        parse_config(Config, ["--checkpoint", "x.pt", "--kk", "1"])


def test_babi_files_are_streamed_like_training_and_scored_by_task(tmp_path):
    """Stories the family exports in bAbI's format, played through --babi, give the accuracy the env
    gives on the same instances (streamed, one sentence per turn, as the checkpoint trained)."""
    from r3m import envs
    from r3m.envs.families.memory import export_babi
    from r3m.learn.data import task_spec
    from r3m.learn.evaluation import evaluate_instances
    from r3m.learn.io import with_views
    from r3m.learn.policy import Policy
    from r3m_agent import R3M, R3MConfig

    fam = envs.make_family("memory")
    insts = [fam.instance("test", i, level) for level in (1, 2, 3) for i in range(4)]
    path = tmp_path / "stories.txt"
    path.write_text("\n".join(export_babi(insts)) + "\n")
    spec = task_spec("memory", (1, 2, 3), stream=True)
    torch.manual_seed(0)
    model = R3M(with_views(R3MConfig(d_model=16, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=8,
                                     semantic_slots=0, K=2), [spec]))
    save_checkpoint(tmp_path / "m.pt", model, extra={"specs": [spec.as_dict()], "phase": "stage1"})
    m = run(tmp_path, checkpoint=str(tmp_path / "m.pt"), n=0, k=(2,), babi=(str(path),))
    assert set(m["babi"]) == {"1", "2", "3"} and all(g["n"] == 4 for g in m["babi"].values())
    with torch.no_grad():
        direct = evaluate_instances(Policy(model.eval(), spec, K=2), "memory-v0", insts, env_kwargs={"stream": True})
    by_task = {str(t): sum(e.correct for e, i in zip(direct.episodes, insts) if i.data["task"] == t) / 4
               for t in (1, 2, 3)}
    assert {t: g["accuracy"] for t, g in m["babi"].items()} == by_task
    assert all(len(e.turns) == i.prompt.count("\n") + 1 for e, i in zip(direct.episodes, insts))  # streamed
