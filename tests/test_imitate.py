"""train/imitate.py: in-process smoke runs, resume, determinism, CLI and metrics keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r3m.learn.cli import UsageError, parse_config
from r3m.train import imitate

TINY = dict(families=("arithmetic",), levels=(1,), steps=12, halt_steps=4, batch_size=8, eval_n=3,
            eval_ks=(1, 2), k_train=2, ckpt_every=5, log_every=4, tensorboard=False, progress=False, threads=1,
            baseline_lrs=(2e-3,))


def run(tmp_path, name, **kw):
    cfg = imitate.Config(**{**TINY, "out": str(tmp_path / name), **kw})
    return imitate.main(cfg)


def _strip(metrics: dict) -> dict:
    """Metrics that must be identical between equivalent runs (timings and paths differ)."""
    m = json.loads(json.dumps(metrics, default=str))
    for key in ("config", "provenance", "results_table", "wall_seconds"):  # the table shows wall-time speedups
        m.pop(key, None)
    for phase in m.get("fit", {}).values():
        phase.pop("seconds", None)
    for h in m.get("halting", {}).values():
        for key in ("wall_halt_s", "wall_fixed_s", "speedup"):
            h.pop(key, None)
    return m


def test_stage_1_2_writes_metrics_plots_and_checkpoints(tmp_path):
    metrics = run(tmp_path, "a", tensorboard=True)
    out = tmp_path / "a"
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy_vs_k", "baseline_accuracy", "halting", "writes_per_sample", "grad_norm", "nan_steps",
                "warnings", "results_table"):
        assert key in saved, key
    assert set(saved["accuracy_vs_k"]["arithmetic"]) == {"1", "2"}
    assert all(0.0 <= a <= 1.0 for a in metrics["accuracy_vs_k"]["arithmetic"].values())
    assert set(saved["halting"]["arithmetic"]) >= {"accuracy", "avg_steps", "fixed_k", "fixed_k_accuracy"}
    assert set(saved["grad_norm"]) == {"mean", "max"} and saved["grad_norm"]["max"] > 0
    for f in ("accuracy_vs_k.png", "halting_steps.png", "ckpt/stage1.pt", "ckpt/stage2.pt",
              "ckpt/dense_param_matched_lr0.002.pt", "ckpt/dense_compute_matched_lr0.002.pt"):
        assert (out / f).exists(), f
    assert any((out / "tb").rglob("events.out.tfevents.*"))
    assert {w["name"] for w in saved["warnings"]} <= {"no_k_helps", "overthinking", "halting_collapse",
                                                      "write_spam", "nan", "grad_spikes", "loss_blowup"}


def test_stage1_with_the_stable_rule_reports_halting_without_stage2(tmp_path):
    """--halt-rule stable needs no trained head: a stage-1 run measures halting against fixed K."""
    saved = run(tmp_path, "s", stage="1", baseline=False, halt_rule="stable", halt_patience=1, eval_ks=(1, 4))
    h = saved["halting"]["arithmetic"]
    assert h["rule"] == "stable" and h["patience"] == 1 and h["fixed_k"] == 4
    assert 2.0 <= h["avg_steps"] <= 4.0 and "stage2" not in saved["fit"]
    assert (tmp_path / "s" / "halting_steps.png").exists()
    with pytest.raises(ValueError, match="--halt-rule must be one of learned, stable"):
        imitate.Config(halt_rule="never")


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    full = run(tmp_path, "full")
    assert run(tmp_path, "cut", stop_after=7) == {"interrupted": True, "run_dir": str(tmp_path / "cut")}
    assert run(tmp_path, "cut", stop_after=10, resume=True)["interrupted"]  # killed again, in the baseline
    resumed = run(tmp_path, "cut", resume=True)
    assert _strip(resumed) == _strip(full)


def test_same_seed_same_metrics_and_other_seed_differs(tmp_path):
    a, b = run(tmp_path, "s1", stage="1", baseline=False), run(tmp_path, "s2", stage="1", baseline=False)
    assert _strip(a) == _strip(b)
    c = run(tmp_path, "s3", stage="1", baseline=False, seed=1)
    assert c["fit"]["stage1"]["final_loss"] != a["fit"]["stage1"]["final_loss"]


def test_existing_run_dir_needs_resume(tmp_path):
    run(tmp_path, "x", stage="1", baseline=False, steps=2)
    with pytest.raises(UsageError, match="--resume"):
        run(tmp_path, "x", stage="1", baseline=False, steps=2)
    with pytest.raises(ValueError, match="different config"):
        run(tmp_path, "x", stage="1", baseline=False, steps=3, resume=True)


def test_stage0_reports_generation_statistics(tmp_path):
    metrics = run(tmp_path, "lm", stage="0", lm_steps=6, lm_preset="cpu-tiny", lm_corpus=200)
    s0 = metrics["stage0"]
    assert set(s0["generation"]) >= {"immediate_eos_rate", "distinct_1", "distinct_2", "longest_repeat_run"}
    assert isinstance(s0["non_degenerate"], bool) and s0["samples"] and 0.0 <= s0["instruct_accuracy"] <= 1.0


def test_cli_rejects_unknown_and_bad_flags(capsys):
    with pytest.raises(SystemExit):
        parse_config(imitate.Config, ["--stepz", "3"])
    assert "unknown option(s) --stepz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(imitate.Config, ["--stage", "7"])
    assert "--stage" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(imitate.Config, ["--mem-slots", "-1"])
    assert "--mem-slots" in capsys.readouterr().err
    cfg = parse_config(imitate.Config, ["--families", "listops", "sudoku", "--steps", "5", "--baseline", "false"])
    assert cfg.families == ("listops", "sudoku") and cfg.steps == 5 and cfg.baseline is False


def test_torchrun_two_processes(tmp_path):
    """The same script under torchrun (gloo on the CPU): gradients averaged, rank 0 writes."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "train/imitate.py",
           "--stage", "1", "--families", "arithmetic", "--levels", "1", "--steps", "4", "--batch-size", "4",
           "--eval-n", "2", "--eval-ks", "1", "--k-train", "2", "--baseline", "false", "--out", str(out),
           "--progress", "false", "--tensorboard", "false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["fit"]["stage1"]["steps"] == 4


