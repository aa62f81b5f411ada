"""r3m.learn.reporting's console tables: percentages as the README prints them, the exit-criterion
verdict, the streamed-memory measurements, and a headline column that says what it measures."""

from __future__ import annotations

from r3m.learn import signals
from r3m.learn.reporting import eval_table, imitation_table, pct

CURVE = {1: 0.12, 2: 0.44, 4: 0.973, 8: 1.0, 16: 1.0}
LONGER = {1: 0.0, 2: 0.02, 4: 0.3, 8: 0.78, 16: 0.79}
MEMORY = {"accuracy": 0.62, "accuracy_longer": 0.41, "chance": 0.2, "no_memory": 0.21, "no_memory_trained": 0.19,
          "writes_per_sample": 3.5, "write_rate_fact": 0.8, "write_rate_distractor": 0.05,
          "write_sweep": [{"threshold": 0.5, "writes_per_sample": 3.5, "accuracy": 0.62},
                          {"threshold": 0.99, "writes_per_sample": 1.25, "accuracy": 0.4}]}


def test_the_quick_runs_table_prints_percentages_and_its_exit_verdict():
    metrics = {"accuracy_vs_k": {"prefix": CURVE}, "accuracy_vs_k_harder": {"prefix": LONGER},
               "exit_criterion": {"prefix": signals.exit_criterion(CURVE, LONGER)}}
    table = imitation_table(metrics, (1, 2, 4, 8, 16))
    assert "| prefix | 12.0% | 44.0% | 97.3% | 100.0% | 100.0% |" in table and "0.973" not in table
    assert ("exit criterion (prefix): k_helps yes, no_overthinking yes, longer no (K=1 12.0%, K=8 100.0%, "
            "K=16 100.0%, longer K=16 79.0%) -> not passed") in table
    partial = {"accuracy_vs_k": {"prefix": {4: 0.5}}, "exit_criterion": {"prefix": signals.exit_criterion({4: 0.5}, None)}}
    assert "exit criterion (prefix): not measured (it reads K=1, K=8, K=16;" in imitation_table(partial, (4,))


def test_the_streamed_memory_run_prints_its_memory_results():
    metrics = {"accuracy_vs_k": {"memory": {4: 0.62}}, "memory": {"memory": MEMORY}}
    table = imitation_table(metrics, (4,))
    assert "| memory | 62.0% | 41.0% | 20.0% | 21.0% | 19.0% | 3.50 | 80.0% | 5.0% |" in table
    for column in ("chance", "reads off", "trained without memory", "writes / episode", "write rate: facts",
                   "write rate: distractors"):
        assert column in table, column
    assert "write threshold sweep (memory): 0.5: 3.50 writes, 62.0%, 0.99: 1.25 writes, 40.0%" in table


def test_evaluate_names_the_k_of_its_headline_accuracy():
    results = {"prefix": {"n": 10, "accuracy_vs_k": {1: 0.1, 8: 0.9}, "accuracy": 0.9, "tool_call_rate": 0.0}}
    table = eval_table(results, "K=8")
    assert table.splitlines()[0] == "| set | n | K=1 | K=8 | accuracy (K=8) | tool calls |"
    assert table.splitlines()[2] == "| prefix | 10 | 10.0% | 90.0% | 90.0% | 0.0% |"
    assert pct(None) == "-" and pct(0.5) == "50.0%"
