"""train/rl_verify.py and the RL pieces of r3m.learn: advantages, re-scoring, rewards, tool metrics, a tiny run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from r3m import envs
from r3m import tools
from r3m.envs.base import Instance, TaskFamily, split_of
from r3m.learn.evaluation import shaped_reward, tool_metrics
from r3m.learn.distill import distill_examples
from r3m.learn.losses import action_tokens, clipped_objective
from r3m_agent import R3M, R3MConfig, save_checkpoint
from r3m.learn.cli import UsageError, parse_config
from r3m.learn.policy import Policy
from r3m.learn.rollout import Episode, Turn, make_vec, rescore, run_episodes
from r3m_agent.tokenizer import EOS_ID, PAD_ID
from r3m.learn.data import TaskSpec
from r3m.train import rl_verify
from r3m.verifiers import RIGHT, wrong

TOY = "rltoy"


class ToyFamily(TaskFamily):
    """Echo a number; the calculator evaluates it (so a call returns the answer)."""

    name = TOY
    levels = (1, 2)
    tool = "calculator"
    max_prompt_chars = 16
    max_answer_chars = 8

    def generate(self, rng, difficulty):
        n = str(int(rng.integers(1, 10 ** (difficulty + 1))))
        return Instance(TOY, difficulty, f"n:{n}", n, n, {"n": n})

    def verify(self, instance, answer):
        return RIGHT if answer.strip() == instance.answer else wrong("different number")

    def tool_args(self, instance):
        return instance.data["n"]


if TOY not in envs.list_families():
    envs.register_task(TOY, ToyFamily)
ENV = f"{TOY}-v0"
SPEC = TaskSpec(TOY, "fill", 6, (1, 2))
TINY = R3MConfig(d_model=32, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=4, semantic_slots=0, K=2,
                 tool_names=tuple(tools.list_tools()))


def tiny_model(seed: int = 0, **kw) -> R3M:
    torch.manual_seed(seed)
    return R3M(dataclasses.replace(TINY, **kw)).eval()


# -- advantages and the objective -----------------------------------------------------------------------
def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0],
                            [0.5, 0.5, 1.0, 0.0]])
    adv, zero = rl_verify.group_advantages(rewards, "grpo")
    assert zero.tolist() == [False, True, True, False]
    std = np.std([1, 0, 0, 0])
    assert torch.allclose(adv[0], torch.tensor([0.75, -0.25, -0.25, -0.25]) / std, atol=1e-4)
    assert adv[1].abs().sum() == 0 and adv[2].abs().sum() == 0
    assert torch.allclose(adv.sum(1), torch.zeros(4), atol=1e-5)
    loo, zero2 = rl_verify.group_advantages(rewards, "rloo")
    assert torch.equal(zero, zero2)
    # r_i minus the mean of the other three
    assert torch.allclose(loo[0], torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]), atol=1e-6)
    expected = torch.tensor([0.5 - 1.5 / 3, 0.5 - 1.5 / 3, 1.0 - 1.0 / 3, 0.0 - 2.0 / 3])
    assert torch.allclose(loo[3], expected, atol=1e-6)
    with pytest.raises(ValueError):
        rl_verify.group_advantages(torch.ones(4, 1))
    with pytest.raises(ValueError):
        rl_verify.group_advantages(rewards, "ppo")


def test_clipped_objective_ratio_one_and_clipping():
    old = torch.tensor([-3.0, -5.0, -2.0])
    adv = torch.tensor([1.0, -1.0, 0.5])
    n = torch.tensor([3, 5, 2])
    new = old.clone().requires_grad_(True)
    out = clipped_objective(new, old, old, adv, n, clip=0.2, kl_coef=0.1)
    assert out.ratio == pytest.approx(1.0) and out.kl == pytest.approx(0.0) and out.clip_fraction == 0.0
    assert out.loss.item() == pytest.approx(-adv.mean().item())
    out.loss.backward()
    assert torch.allclose(new.grad, -adv / n / 3)  # d/dlogp of -s A / 3 actions at s = 1
    far = (old + n * 1.0).requires_grad_(True)  # per-token log-ratio 1: ratio e, far outside the clip
    out = clipped_objective(far, old, old, adv, n, clip=0.2, kl_coef=0.0)
    assert out.clip_fraction == 1.0
    out.loss.backward()
    assert far.grad[0] == 0 and far.grad[2] == 0 and far.grad[1] != 0  # only A < 0 pulls back
    payload = torch.tensor([[5, 6, EOS_ID, PAD_ID], [PAD_ID, PAD_ID, 7, EOS_ID]])
    assert action_tokens(payload).tolist() == [4, 3]


# -- re-scoring equals sampling ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fill", "causal"])
@pytest.mark.parametrize("allow_tools", [True, False])
@pytest.mark.parametrize("halt", [False, True])
def test_acting_and_rescoring_log_probs_agree(mode, allow_tools, halt):
    """Choice (tool or answer), payload and, with halting, the sampled step: the log-probability the
    policy acted with is the one re-scoring computes, with the memory re-threaded across turns."""
    model = tiny_model(K=4)
    with torch.no_grad():
        model.tool_head.weight.zero_()  # about half the turns call the calculator, the others answer
        model.tool_head.bias.fill_(-5.0)
        model.tool_head.bias[0] = model.tool_head.bias[1 + list(model.cfg.tool_names).index("calculator")] = 0.0
        model.memory.gate.bias += 5.0  # and memory writes
        model.halting.proj.bias.fill_(-0.5)  # steps spread over 1..K
    policy = Policy(model, TaskSpec(TOY, mode, 6, (1, 2)), K=4, halt=halt)
    vec = make_vec(ENV, 8, call_budget=2)
    with torch.no_grad():
        eps = run_episodes(policy, vec, [0, 0, 0, 1, 1, 1, 2, 2], {"split": "train"}, allow_tools=allow_tools,
                           sample=True, generator=torch.Generator().manual_seed(0))
    vec.close()
    turns = [t for e in eps for t in e.turns]
    if allow_tools:
        assert any(len(e.turns) > 1 for e in eps) and any(t.tool == 0 for t in turns)  # both choices
        assert any(e.writes > 1 for e in eps)  # later turns read memory written by earlier ones
    else:
        assert all(t.tool == 0 for t in turns)
    if halt:
        assert len({t.steps for t in turns}) > 1
    scored = rescore(policy, eps, allow_tools=allow_tools)
    old = torch.tensor([t.log_prob for t in turns])
    torch.testing.assert_close(scored.log_prob.detach(), old, atol=1e-4, rtol=0)
    assert torch.isfinite(scored.entropy).all()
    tokens = torch.cat([action_tokens(rl_verify._payloads(e)) for e in eps])
    out = clipped_objective(scored.log_prob, old, old, torch.ones(len(old)), tokens, 0.2, 0.1)
    assert out.ratio == pytest.approx(1.0, abs=1e-4) and out.clip_fraction == 0.0


@pytest.mark.parametrize("mode", ["fill", "causal"])
def test_the_content_depends_on_the_choice(mode):
    """The same observation, choice 'answer' against a tool choice: a different payload distribution."""
    model = tiny_model()
    with torch.no_grad():  # as after training (the readout's scale and shift start at zero)
        model.choice_film.weight.normal_(0.0, 0.5)
    policy = Policy(model, TaskSpec(TOY, mode, 6, (1, 2)), K=2)
    payload = torch.tensor([[PAD_ID, PAD_ID, PAD_ID, 30, 31, EOS_ID]] if mode == "fill" else [[30, 31, EOS_ID]])
    scores = [policy.score(["n:12"], None, torch.tensor([c]), payload) for c in (0, 1)]
    content = [s.log_prob - s.choice_logp for s in scores]  # log p(payload | choice)
    assert (content[0] - content[1]).abs().item() > 1e-3
    torch.testing.assert_close(torch.logsumexp(torch.stack([s.choice_logp for s in scores]), 0) <= 0,
                               torch.tensor([True]))


def test_the_halting_head_learns_from_the_policy_gradient():
    model = tiny_model(K=4)
    policy = Policy(model, SPEC, K=4, halt=True)
    payload = torch.tensor([[PAD_ID, PAD_ID, PAD_ID, 30, 31, EOS_ID]] * 2)
    scored = policy.score(["n:12", "n:3"], None, torch.tensor([0, 0]), payload, torch.tensor([1, 3]))
    (-scored.log_prob.sum()).backward()  # a policy-gradient step's gradient on these actions
    assert model.halting.proj.weight.grad.abs().max() > 0 and scored.halt_logp.ne(0).all()
    off = Policy(tiny_model(K=4), SPEC, K=4, halt=False)  # without halting the step is not an action
    assert off.score(["n:12"], None, torch.tensor([0]), payload[:1]).halt_logp.eq(0).all()


# -- rewards through the env: budget exceeded, malformed calls --------------------------------------
def _always_call(tool: str = "calculator") -> Policy:
    model = tiny_model()
    with torch.no_grad():
        model.tool_head.bias[1 + list(model.cfg.tool_names).index(tool)] += 50.0
    return Policy(model, SPEC, K=1)


@pytest.mark.parametrize("tools_enabled", [True, False])
def test_budget_exceeded_and_malformed_rewards(tools_enabled):
    budget, tc, mc = 2, 0.01, 0.1
    vec = make_vec(ENV, 2, call_budget=budget, tools_enabled=tools_enabled)
    with torch.no_grad():
        eps = run_episodes(_always_call(), vec, [3, 4], {"split": "train"}, allow_tools=True)
    vec.close()
    for ep in eps:
        assert ep.truncated and not ep.correct and ep.reason.startswith("call budget exceeded")
        assert ep.tool_calls == budget + 1  # the call that broke the budget counts
        # calls to a disabled tool are malformed; the budget-breaking call is never parsed
        assert ep.malformed_calls == (0 if tools_enabled else budget)
        expected = -(budget + 1) * tc - (0 if tools_enabled else budget) * mc
        assert shaped_reward(ep, tc, mc) == pytest.approx(expected)


def test_correct_answer_with_one_call_scores_one_minus_call_cost():
    ep = Episode(0, TOY, 1, reward=1.0, correct=True, tool_calls=1)
    assert shaped_reward(ep, 0.01, 0.1) == pytest.approx(0.99)
    failed = Episode(0, reward=0.0, tool_calls=2, malformed_calls=1)
    assert shaped_reward(failed, 0.01, 0.1) == pytest.approx(-0.12)


# -- tool precision / recall and distillation targets ----------------------------------------------
def _episode(prompt: str, calls: list[tuple[str, str]], answer: str, correct: bool) -> Episode:
    turns, obs = [], prompt
    for call, result in calls:
        turns.append(Turn(obs, 1, torch.tensor([EOS_ID]), 0.0, 1, 0.0, action=call))
        obs = obs + call + tools.format_result(result)
    from r3m_agent.tokenizer import Tokenizer

    turns.append(Turn(obs, 0, torch.tensor(Tokenizer().encode(answer) + [EOS_ID]), 0.0, 1, 0.0, action=answer))
    return Episode(0, TOY, 1, reward=float(correct), correct=correct, tool_calls=len(calls), turns=turns)


def test_tool_precision_recall_by_hand():
    good = ("<call>calculator 12</call>", "12")
    bad = ("<call>calculator 1+</call>", "error: unexpected end")
    # need comes from the same instances answered without tools: n:1 and n:2 are answered wrong
    with_tools = [_episode("n:1", [good], "1", True),  # needed, called: a precise call
                  _episode("n:2", [], "9", False),  # needed, not called: a miss
                  _episode("n:3", [bad, good], "3", True),  # not needed, called: unneeded (one malformed)
                  _episode("n:4", [], "4", True)]  # not needed, not called
    without = [_episode("n:1", [], "0", False), _episode("n:2", [], "0", False),
               _episode("n:3", [], "3", True), _episode("n:4", [], "4", True)]
    for ep, lv in zip(with_tools + without, [1, 1, 2, 2] * 2):
        ep.difficulty = lv
    m = tool_metrics(with_tools, without)
    assert m["precision"] == pytest.approx(1 / 2) and m["recall"] == pytest.approx(1 / 2)
    assert m["unneeded_call_rate"] == pytest.approx(1 / 2) and m["call_rate"] == pytest.approx(2 / 4)
    assert m["need_rate"] == pytest.approx(2 / 4) and m["tool_free_accuracy"] == pytest.approx(2 / 4)
    assert m["with_tools_accuracy"] == pytest.approx(3 / 4)
    assert m["calls_per_episode"] == pytest.approx(3 / 4) and m["format_validity"] == pytest.approx(2 / 3)
    assert m["by_level"][1]["recall"] == pytest.approx(1 / 2) and m["by_level"][1]["unneeded_call_rate"] == 0.0
    assert m["by_level"][2]["precision"] == 0.0 and m["by_level"][2]["recall"] == 1.0  # nothing needed there
    # the metric can come out either way: a policy that calls exactly where needed is perfect
    exact = [_episode("n:1", [good], "1", True), _episode("n:2", [good], "2", True),
             _episode("n:3", [], "3", True), _episode("n:4", [], "4", True)]
    m = tool_metrics(exact, without)
    assert (m["precision"], m["recall"], m["unneeded_call_rate"]) == (1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="same instances"):
        tool_metrics(exact, without[:2])


def test_distill_examples_keep_verified_tool_answers_only():
    eps = [_episode("n:12", [("<call>calculator 12</call>", "12")], "12", True),
           _episode("n:12", [("<call>calculator 12</call>", "12")], "12", True),  # same instance again
           _episode("n:5", [("<call>calculator 5+</call>", "error: x")], "5", True),  # no working call
           _episode("n:6", [], "6", True),  # no call
           _episode("n:8", [("<call>calculator 8</call>", "8")], "9", False)]  # not verified
    ex = distill_examples(eps)
    assert [(t.example.context, t.example.tool, t.example.payload, t.positions, t.instance) for t in ex] == [
        ("n:12", 0, "12", None, None)]


def test_distillation_teaches_the_tool_answers_to_the_policy_itself(tmp_path):
    from r3m.learn.data import Example
    from r3m.learn.distill import Distillation, distill
    from r3m.learn.run import Run

    prompts = [f"n:{n}" for n in (12, 34, 56, 78)]
    examples = [(Example(TOY, 1, p, 0, p[2:]), None) for p in prompts]
    policy = Policy(tiny_model(), SPEC, K=2)

    def answered() -> float:
        d = policy.act(prompts, allow_tools=False)
        return float(np.mean([a == p[2:] for a, p in zip(d.actions, prompts)]))

    before = answered()
    settings = Distillation(steps=150, lr=3e-3, batch=8, replay_batch=2)
    run = Run(tmp_path, torch.device("cpu"), tensorboard=False, progress=False)
    distill(run, "distill", policy, SPEC, examples, (2,), settings, seed=0)
    policy.model.eval()
    assert before == 0.0 and answered() == 1.0
    assert (tmp_path / "ckpt" / "distill.pt").exists()


def test_fresh_targets_are_tool_labelled_verified_train_instances():
    """ToolLabelled: every step fresh train instances, answered by the tool, each answer verified;
    a pure function of (seed, step)."""
    from r3m.learn.data import task_spec
    from r3m.learn.distill import ToolLabelled

    spec = task_spec("arithmetic", (1, 2))
    src = ToolLabelled(spec, (1, 2), seed=0, batch=6)
    a, b = src.get(0), src.get(1)
    assert len(a) == 6 and [t.example.context for t in a] == [t.example.context for t in ToolLabelled(
        spec, (1, 2), seed=0, batch=6).get(0)]
    assert {t.example.context for t in a}.isdisjoint({t.example.context for t in b})  # fresh each step
    family = envs.make_family("arithmetic")
    for t in a + b:
        assert t.example.tool == 0 and split_of(t.instance.key) == "train" and t.example.difficulty in (1, 2)
        assert family.verify(t.instance, t.example.payload).correct and t.example.payload == t.instance.answer
    with pytest.raises(ValueError, match="no tool"):
        ToolLabelled(task_spec("prefix", (1,)), (1,), 0, 4)


def test_mastery_curriculum_opens_levels_as_the_own_answers_verify():
    """Levels open easiest first, the next once every open level's own answers verify at the
    mastery rate; draws favour what is left to learn; closed levels are reported for replay."""
    from r3m.learn.data import task_spec
    from r3m.learn.distill import ToolLabelled

    src = ToolLabelled(task_spec("arithmetic", (1, 2, 3)), (3, 1, 2), seed=0, batch=4, mastery=0.8, rate=0.5)
    assert src.open_levels == (1,) and src.closed_levels == (2, 3)
    assert {t.example.difficulty for t in src.get(0)} == {1}
    src.observe(0, [1, 1], [True, True])  # moving average 0.5: not yet
    assert src.open_levels == (1,)
    src.observe(1, [1, 1], [True, True])  # 0.75
    src.observe(2, [1], [True])  # 0.875 >= 0.8: level 2 opens
    assert src.open_levels == (1, 2) and src.opened_at == {1: 0, 2: 3}
    w = src.weights()
    assert w[1] > w[0] > 0  # level 2, not learned yet, is drawn more than the mastered level 1
    assert src.calling_levels == (3, 2)  # the closed level and the open one not yet mastered keep their calls
    src.observe(3, [1, 2], [True, False])  # level 2 not mastered: level 3 stays closed
    assert src.closed_levels == (3,)
    src.observe(4, [1, 1], [False, False])  # level 1 forgotten below the bar: its calls are replayed again
    assert src.calling_levels == (3, 1, 2)
    assert ToolLabelled(task_spec("arithmetic", (1, 2)), (1, 2), 0, 4).open_levels == (1, 2)  # mastery 0: all open


def test_distillation_ends_when_the_newest_level_stops_improving():
    """The plateau rule: the phase ends once the newest open level's own-answer rate has not gained
    ``gain`` for ``patience`` steps; a level that opens restarts the clock; patience 0 never stops;
    the loop's side is tests/test_loop.py."""
    from r3m.learn.data import task_spec
    from r3m.learn.distill import Distillation, ToolLabelled

    src = ToolLabelled(task_spec("arithmetic", (1, 2)), (1, 2), 0, 4, mastery=0.8, rate=1.0, patience=3, gain=0.1)
    src.observe(0, [1], [False])
    assert not src.stalled(2) and src.stalled(3) and src.stalled_at == 3  # no gain since step 0
    src.observe(3, [1], [True])  # 1.0: a gain, and level 1 mastered: level 2 opens at step 4
    assert src.open_levels == (1, 2) and not src.stalled(6) and src.stalled(7)
    assert not ToolLabelled(task_spec("arithmetic", (1,)), (1,), 0, 4, mastery=0.8).stalled(10**6)
    with pytest.raises(ValueError, match="patience"):
        Distillation(patience=-1)

    with pytest.raises(ValueError, match="mastery"):
        ToolLabelled(task_spec("arithmetic", (1,)), (1,), 0, 4, mastery=1.5)


