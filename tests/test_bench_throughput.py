"""bench/train_throughput.py's K sweep on a tiny model: FLOPs counted, rates and a profile written."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "bench" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_k_sweep_counts_flops_and_profiles(tmp_path):
    bench = load_bench()
    out = tmp_path / "tp.json"
    args = bench.Args(views=("cells",), preset="cpu-micro", batch=4, steps=2, rounds=1, ks=(1, 4), out=str(out))
    result = bench.main(args)
    on_disk = json.loads(out.read_text())
    sweep = on_disk["k_sweep"]
    assert set(sweep["by_k"]) == {"1", "4"} and sweep["view"] == "cells" and sweep["bf16_peak_tflops"] is None
    one, four = sweep["by_k"]["1"], sweep["by_k"]["4"]
    assert 0 < one["flops_per_sample"] < four["flops_per_sample"]  # more refinement steps, more FLOPs
    for r in (one, four):
        assert r["samples_per_s"] > 0 and r["peak_fraction"] is None  # no bf16 peak on the CPU
        assert abs(r["tflops"] - r["flops_per_sample"] * r["samples_per_s"] / 1e12) < 1e-12
        assert r["tokens_per_s"] == r["samples_per_s"] * result["views"]["cells"]["positions"]
    ops = sweep["profile"]["ops"]
    assert sweep["profile"]["K"] == 4 and ops and all(o["self_ms"] >= 0 for o in ops)
    assert on_disk["card"] and on_disk["autocast"] is None and on_disk["compile"] is False
