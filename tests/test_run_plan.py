"""The plan end to end (Stage 0 to 4 at toy budgets, killed and resumed), consolidation from a
checkpoint, the stages' verdicts, and Stage 3's verified rollouts in the replay buffer."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from r3m.envs.text_env import TextTaskEnv
from r3m.train import consolidate, run_plan

from r3m.learn import plan
from r3m.learn.replay import ReplayBuffer, rl_examples, rl_records, save_rl_episodes
from r3m.learn.rollout import Episode, Turn
from r3m.learn.run import Run
from r3m_agent import R3M, save_checkpoint
from r3m_agent.config import use_result_choice

TOY = run_plan.Budget("cpu-micro", ("memory", "arithmetic"), (1,), lm_steps=4, lm_corpus=20, steps=6, halt_steps=3,
                      k_train=2, eval_ks=(1, 8, 16), eval_n=2, rl_iterations=2, rl_iterations_after=1, rl_groups=2,
                      distill_steps=2, distill_minutes=0.0, task_steps=3, consolidate_steps=2, consolidate_eval_n=2,
                      log_every=1)


def test_tiny_plan_is_killed_resumed_and_writes_a_complete_report(tmp_path, monkeypatch):
    monkeypatch.setitem(run_plan.BUDGETS, "quick", TOY)
    base = dict(quick=True, out=str(tmp_path / "p"), tensorboard=False, progress=False)
    cut = run_plan.main(run_plan.Config(**base, stop_after=3))  # stage 0 has 4 steps: killed inside it
    assert cut["interrupted"] and cut["stage"] == "stage0"
    assert json.loads((tmp_path / "p" / "plan.json").read_text())["runs"]["stage0"]["done"] is False
    metrics = run_plan.main(run_plan.Config(**base, resume=True))
    root = tmp_path / "p"
    saved = json.loads((root / "plan.json").read_text())
    assert list(saved["stages"]) == ["0", "1", "2", "3", "4"]
    for key, stage in saved["stages"].items():
        assert stage["exit_criterion"] and stage["measured"] and stage["run_dir"], key
        assert stage["passed"] in (True, False, None) and (stage["passed"] is None) == (not stage["measurable"]), key
    # a few steps per stage learn nothing: Stage 0's and consolidation's criteria cannot be judged
    for key in ("0", "4"):
        assert saved["stages"][key]["measurable"] is False and saved["stages"][key]["passed"] is None, key
    assert all(r["done"] for r in saved["runs"].values())
    report = (root / "report.md").read_text()
    for stage, figs in metrics["figures"].items():
        for name, caption in figs:
            assert (root / name).stat().st_size > 0 and f"]({name})" in report, name
    assert {s: len(f) for s, f in metrics["figures"].items()} == {s: len(f) for s, f in run_plan.FIGURES.items()}
    assert report.count("| ") > 5 and "not measurable" in report and "## Warnings" in report
    assert {"stage1", "stage2"} <= set(plan.loss_curves(root / "imitate"))  # the loss figures have data
    assert {"task1_memory", "consolidation_after_task1"} <= set(plan.loss_curves(root / "consolidate"))
    assert (root / "rl" / "episodes.jsonl").exists()  # Stage 3's rollouts, offered to Stage 4's buffer
    c = json.loads((root / "consolidate" / "metrics.json").read_text())
    assert c["start"].endswith("stage3.pt") and set(c["replay"]["sources"]) <= {"imitation", "stream", "rl"}
    assert json.loads((root / "metrics.json").read_text())["results_table"] == plan.table(saved["stages"])


def test_plan_options_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="two budgets"):
        run_plan.Config(quick=True, gpu=True)
    with pytest.raises(ValueError, match="--device cuda"):
        run_plan.Config(gpu=True)
    with pytest.raises(ValueError, match="not among the plan's"):
        run_plan.Config(quick=True, rl_env="sudoku-v0")  # Stage 1 never trains sudoku's decoding


# -- consolidation from a checkpoint ---------------------------------------------------------------
def _checkpoint(tmp_path, cfg: consolidate.Config, **changes) -> str:
    torch.manual_seed(1)
    model = R3M(dataclasses.replace(consolidate.model_config(cfg), **changes))
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, extra={"specs": [s.as_dict() for s in consolidate.task_specs(cfg)]})
    return str(path)


def test_consolidation_from_a_checkpoint_changes_only_the_semantic_memory(tmp_path):
    tiny = dict(families=("memory", "arithmetic"), consolidate_steps=3, replay_turns=8, k_train=2, steps=2,
                stream_batch=2, batch_size=4, replay_capacity=8, out=str(tmp_path / "c"), tensorboard=False,
                progress=False)
    path = _checkpoint(tmp_path, consolidate.Config(**tiny), semantic=False, K=5)
    cfg = consolidate.Config(**tiny, checkpoint=path)
    run = Run(tmp_path / "c", torch.device("cpu"), tensorboard=False, progress=False)
    model = consolidate.first_model(cfg, run)
    saved = torch.load(path, weights_only=True)["model"]
    assert all(torch.equal(p, saved[n]) for n, p in model.state_dict().items())  # starts from the checkpoint
    assert model.cfg.semantic and model.cfg.K == 2  # reads the semantic memory, at the run's K
    buffers = consolidate.fill_buffers(cfg, run, consolidate.task_specs(cfg))
    semantic = {id(p) for p in model.param_groups()["semantic"]}
    consolidate.replay_phase(cfg, run, "c", model, buffers[-1], consolidate.task_specs(cfg), 0, consolidate=True)
    changed = [not torch.equal(p, saved[n]) for n, p in model.named_parameters() if id(p) in semantic]
    assert any(changed)
    for name, p in model.named_parameters():
        if id(p) not in semantic:
            assert torch.equal(p, saved[name]), f"{name} changed during consolidation"


def test_a_checkpoint_that_cannot_do_the_tasks_is_refused(tmp_path):
    tiny = dict(families=("memory", "arithmetic"), out=str(tmp_path / "c"))
    no_semantic = _checkpoint(tmp_path, consolidate.Config(**tiny), semantic=False, semantic_slots=0)
    with pytest.raises(ValueError, match="no semantic memory"):
        consolidate.Config(**tiny, checkpoint=no_semantic)
    other = _checkpoint(tmp_path, consolidate.Config(families=("memory", "listops")))  # never saw arithmetic
    with pytest.raises(ValueError, match="vocabulary lacks"):
        consolidate.Config(**tiny, checkpoint=other)


# -- verdicts ------------------------------------------------------------------------------------
def test_a_target_over_unlearned_tasks_reads_not_measurable():
    unlearned = {"target": ">= -0.01", "value": 0.0, "passed": None, "measurable": False, "why": "memory not learned"}
    m4 = {"targets": {"bwt_consolidation": unlearned,
                      "writes_to_target_ratio": {"target": "<= 0.7", "value": 0.5, "passed": True, "measurable": True}},
          "writes_to_target": {"ratio": 0.5}, "bwt": {"consolidation": 0.0}, "acc": {}, "replay": {}}
    s4 = plan.judge_stage4(m4)
    assert s4["passed"] is None and s4["measurable"] is False and "memory not learned" in s4["why"]
    m4["targets"]["bwt_consolidation"] = {**unlearned, "passed": True, "measurable": True}
    assert plan.judge_stage4(m4)["passed"] is True
    halting = {"steps_fraction": 0.3, "accuracy": 0.1, "fixed_k_accuracy": 0.1, "fixed_k": 16,
               "spearman_steps_level": 0.5}
    s2 = plan.judge_stage2({"halting": {"arithmetic": halting}}, {"arithmetic": 0.05})
    assert s2["measurable"] is False and s2["passed"] is None and "not learned" in s2["why"]
    learned = plan.judge_stage2({"halting": {"arithmetic": {**halting, "accuracy": 0.9, "fixed_k_accuracy": 0.9}}},
                                {"arithmetic": 0.05})
    assert learned == {**learned, "passed": True, "measurable": True}
    nothing = {"success_start": {"with_tools": 0.0, "without_tools": 0.0},
               "success": {"with_tools": 0.0, "without_tools": 0.0}, "distill": {}}
    assert plan.judge_stage3(nothing)["measurable"] is False
    better = {**nothing, "success": {"with_tools": 0.5, "without_tools": 0.0}}
    assert plan.judge_stage3(better)["passed"] is True
    lm = {"stage0": {"loss_curve": [5.2, 4.9], "final_loss": 4.4, "non_degenerate": True, "instruct_accuracy": 0.0,
                     "generation": {"immediate_eos_rate": 0.0, "distinct_2": 0.98, "longest_repeat_run": 2}}}
    assert plan.judge_stage0(lm)["measurable"] is False  # random characters look varied
    lm["stage0"]["final_loss"] = 0.5
    assert plan.judge_stage0(lm)["passed"] is True
    assert "**not measurable**" in plan.table({"4": {**s4, "seconds": 1.0}})


# -- Stage 3's rollouts in the replay buffer -----------------------------------------------------------
def _played(index: int, correct: bool = True) -> Episode:
    """An arithmetic episode played through its tool (the actions the expert takes), as a rollout records it."""
    env = TextTaskEnv("arithmetic")
    obs, info = env.reset(options={"index": index, "difficulty": 2, "split": "train"})
    ep = Episode(seed=index, family="arithmetic", difficulty=2, correct=correct, tool_calls=1)
    for action in env.expert_actions(True):
        ep.turns.append(Turn(obs, 0, torch.zeros(1, dtype=torch.long), 0.0, 1, 0.0, action=action))
        obs, *_ = env.step(action)
    return ep


def test_the_buffer_holds_rl_episodes_with_their_tool_calls(tmp_path):
    path = tmp_path / "episodes.jsonl"
    save_rl_episodes(path, rl_records([_played(1), _played(2, correct=False)], key=0), key=0)
    save_rl_episodes(path, rl_records([_played(3)], key=1), key=1)
    save_rl_episodes(path, rl_records([_played(4)], key=1), key=1)  # a resumed iteration replaces its records
    assert [json.loads(line)["seed"] for line in path.read_text().splitlines()] == [1, 4]
    cfg = consolidate.Config(families=("memory", "arithmetic"), steps=2, stream_batch=2, batch_size=4,
                             replay_capacity=64, rl_episodes=str(path), out=str(tmp_path / "c"))
    tool_names = consolidate.meta_model(cfg).cfg.tool_names
    episodes = rl_examples(path, tool_names)
    assert [len(e) for e in episodes] == [2, 2] and all(e[0].payload and e[0].tool > 0 for e in episodes)
    run = Run(tmp_path / "c", torch.device("cpu"), tensorboard=False, progress=False)
    buffer = consolidate.fill_buffers(cfg, run, consolidate.task_specs(cfg))[-1]
    rl = [item for item in buffer.items if item.source == "rl"]
    assert len(rl) == 2 and buffer.sources()["rl"] == {"arithmetic": 2}
    calls = [t for item in rl for t in item.turns if 0 < t.tool < use_result_choice(tool_names)]
    assert len(calls) == 2 and all(t.payload == t.context.split("calc: ")[1] for t in calls)  # the call's ARGS
    assert {"imitation", "stream"} <= set(buffer.sources())  # arithmetic's demonstrations, memory streamed
    again = ReplayBuffer.load(run.dir / "replay" / "after_task2_arithmetic.json")  # the source survives saving
    assert again.sources() == buffer.sources()