def test_rl_replay_answers_the_mastered_levels_directly():
    """After distillation the replay beside the policy gradient answers the mastered levels directly
    (replaying their calls would teach the calls back) and keeps both ways elsewhere."""
    from r3m.learn.data import task_spec

    spec = task_spec("arithmetic", (1, 2, 3, 4))
    cfg = rl_verify.Config(env="arithmetic-v0", replay_batch=4)
    replay = rl_verify.Replay(cfg, spec, TINY.tool_names, 0, answer_levels=(1, 2))
    _, episodes = replay.get(0)
    direct = [ep for ep in episodes if ep[0].difficulty in (1, 2)]
    calling = [ep for ep in episodes if ep[0].difficulty in (3, 4)]
    assert direct and all(len(ep) == 1 and ep[0].tool == 0 for ep in direct)
    assert any(ep[0].tool != 0 for ep in calling) and any(ep[0].tool == 0 for ep in calling)  # both ways
    plain = rl_verify.Replay(cfg, spec, TINY.tool_names, 0)
    assert plain.answer == () and {ep[0].difficulty for ep in plain.get(0)[1]} <= {1, 2, 3, 4}
    distilled = {"levels": [1, 2], "curriculum": {"own_answer_rate": {"1": 0.99, "2": 0.5, "3": 0.95}}}
    assert rl_verify.mastered(cfg, distilled) == (1,)  # 3 was not distilled, 2 not mastered


