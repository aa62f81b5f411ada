"""Faults during training: a tool that raises inside a rollout, and runs killed with SIGKILL at a
random point that resume to the same final metrics (``pytest -k resume``)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from r3m import tools
from r3m.learn.data import TaskSpec
from r3m.learn.policy import Policy
from r3m.learn.rollout import make_vec, run_episodes
from r3m_agent import R3M, R3MConfig

ROOT = Path(__file__).resolve().parents[1]


def explode(args: str, budget: int) -> tools.ToolResult:
    raise RuntimeError(f"boom on {args!r}")


def test_a_tool_that_raises_is_an_error_result_not_a_crashed_rollout():
    if "explode" not in tools.list_tools():
        tools.register_tool("explode", explode, budget=10)
    torch.manual_seed(0)
    model = R3M(R3MConfig(d_model=16, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=2, semantic_slots=0,
                          K=1, tool_names=tuple(tools.list_tools()))).eval()
    with torch.no_grad():
        model.tool_head.bias[1 + list(model.cfg.tool_names).index("explode")] += 50.0  # always call it
    vec = make_vec("arithmetic-v0", 3, call_budget=2)
    try:
        with torch.no_grad():
            episodes = run_episodes(Policy(model, TaskSpec("arithmetic", "fill", 12, (1,))), vec, [0, 1, 2], {"split": "test", "difficulty": 1})
    finally:
        vec.close()
    for ep in episodes:
        assert ep.truncated and ep.reward == 0.0 and ep.tool_calls == 3  # past the budget of 2
        assert "error: explode failed: RuntimeError: boom" in ep.turns[-1].observation


# -- kill -9 and resume ------------------------------------------------------------------------------
def _strip(metrics: dict) -> dict:
    """What must be equal between an uninterrupted run and a killed-and-resumed one."""
    m = json.loads(json.dumps(metrics, default=str))
    for key in ("config", "provenance", "seconds", "wall_seconds", "results_table"):
        m.pop(key, None)
    for h in m.get("halting", {}).values():
        for key in ("wall_halt_s", "wall_fixed_s", "speedup"):
            h.pop(key, None)
    for phase in m.get("fit", {}).values():
        phase.pop("seconds", None)
    for h in m.get("history", []):
        h.pop("rl/seconds", None)
    (m.get("distill") or {}).pop("seconds", None)
    return m


def _kill_and_resume(script: str, argv: list[str], out: Path, seed: int) -> dict:
    """Run ``script`` uninterrupted, then again killed by SIGKILL at a random time within its
    measured duration, then resumed; returns (uninterrupted, resumed) metrics."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, script, *argv, "--progress", "false", "--tensorboard", "false", "--threads", "1"]
    t0 = time.time()
    subprocess.run([*cmd, "--out", str(out / "full")], check=True, cwd=ROOT, env=env, capture_output=True,
                   timeout=600)
    duration = time.time() - t0
    delay = random.Random(seed).uniform(0.35, 0.9) * duration  # past start-up, before the end
    proc = subprocess.Popen([*cmd, "--out", str(out / "cut")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_anyway = (out / "cut" / "metrics.json").exists()
    subprocess.run([*cmd, "--out", str(out / "cut"), "--resume"], check=True, cwd=ROOT, env=env,
                   capture_output=True, timeout=600)
    full = json.loads((out / "full" / "metrics.json").read_text())
    resumed = json.loads((out / "cut" / "metrics.json").read_text())
    assert not finished_anyway or proc.returncode != -signal.SIGKILL  # the kill landed mid-run
    return full, resumed


def test_imitate_resumes_after_sigkill_to_the_same_metrics(tmp_path):
    argv = ["--families", "arithmetic", "--levels", "1", "--steps", "40", "--halt-steps", "10", "--batch-size", "8",
            "--eval-n", "3", "--eval-ks", "1", "2", "--k-train", "2", "--ckpt-every", "5"]
    full, resumed = _kill_and_resume("train/imitate.py", argv, tmp_path, seed=11)
    assert _strip(resumed) == _strip(full)


def test_rl_verify_resumes_after_sigkill_to_the_same_metrics(tmp_path):
    argv = ["--env", "arithmetic-v0", "--levels", "1", "--k", "1", "--warm-steps", "12", "--warm-batch", "8",
            "--iterations", "6", "--groups", "2", "--group-size", "2", "--eval-n", "3",
            "--distill-n", "8", "--distill-steps", "4", "--baselines", "false", "--ckpt-every", "1"]
    full, resumed = _kill_and_resume("train/rl_verify.py", argv, tmp_path, seed=12)
    assert _strip(resumed) == _strip(full)
