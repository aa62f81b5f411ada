"""Episodes per second for every registered text env, on one core.

A single-answer episode is ``reset()`` (instance generation) then ``step(oracle answer)``
(verification), through ``gymnasium.make`` with its default wrappers. Writes
``bench/results/envs.json`` and prints a markdown table.

    python bench/bench_envs.py            # 2 s per env
    python bench/bench_envs.py --quick    # 0.3 s per env
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import gymnasium as gym

from r3m import envs

OUT = Path(__file__).resolve().parent / "results" / "envs.json"


def episodes_per_second(env_id: str, seconds: float) -> dict:
    env = gym.make(env_id)
    env.reset(seed=0)
    answers = []
    for i in range(64):  # oracle answers, gathered outside the timed loop
        env.reset(seed=i)
        answers.append(env.unwrapped._instance.answer)
    n, correct, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.reset(seed=n % 64)
        _, reward, *_ = env.step(answers[n % 64])
        correct += reward == 1.0
        n += 1
    elapsed = time.perf_counter() - start
    return {"env": env_id, "episodes": n, "episodes_per_s": n / elapsed, "all_correct": correct == n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else 2.0
    rows = [episodes_per_second(env_id, seconds) for env_id in sorted(envs.ENV_IDS)]
    OUT.parent.mkdir(exist_ok=True)
    result = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
              "quick": args.quick, "rows": rows}
    OUT.write_text(json.dumps(result, indent=2))
    print("| env | episodes/s (one core) |\n|---|---|")
    for r in rows:
        print(f"| {r['env']} | {r['episodes_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