def test_choice_targets_follow_the_models_own_verified_answers():
    """"answer" only where the policy's own tool-free answer verifies; "call" elsewhere; rows whose
    instance is unknown keep "answer"."""
    from types import SimpleNamespace

    from r3m.learn import distill
    from r3m.learn.data import Example

    family = envs.make_family(TOY)
    instances = [family.instance("train", i, 1) for i in range(4)]
    targets = [distill.Target(Example(TOY, 1, inst.prompt, 0, inst.answer), None, inst) for inst in instances]
    targets.append(distill.Target(Example(TOY, 1, "n:7", 0, "7"), None, None))
    answers = [instances[0].answer, "x", instances[2].answer, "y", "z"]  # the policy's own (tool-free) answers

    class Stub:
        model = tiny_model()

        def act(self, observations, allow_tools):
            assert not allow_tools and list(observations) == [t.example.context for t in targets[:4]]
            return SimpleNamespace(actions=answers[:4])

    want, verdicts = distill.choice_targets(Stub(), targets)
    call = 1 + TINY.tool_names.index("calculator")
    assert want.tolist() == [0, call, 0, call, 0] and verdicts == [True, False, True, False]


def test_curriculum_moves_weight_to_levels_with_mixed_success():
    cur = rl_verify.Curriculum((1, 2, 3))
    for _ in range(10):
        cur.update([1, 1, 3], [1.0, 1.0, 0.0])  # level 1 always solved, level 3 always failed
    w = cur.weights()
    assert w[1] > w[0] and w[1] > w[2]
    assert rl_verify.Curriculum(**json.loads(json.dumps(cur.state()))).weights().tolist() == w.tolist()


