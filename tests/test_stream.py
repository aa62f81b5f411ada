"""Streamed episodes (``TextTaskEnv(stream=True)``): the past is never in the observation.

Covered: observations hold only the current step (never an earlier sentence or chunk), the
Gymnasium contract (check_env, sync and async vector envs), expert play on both splits and all
levels, the no-op, tool calls, per-chunk scoring, distractors in the env, and the errors.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from r3m import envs
from r3m.envs.base import StreamStep

STREAM_ENVS = [("memory-v0", {}), ("memory-v0", {"distractors": 0.5}), ("prefix-v0", {}),
               ("prefix-v0", {"chunk": 3})]
IDS = ["memory", "memory-distractors", "prefix", "prefix-chunk3"]


def _play(env, actions):
    """Step through ``actions``; every step but the last gives reward 0 and goes on."""
    out = []
    for k, action in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((obs, reward, terminated, info))
        last = k == len(actions) - 1
        assert terminated == last and not truncated and (last or reward == 0.0), (k, info)
    return out


@pytest.mark.parametrize("env_id, kwargs", STREAM_ENVS, ids=IDS)
def test_observation_is_only_the_current_step(env_id, kwargs):
    """Each observation is one step's text: one line of the whole prompt (memory) or one chunk
    (prefix), and never contains an earlier, different step."""
    env = gym.make(env_id, stream=True, **kwargs).unwrapped
    whole = gym.make(env_id, **kwargs).unwrapped
    for i in range(30):
        options = {"index": i, "split": ("train", "test")[i % 2]}
        obs, info = env.reset(options=options)
        prompt, _ = whole.reset(options=options)
        assert env.instance == whole.instance  # same instance as the whole-prompt episode
        seen = [obs]
        for action in env.expert_actions(False)[:-1]:
            obs, *_ = env.step(action)
            seen.append(obs)
        assert len(seen) == info["stream_steps"] > 1
        for k, obs in enumerate(seen):
            assert "\n" not in obs and env.observation_space.contains(obs)
            assert all(earlier not in obs for earlier in seen[:k] if earlier != obs), (k, obs)
        if env_id == "memory-v0":
            assert seen == prompt.split("\n")
        else:
            assert seen[0].startswith("prefix: ") and "prefix: " + "".join(seen)[8:] == prompt


@pytest.mark.parametrize("env_id, kwargs", STREAM_ENVS, ids=IDS)
def test_check_env(env_id, kwargs):
    env = gym.make(env_id, stream=True, **kwargs)
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id, kwargs", STREAM_ENVS[1:3], ids=IDS[1:3])
def test_sync_and_async_vector_envs_agree(env_id, kwargs):
    sync = gym.make_vec(env_id, 2, vectorization_mode="sync", stream=True, **kwargs)
    asyn = gym.make_vec(env_id, 2, vectorization_mode="async", stream=True, **kwargs)
    try:
        obs_sync, _ = sync.reset(seed=[5, 6])
        obs_async, _ = asyn.reset(seed=[5, 6])
        assert obs_async == obs_sync and all(obs_sync)
        experts = sync.call("expert_actions", False)
        assert experts == asyn.call("expert_actions", False)
        for k in range(3):  # no-ops on memory lines, chunk answers on prefix (then an autoreset)
            actions = tuple(a[k] if k < len(a) else "" for a in experts)
            out_sync, out_async = sync.step(actions), asyn.step(actions)
            assert out_async[0] == out_sync[0]
            assert np.array_equal(out_async[1], out_sync[1])
            assert out_async[4]["stream_step"].tolist() == out_sync[4]["stream_step"].tolist()
    finally:
        sync.close()
        asyn.close()


@pytest.mark.parametrize("family, kwargs", [("memory", {}), ("memory", {"distractors": 1.0}),
                                            ("prefix", {}), ("prefix", {"chunk": 1})])
def test_expert_reaches_reward_one_on_both_splits_and_all_levels(family, kwargs):
    """``check_family``-style play: every observation and action within its space, reward 1 at the end."""
    env = gym.make(f"{family}-v0", stream=True, **kwargs).unwrapped
    for split in ("train", "test"):
        for level in env.family.levels:
            for i in range(4):
                obs, info = env.reset(options={"split": split, "difficulty": level, "index": i})
                assert info["split"] == split and env.observation_space.contains(obs)
                actions = env.expert_actions(True)
                assert actions == env.expert_actions(False) and len(actions) == info["stream_steps"]
                assert all(env.action_space.contains(a) for a in actions)
                steps = _play(env, actions)
                assert all(env.observation_space.contains(obs) for obs, *_ in steps)
                _, reward, _, info = steps[-1]
                assert reward == 1.0 and info["correct"] and all(info["stream_correct"])
                assert envs.split_of(env.instance.key) == split


def test_memory_noop_is_accepted_and_only_the_question_is_scored():
    env = gym.make("memory-v0", stream=True, distractors=0.5, difficulty=2).unwrapped
    obs, info = env.reset(seed=3)
    assert info["stream_step"] == 0 and info["stream_kind"] in ("fact", "distractor")
    actions = env.expert_actions(False)
    assert set(actions[:-1]) == {""} and actions[-1] == env.instance.answer
    kinds, support = [info["stream_kind"]], [info["stream_support"]]
    for k in range(len(actions) - 1):
        action = "" if k % 2 else "anything at all, even <call"  # any action is accepted here
        obs, reward, terminated, truncated, info = env.step(action)
        assert (reward, terminated, truncated, info["stream_step"]) == (0.0, False, False, k + 1)
        assert "correct" not in info and info["stream_correct"] == ()
        kinds.append(info["stream_kind"])
        support.append(info["stream_support"])
    # the supporting facts, and only they, are marked (the question and distractors never)
    facts = [i for i, kind in enumerate(kinds) if kind == "fact"]
    assert [i for i, s in enumerate(support) if s] == [facts[n - 1] for n in env.instance.data["supporting"]]
    assert kinds[-1] == "question" and "distractor" in kinds and kinds[:-1].count("question") == 0
    assert kinds[:-1] == list(env.instance.data["kinds"])
    wrong = next(place for place in ("garden", "kitchen") if place != env.instance.answer)
    _, reward, terminated, _, info = env.step(wrong)
    assert (reward, terminated, info["correct"], info["stream_correct"]) == (0.0, True, False, (False,))
    with pytest.raises(RuntimeError, match="reset"):
        env.step("")


def test_tool_call_shows_only_the_call_and_does_not_advance():
    env = gym.make("memory-v0", stream=True, render_mode="ansi").unwrapped
    first, _ = env.reset(seed=0)
    assert env.render() == first
    obs, reward, terminated, _, info = env.step("<call>calculator 2+3</call>")
    assert obs == "<call>calculator 2+3</call><result>5</result>" and first not in obs
    assert (reward, terminated, info["stream_step"], info["tool_calls"]) == (0.0, False, 0, 1)
    assert env.observation_space.contains(obs) and env.render() == obs
    obs, *_, info = env.step("")  # the answer to the step shown before the call
    assert info["stream_step"] == 1 and obs == env.instance.prompt.split("\n")[1]


def test_prefix_chunks_are_scored_each_and_together():
    for partial, want in ((False, 0.0), (True, None)):
        env = gym.make("prefix-v0", stream=True, chunk=4, difficulty=2, partial_credit=partial).unwrapped
        obs, info = env.reset(seed=1)
        answers = env.expert_actions(False)
        assert obs == "prefix: " + env.instance.data["bits"][:4] and len(answers) == info["stream_steps"] >= 3
        bad = answers[:1] + ["".join("1" if b == "0" else "0" for b in answers[1])] + answers[2:]
        steps = _play(env, bad)
        info = steps[-1][3]
        assert info["stream_correct"] == (True, False) + (True,) * (len(answers) - 2)
        n = len(env.instance.data["bits"])
        assert steps[-1][1] == (want if want is not None else (n - len(answers[1])) / n) and not info["correct"]
    env.reset(seed=1)
    _, reward, terminated, _, info = env.step("0" * 70)  # longer than max_answer_chars: ends, 0
    assert terminated and reward == 0.0 and "too long" in info["reason"]


def test_distractors_in_the_whole_prompt():
    plain = gym.make("memory-v0", difficulty=3).unwrapped
    noisy = gym.make("memory-v0", difficulty=3, distractors=0.5).unwrapped
    zero = gym.make("memory-v0", difficulty=3, distractors=0.0).unwrapped
    for seed in range(10):
        prompt, _ = plain.reset(seed=seed)
        assert zero.reset(seed=seed)[0] == prompt
        noisy_prompt, _ = noisy.reset(seed=seed)
        assert noisy_prompt == noisy.reset(seed=seed)[0] and noisy_prompt != prompt
        kinds = noisy.instance.data["kinds"]
        lines = noisy_prompt.split("\n")
        assert [line for line, kind in zip(lines, kinds) if kind == "fact"] == prompt.split("\n")[:-1]
        assert noisy.instance.answer == plain.instance.answer and noisy.instance.key == plain.instance.key
        assert noisy.step(plain.instance.answer)[1] == 1.0


@pytest.mark.parametrize("make, error, match", [
    (lambda: gym.make("arithmetic-v0", stream=True), ValueError, "arithmetic: streaming is not supported"),
    (lambda: gym.make("prefix-v0", distractors=0.5), ValueError, "does not support distractors"),
    (lambda: gym.make("memory-v0", distractors=1.5), ValueError, "at most 1.0"),
    (lambda: gym.make("memory-v0", distractors=-0.1), ValueError, "at most 1.0"),
    (lambda: gym.make("memory-v0", distractors=float("nan")), ValueError, "finite"),
    (lambda: gym.make("memory-v0", stream="yes"), TypeError, "bool"),
    (lambda: gym.make("prefix-v0", stream=True, chunk=0), ValueError, "chunk"),
])
def test_bad_arguments_fail_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_a_family_without_streaming_says_so():
    with pytest.raises(NotImplementedError, match="arithmetic: streaming is not supported"):
        envs.make_family("arithmetic").stream(envs.make_family("arithmetic").instance("train", 0))
    with pytest.raises(NotImplementedError, match="distractors are not supported"):
        envs.make_family("prefix").with_distractors(envs.make_family("prefix").instance("train", 0), 0.5)


def test_a_broken_stream_is_refused_at_reset():
    class Unscored(type(envs.make_family("prefix"))):
        def stream(self, instance):
            return [StreamStep("prefix: 0", "chunk", None)]

    env = envs.TextTaskEnv(Unscored(), stream=True)
    with pytest.raises(ValueError, match="does not end with a scored step"):
        env.reset(seed=0)