def test_streamed_memory_run_reports_ablations_writes_and_sweep(tmp_path):
    m = run(tmp_path, "mem", families=("memory",), levels=(1,), eval_levels=(1, 4), stream=True, distractors=0.5,
            batch_size=4, stage="1", write_thresholds=(0.5, 0.999), mem_slots=6)
    assert imitate.r3m_config(imitate.Config(mem_slots=6), []).mem_slots == 6
    mem = m["memory"]["memory"]
    for key in ("accuracy", "accuracy_by_level", "accuracy_longer", "chance", "writes_per_sample",
                "write_rate_fact", "write_rate_distractor", "no_memory", "no_memory_trained", "write_sweep",
                "valid_answers", "no_memory_valid_answers", "write_rate_support", "write_rate_support_by_level"):
        assert key in mem, key
    # FIFO writes every turn, the supporting facts included (a gate could leave them out)
    assert mem["write_rate_support"] == 1.0 and set(mem["write_rate_support_by_level"]) == {1, 4}
    mass = mem["read_support_mass"]
    assert set(mass["by_level"]) == {1, 4} and 0.0 <= mass["mass"] <= 1.0 and 0.0 < mass["uniform"] < 1.0
    # the words view answers from the closed set of places: with reads off too, every answer is a place
    assert mem["valid_answers"] == 1.0 and mem["no_memory_valid_answers"] == 1.0
    assert set(mem["accuracy_by_level"]) == {1, 4} and 0.0 < mem["chance"] < 1.0
    assert [s["threshold"] for s in mem["write_sweep"]] == [0.5, 0.999]
    # a higher threshold can only write less
    assert mem["write_sweep"][1]["writes_per_sample"] <= mem["write_sweep"][0]["writes_per_sample"]
    assert "stage1_no_memory" in m["fit"] and (tmp_path / "mem" / "accuracy_vs_writes.png").exists()