# -- the script: a user-registered env, resume, CLI -------------------------------------------------
def _init_ckpt(tmp_path):
    path = tmp_path / "init.pt"
    save_checkpoint(path, tiny_model(), extra={"specs": [SPEC.as_dict()]})
    return str(path)


def _cfg(tmp_path, name, **kw):
    from r3m.train import rl_verify

    base = dict(env=ENV, iterations=3, groups=2, group_size=4, minibatch=16, replay_batch=4, eval_n=2,
                distill_n=8, distill_steps=2, warm_batch=4, baselines=False,
                tensorboard=False, progress=False, ckpt_every=1, out=str(tmp_path / name))
    return rl_verify.Config(**{**base, **kw})


def test_user_env_trains_from_warm_start_with_distill_and_dense_baseline(tmp_path):
    from r3m.train import rl_verify

    cfg = _cfg(tmp_path, "warm", warm_steps=3, iterations=2, iterations_after=1, baselines=True,
               distill_levels=(1,), distill_patience=1)
    assert cfg.distillation.patience == 1
    m = rl_verify.main(cfg)
    out = tmp_path / "warm"
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("reward_start", "reward_end", "success", "tool_precision", "tool_recall", "distill",
                "baselines"):
        assert key in saved, key
    assert set(saved["success"]) >= {"with_tools", "without_tools"}
    assert set(saved["distill"]) >= {"levels", "examples"}  # what it distilled, or a note why not
    assert saved["distill"]["examples"] > 0 or saved["distill"]["note"]
    assert "stalled_at" in saved["distill"].get("curriculum", {"stalled_at": None})  # the plateau rule's verdict
    assert {"r3m_with_tools", "r3m_without_tools", "dense_2x_no_tools"} <= set(saved["baselines"])
    assert m["baseline_details"]["dense_2x_no_tools"]["params"] >= 2 * 0.99 * m["params"]
    assert all(0.0 <= v <= 1.0 for res in saved["baselines"].values() for v in res.values())
    assert m["iterations"][0] == 2 and m["rl_env_steps"] >= 2 * 8
    assert set(saved["phases"]) >= {"start", "after_rl", "end"}
    for key in ("precision", "recall", "unneeded_call_rate", "by_level"):
        assert key in saved["phases"]["end"]["tools"], key
    for f in ("reward_curve.png", "ckpt/rl.pt", "ckpt/rl_reference.pt", "ckpt/warm_stage1.pt"):
        assert (out / f).exists(), f


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    from r3m.train import rl_verify

    init = _init_ckpt(tmp_path)
    kw = dict(init=init, distill=False, k=2)
    full = rl_verify.main(_cfg(tmp_path, "full", **kw))
    assert rl_verify.main(_cfg(tmp_path, "cut", stop_after=1, **kw))["interrupted"]
    resumed = rl_verify.main(_cfg(tmp_path, "cut", resume=True, **kw))
    drop = ("rl/seconds",)
    strip = [{k: v for k, v in h.items() if k not in drop} for h in full["history"]]
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed["history"]] == strip
    assert resumed["reward_end"] == full["reward_end"] and resumed["success"] == full["success"]
    with pytest.raises(UsageError):
        rl_verify.main(_cfg(tmp_path, "full", **kw))


