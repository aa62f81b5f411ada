"""scripts/gpu_sudoku.py end to end on the CPU with a tiny budget: train R3M and both dense baselines
in the budget, evaluate on the test split and the external sets, one metrics.json."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_eval_data

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_sudoku", ROOT / "scripts" / "gpu_sudoku.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


TINY = dict(device="cpu", minutes=0.04, preset="cpu-micro", levels=(1,), batch_size=4, k_train=2, segments=2,
            eval_ks=(1, 4), eval_n=2, set_limit=2, threads=1, progress=False)


@needs_eval_data
def test_tiny_budget_run_writes_every_model_on_every_set(tmp_path):
    gpu = load_script()
    cfg = gpu.Config(**TINY, out=str(tmp_path / "run"))
    m = gpu.main(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(saved["sets"]) == {"norvig_top95", "magictour_top1465", "royle17_1000"}
    for by_model in saved["sets"].values():
        assert set(by_model) == {"r3m", "dense_param_matched", "dense_compute_matched"}
        assert all(r["n"] == 2 and 0.0 <= r["accuracy"] <= 1.0 for r in by_model.values())
        assert set(by_model["r3m"]["accuracy_vs_k"]) == {"1", "4"} and "halting" in by_model["r3m"]
    assert set(saved["accuracy_vs_k"]["sudoku"]) == {"1", "4"} and saved["halting"]["sudoku"]["rule"] == "stable"
    assert set(saved["baseline_accuracy"]) == {"sudoku"} and saved["device"] == "cpu"
    # the budget, not the step ceiling, ended each model's training, at about the budget
    for phase, minutes in saved["training_minutes"].items():
        assert saved["fit"][phase]["steps"] < cfg.steps
        assert cfg.minutes <= minutes < cfg.minutes + 0.5, (phase, minutes)
    assert "magictour_top1465" in m["results_table"] and saved["provenance"]["commit"]


def test_the_imitate_configuration_is_the_gpu_recipe():
    gpu = load_script()
    t = gpu.train_config(gpu.Config(device="cpu"))
    assert (t.families, t.levels, t.preset, t.minutes) == (("sudoku",), (1, 2, 3, 4, 5), "gpu-sudoku", 9.0)
    assert (t.segments, t.ema, t.augment, t.tool_fraction, t.halt_rule) == (2, 0.999, True, 0.0, "stable")
    assert t.baseline and t.baseline_lrs == (1e-3,) and t.steps > 100_000  # the budget decides, not the steps
    with pytest.raises(ValueError, match="--minutes must be > 0"):
        gpu.Config(minutes=0)


def test_the_command_line_reports_bad_options_in_one_line():
    proc = subprocess.run([sys.executable, "scripts/gpu_sudoku.py", "--minutes", "-1", "--device", "cpu"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--minutes must be > 0" in proc.stderr and "Traceback" not in proc.stderr
