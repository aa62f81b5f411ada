"""RL that cannot silently collapse (bounded KL, the guard's rollback, zero-variance groups, void
turns), need-based tool metrics, and the "use the result" choice under RL (issue 20)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from r3m import tools
from r3m.envs.views import split_transcript
from r3m.learn.cli import parse_config
from r3m.learn.data import task_spec
from r3m.learn.evaluation import need_based_metrics, tool_metrics, void_turns
from r3m.learn.losses import clipped_objective, kl_estimate
from r3m.learn.policy import Policy
from r3m.learn.rollout import Episode, Turn, make_vec, rescore, run_episodes
from r3m.learn.run import Run
from r3m.train import rl_verify
from r3m_agent.config import use_result_choice
from r3m_agent.tokenizer import EOS_ID, PAD_ID
from test_rl import ENV, SPEC, TOY, _cfg, _episode, _init_ckpt, tiny_model
from test_views import tiny

GOOD = ("<call>calculator 12</call>", "12")
BAD = ("<call>calculator 1+</call>", "error: unexpected end")


# -- a bounded KL -------------------------------------------------------------------------------------
def test_the_bounded_kl_stays_finite_where_k3_explodes():
    r = torch.tensor([0.0, 0.1, -0.1, 100.0, -100.0])  # log ref - log pi per token
    assert not torch.isfinite(kl_estimate(r, "k3")[3])  # e^100 overflows
    k2 = kl_estimate(r, "k2")
    assert torch.isfinite(k2).all() and k2[3] == pytest.approx(5000.0)
    assert kl_estimate(r, "k1").tolist() == pytest.approx((-r).tolist())
    for name in ("k1", "k2", "k3"):  # a clamp bounds every estimator
        clamped = kl_estimate(r, name, clamp=5.0)
        assert torch.isfinite(clamped).all() and clamped.abs().max() <= kl_estimate(torch.tensor(5.0), "k3") + 1e-4
    assert kl_estimate(r, "k2", clamp=5.0).max() == pytest.approx(12.5)
    # near the reference they agree to second order: k3 = r^2/2 + O(r^3)
    assert kl_estimate(r[1:3], "k3").tolist() == pytest.approx(kl_estimate(r[1:3], "k2").tolist(), rel=0.05)
    # in the objective: an 82-token action whose reference log-probability is 82 * 100 above the policy's
    new = torch.tensor([-8200.0, -3.0], requires_grad=True)
    old, ref, n, adv = new.detach().clone(), torch.tensor([0.0, -3.0]), torch.tensor([82, 3]), torch.tensor([1.0, -1.0])
    assert not torch.isfinite(clipped_objective(new, old, ref, adv, n, 0.2, 0.1, "k3").loss)
    out = clipped_objective(new, old, ref, adv, n, 0.2, 0.1, "k2", kl_clamp=5.0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.kl == pytest.approx(12.5 / 2) and torch.isfinite(new.grad).all()
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(r, "k4")


# -- the guard --------------------------------------------------------------------------------------
def _scripted(monkeypatch, values):
    """guard_success returns ``values`` in turn (then the last one again)."""
    calls = []

    def fake(cfg, policy):
        calls.append(len(calls))
        return values[min(len(calls) - 1, len(values) - 1)]

    monkeypatch.setattr(rl_verify, "guard_success", fake)
    return calls


def _nudge(model, optimizer, seed):
    """One optimiser step on a random gradient: new parameters and new optimizer state."""
    g = torch.Generator().manual_seed(seed)
    optimizer.zero_grad()
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    optimizer.step()


def _clone(model, optimizer):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {i: {k: v.clone() for k, v in s.items()} for i, s in optimizer.state_dict()["state"].items()})


@pytest.mark.parametrize("action", ["rollback", "stop"])
def test_the_guard_restores_the_best_state_bitwise_on_a_forced_drop(tmp_path, monkeypatch, caplog, action):
    model = tiny_model()
    policy = Policy(model, SPEC, K=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    cfg = _cfg(tmp_path, "g", init=_init_ckpt(tmp_path), guard_every=1, guard_drop=0.02, guard_action=action)
    run = Run(tmp_path / "g", torch.device("cpu"), tensorboard=False, progress=False)
    (run.dir / "ckpt").mkdir(parents=True)
    _scripted(monkeypatch, [0.60, 0.59, 0.55])
    state = {"iteration": 0, "guard": rl_verify.new_guard()}
    _nudge(model, optimizer, 0)
    best = _clone(model, optimizer)
    assert rl_verify.guard_check(cfg, run, "rl", policy, optimizer, state)["rl/guard_best"] == 0.60
    state["iteration"] = 1
    _nudge(model, optimizer, 1)
    kept = _clone(model, optimizer)
    rl_verify.guard_check(cfg, run, "rl", policy, optimizer, state)  # 1 point below: within 2 points, kept
    assert all(torch.equal(v, kept[0][k]) for k, v in model.state_dict().items())
    assert state["guard"]["rollbacks"] == 0 and state["guard"]["best"] == 0.60
    state["iteration"] = 2
    _nudge(model, optimizer, 2)
    with caplog.at_level(logging.WARNING, logger="r3m"):
        rl_verify.guard_check(cfg, run, "rl", policy, optimizer, state)  # 5 points below: restored
    params, opt = _clone(model, optimizer)
    assert params.keys() == best[0].keys() and all(torch.equal(v, best[0][k]) for k, v in params.items())
    assert opt.keys() == best[1].keys()
    assert all(torch.equal(v, best[1][i][k]) for i, s in opt.items() for k, v in s.items())
    g = state["guard"]
    assert g["rollbacks"] == 1 and g["evaluations"] == [[0, 0.60], [1, 0.59], [2, 0.55]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "0.550" in warnings[0] and "0.600" in warnings[0]
    assert (g["stopped"] == warnings[0]) if action == "stop" else g["stopped"] is None


def test_a_run_rolls_back_and_logs_it(tmp_path, monkeypatch):
    """Through main: a forced drop at iteration 2 is rolled back, training goes on, the counts and the
    KL options reach the metrics and the update."""
    _scripted(monkeypatch, [0.5, 0.5, 0.2, 0.5])
    seen = []
    real = rl_verify.clipped_objective

    def spy(*args):
        seen.append(args[-2:])
        return real(*args)

    monkeypatch.setattr(rl_verify, "clipped_objective", spy)
    m = rl_verify.main(_cfg(tmp_path, "rb", init=_init_ckpt(tmp_path), distill=False, iterations=3, guard_every=1,
                            kl_estimator="k1", kl_clamp=1.5))
    assert m["rollbacks"] == 1 and [h["rl/rollbacks"] for h in m["history"]] == [0.0, 1.0, 1.0]
    assert [e for _, e in m["guard"]["rl"]["evaluations"]] == [0.5, 0.5, 0.2, 0.5]
    assert len(m["history"]) == 3 and set(seen) == {("k1", 1.5)}
    assert f"rollbacks 1, zero-variance groups {m['zero_variance_groups']}" in m["results_table"]
    assert "tool precision" in m["results_table"].split("at the end, on levels")[1]
    for key in ("rollbacks", "zero_variance_groups", "void_turns", "success", "reward_start", "reward_end",
                "greedy_start", "greedy_end", "tool_precision", "tool_recall", "calls_by_level", "tool_free_by_level",
                "unneeded_call_rate", "distill"):
        assert key in m, key
    logged = [json.loads(line) for f in (tmp_path / "rb").rglob("*.jsonl") for line in f.read_text().splitlines()]
    assert any({"rl/rollbacks", "rl/void_turns", "rl/zero_variance_groups", "rl/guard_success"} <= set(r) for r in logged)


def test_guard_action_stop_ends_the_run_before_distillation(tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.5, 0.2])
    m = rl_verify.main(_cfg(tmp_path, "stop", init=_init_ckpt(tmp_path), iterations=3, iterations_after=1,
                            guard_every=1, guard_action="stop", distill=True))
    assert m["rollbacks"] == 1 and len(m["history"]) == 1 and m["guard"]["rl"]["stopped"]
    assert m["distill"] == {} and "after_distill" not in m["phases"] and list(m["guard"]) == ["rl"]


def test_the_guard_plays_guard_n_train_instances_per_level(tmp_path, monkeypatch):
    seen = {}
    real = rl_verify.evaluate_family

    def spy(policy, family, **kw):
        seen.update(kw)
        return real(policy, family, **kw)

    monkeypatch.setattr(rl_verify, "evaluate_family", spy)
    cfg = _cfg(tmp_path, "n", init=_init_ckpt(tmp_path), guard_n=3, levels=(1, 2))
    success = rl_verify.guard_success(cfg, Policy(tiny_model(), SPEC, K=2))
    assert seen["n_per_level"] == 3 and seen["split"] == "train" and seen["allow_tools"] and seen["levels"] == (1, 2)
    assert success * 6 == pytest.approx(round(success * 6))


def test_the_new_options_parse_and_bad_values_are_rejected(tmp_path):
    cfg = parse_config(rl_verify.Config, ["--env", ENV, "--kl-estimator", "k3", "--kl-clamp", "0", "--guard-every", "0",
                                          "--guard-drop", "0.05", "--guard-action", "stop", "--guard-n", "7"])
    assert (cfg.kl_estimator, cfg.kl_clamp, cfg.guard_every, cfg.guard_drop, cfg.guard_action, cfg.guard_n) == (
        "k3", 0.0, 0, 0.05, "stop", 7)
    default = rl_verify.Config(env=ENV)
    assert default.kl_estimator == "k2" and default.kl_clamp > 0 and default.guard_every > 0
    for bad in (dict(kl_estimator="k4"), dict(guard_action="pause"), dict(kl_clamp=-1.0), dict(guard_drop=-0.1),
                dict(guard_every=-1), dict(guard_n=-1)):
        with pytest.raises(ValueError):
            rl_verify.Config(env=ENV, **bad)


# -- counts of an iteration -----------------------------------------------------------------------------
def test_zero_variance_groups_and_void_turns_are_counted(tmp_path, monkeypatch):
    budget = Episode(0, TOY, 1, tool_calls=3, truncated=True,
                     turns=[Turn("n:1", 1, torch.tensor([EOS_ID]), 0.0, 1, 0.0, action=GOOD[0])])  # never executed
    empty = _episode("n:5", [], "", False)
    groups = [[_episode("n:1", [], "1", True), _episode("n:1", [], "1", True)],  # all solved alike: no variance
              [_episode("n:2", [], "2", True), _episode("n:2", [BAD, GOOD], "2", True)],  # 1 and 1 - 2 calls
              [_episode("n:3", [], "7", False), _episode("n:3", [], "8", False)],  # all failed: no variance
              [budget, empty]]  # -3 calls and 0
    assert [void_turns(e) for g in groups for e in g] == [0, 0, 0, 1, 0, 0, 1, 1]
    episodes = [e for g in groups for e in g]
    monkeypatch.setattr(rl_verify, "rollout", lambda *a: (episodes, [1, 1, 2, 2]))
    monkeypatch.setattr(rl_verify, "reference_log_probs", lambda ref, eps: torch.zeros(sum(len(e.turns) for e in eps)))
    kept = []
    monkeypatch.setattr(rl_verify, "update", lambda cfg, it, policy, opt, batch, *a: kept.append(batch) or {})
    cfg = _cfg(tmp_path, "z", init=_init_ckpt(tmp_path), groups=4, group_size=2, curriculum=False)
    policy = Policy(tiny_model(), SPEC, K=2)
    import types

    run = types.SimpleNamespace(main=True, dir=tmp_path)  # the little of a Run the iteration reads
    stats = rl_verify.rl_iteration(cfg, 0, policy, policy, None, None, None, None, (1, 2), run, {})
    assert (tmp_path / "episodes.jsonl").exists()  # the verified rollouts, for Stage 4's buffer
    assert stats["rl/zero_variance_groups"] == 2 and stats["rl/zero_variance_share"] == 0.5
    assert stats["rl/void_turns"] == 3 and stats["rl/void_turn_share"] == pytest.approx(3 / 10)
    assert kept[0].episodes == groups[1] + groups[3]  # the groups with variance are learned from


# -- need-based tool metrics ------------------------------------------------------------------------------
def _pairs(spec):
    """(level, called, tool-free answer right) -> the same instance played with and without tools."""
    with_tools, without = [], []
    for k, (level, called, alone) in enumerate(spec):
        w = _episode(f"n:{k}", [GOOD] if called else [], str(k), True)
        wo = _episode(f"n:{k}", [], str(k) if alone else "x", alone)
        w.difficulty = wo.difficulty = level
        with_tools.append(w)
        without.append(wo)
    return with_tools, without


def test_need_based_metrics_count_only_levels_the_tool_free_answer_often_solves():
    # level 1: tool-free right on 3 of 4; level 2: on 1 of 4 (every call there looks needed)
    w, wo = _pairs([(1, True, False), (1, True, True), (1, False, True), (1, False, True),
                    (2, True, False), (2, True, False), (2, True, False), (2, False, True)])
    m = need_based_metrics(w, wo)
    assert m["levels"] == [1] and m["n"] == 4 and m["reason"] is None
    assert m["precision"] == pytest.approx(1 / 2)  # 2 calls on level 1, one needed
    assert m["recall"] == 1.0 and m["unneeded_call_rate"] == pytest.approx(1 / 3)
    assert m["calls_by_level"] == {1: 0.5, 2: 0.75} and m["tool_free_by_level"] == {1: 0.75, 2: 0.25}
    assert tool_metrics(w, wo)["need_based"] == m
    assert tool_metrics(w, wo)["precision"] == pytest.approx(4 / 5)  # all levels: inflated by level 2
    # a level exactly at 0.5 does not qualify, and a level below: not measurable, with the reason
    w, wo = _pairs([(1, True, False), (1, True, True), (2, True, False), (2, True, False)])
    none = need_based_metrics(w, wo)
    assert none["levels"] == [] and none["precision"] is None and none["recall"] is None
    assert none["unneeded_call_rate"] is None and "no level" in none["reason"] and "0.50" in none["reason"]
    # qualifying levels without calls: precision cannot be measured, the others can
    w, wo = _pairs([(1, False, True), (1, False, True), (1, False, False)])
    quiet = need_based_metrics(w, wo, min_tool_free=0.6)
    assert quiet["precision"] is None and quiet["recall"] == 0.0 and quiet["unneeded_call_rate"] == 0.0
    assert "precision" in quiet["reason"]


# -- "use the result" under RL (item 1) -----------------------------------------------------------------
def test_a_sampled_call_then_use_the_result_sends_the_verified_answer_whatever_the_weights():
    """As RL rollouts play (sampled, tools on): call, then "use the result": the env gets the tool's
    verified answer. The used result's log-probability is the choice's alone (nothing written, no
    gradient to the token head), and changing every other weight, as an RL update would, leaves the
    sent text the verified answer."""
    spec = task_spec("arithmetic", (1,))
    model = tiny([spec])
    names = list(model.cfg.tool_names)
    use, calc = use_result_choice(model.cfg.tool_names), 1 + names.index("calculator")
    with torch.no_grad():
        model.tool_head.weight.zero_()
        model.tool_head.bias.fill_(-20.0)
        model.tool_head.bias[calc] = 0.0
        model.tool_head.bias[use] = 10.0  # preferred once a result is there
    policy = Policy(model, spec, K=2)
    for trial in range(2):
        vec = make_vec("arithmetic-v0", 4, call_budget=2)
        try:
            with torch.no_grad():
                eps = run_episodes(policy, vec, [0, 1, 2, 3], {"split": "train", "difficulty": 2}, sample=True,
                                   generator=torch.Generator().manual_seed(trial))
        finally:
            vec.close()
        for ep in eps:
            assert [t.tool for t in ep.turns] == [calc, use] and ep.correct and ep.tool_calls == 1
            assert ep.turns[-1].action == split_transcript(ep.turns[-1].observation).last_result
            assert (ep.turns[-1].payload == PAD_ID).all()
        scored = rescore(policy, eps)
        used = torch.tensor([t.tool == use for e in eps for t in e.turns])
        model.zero_grad()
        scored.log_prob[used].sum().backward()
        assert model.head.weight.grad is None or not model.head.weight.grad.any()
        with torch.no_grad():  # an arbitrary "update" of everything but the choice
            for name, p in model.named_parameters():
                if not name.startswith("tool_head."):
                    p.add_(torch.randn_like(p))
        model.zero_grad()
    assert tools.is_call(eps[0].turns[0].action)