def test_halting_run_samples_steps_and_charges_them(tmp_path):
    from r3m.train import rl_verify

    cfg = _cfg(tmp_path, "halt", init=_init_ckpt(tmp_path), halt=True, halt_cost=0.5, iterations=2,
               distill=False, group_size=2, groups=4)
    m = rl_verify.main(cfg)
    assert all(1.0 <= h["halt/steps"] <= TINY.K for h in m["history"])
    ep = Episode(0, TOY, 1, reward=1.0, correct=True, turns=[Turn("n:1", 0, torch.tensor([EOS_ID]), 0.0, 1, 0.0)])
    assert shaped_reward(ep, 0.0, 0.0, 0.5, TINY.K) == pytest.approx(1.0 - 0.5 / TINY.K)  # 1 step of K


def test_cli_rejects_unknown_flags_and_unregistered_envs():
    from r3m.train import rl_verify

    with pytest.raises(SystemExit):
        parse_config(rl_verify.Config, ["--no-such-flag", "1"])
    with pytest.raises(SystemExit):
        parse_config(rl_verify.Config, ["--env", "sudoku-grid-v0"])  # not a text env
    cfg = parse_config(rl_verify.Config, ["--env", "arithmetic-v0", "--distill", "--levels", "1", "2"])
    assert cfg.distill is True and cfg.levels == (1, 2) and cfg.family == "arithmetic"


