"""Episodes per second for every registered text env, on one core.

A single-answer episode is ``reset()`` (instance generation) then ``step(oracle answer)``
(verification), through ``gymnasium.make`` with its default wrappers. Writes
``bench/results/envs.json`` and prints a markdown table.

    python bench/bench_envs.py            # 2 s per env
    python bench/bench_envs.py --quick    # 0.3 s per env, written to bench/results/quick/
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from r3m import envs  # noqa: E402
from r3m.learn.cli import parse_config  # noqa: E402


@dataclass(frozen=True)
class Args:
    """Episodes per second (reset, then the oracle answer verified) of every registered text env, on one
    core; writes bench/results/envs.json."""

    quick: bool = False
    """smoke run: 0.3 s per env instead of 2 s"""
    out: str = ""
    """where the results JSON goes (empty: bench/results/envs.json, or bench/results/quick/envs.json
    with --quick, which the README's results never read)"""


def episodes_per_second(env_id: str, seconds: float) -> dict:
    env = gym.make(env_id)
    env.reset(seed=0)
    answers = []
    for i in range(64):  # oracle answers, gathered outside the timed loop
        env.reset(seed=i)
        answers.append(env.unwrapped.instance.answer)
    n, correct, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.reset(seed=n % 64)
        _, reward, *_ = env.step(answers[n % 64])
        correct += reward == 1.0
        n += 1
    elapsed = time.perf_counter() - start
    return {"env": env_id, "episodes": n, "episodes_per_s": n / elapsed, "all_correct": correct == n}


def main(args: Args) -> None:
    seconds = 0.3 if args.quick else 2.0
    rows = [episodes_per_second(env_id, seconds) for env_id in sorted(envs.ENV_IDS)]
    out = Path(args.out or ROOT / "bench/results" / ("quick" if args.quick else "") / "envs.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
              "quick": args.quick, "rows": rows}
    out.write_text(json.dumps(result, indent=2))
    print("| env | episodes/s (one core) |\n|---|---|")
    for r in rows:
        print(f"| {r['env']} | {r['episodes_per_s']:,.0f} |")


if __name__ == "__main__":
    main(parse_config(Args))