def test_distill_script_measures_before_and_after(tmp_path):
    from r3m.train import distill as distill_script

    cfg = parse_config(distill_script.Config, [
        "--checkpoint", _init_ckpt(tmp_path), "--env", ENV, "--distill-levels", "1", "--n", "8", "--steps", "2",
        "--batch", "4", "--eval-n", "3", "--tensorboard", "false", "--progress", "false", "--out", str(tmp_path / "d")])
    m = distill_script.main(cfg)
    assert m["distill"]["levels"] == [1]
    assert set(m["phases"]["before"]["tools"]) >= {"precision", "recall", "unneeded_call_rate"}
    if m["distill"]["examples"]:  # an untrained policy may solve nothing through the tool: then a note says so
        assert (tmp_path / "d" / "ckpt" / "distill.pt").exists() and m["phases"]["after"] is not None
    else:
        assert m["distill"]["note"] and m["phases"]["after"] is None
    with pytest.raises(SystemExit):
        parse_config(distill_script.Config, ["--env", ENV])  # no checkpoint: a one-line usage error



def test_default_distillation_takes_the_calling_levels_and_replays_the_rest():
    from r3m.learn.distill import levels_to_distill

    snap = {"tools": {"by_level": {"1": {"call_rate": 0.2}, "2": {"call_rate": 0.9}, "3": {"call_rate": 1.0}}}}
    assert levels_to_distill(snap) == (2, 3)
    assert levels_to_distill(snap, (1, 3)) == (1, 3)
    assert levels_to_distill({"tools": {"by_level": {"1": {"call_rate": 0.1}}}}) == ()
