"""Contract tests run over every registered text env (Gymnasium-style, one parametrized file)."""

from __future__ import annotations

import hashlib
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r3m import envs

TEXT_ENV_IDS = sorted(envs.ENV_IDS)
FAMILIES = sorted({envs.ENV_IDS[i] for i in TEXT_ENV_IDS})
N_PER_LEVEL = 200


def test_builtin_ids_registered():
    for env_id in ["sudoku-v0", "arithmetic-v0", "listops-v0", "logic-v0", "dsl-v0", "memory-v0",
                   "instruct-v0", "sudoku-grid-v0"]:
        assert env_id in gym.registry


@pytest.mark.parametrize("env_id", TEXT_ENV_IDS + ["sudoku-grid-v0"])
def test_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    doc = type(env.unwrapped).__doc__ or ""
    for section in ("Observation", "Action", "Reward", "Episode End"):
        assert section in doc, f"{env_id} docstring lacks a {section} section"


@pytest.mark.parametrize("env_id", TEXT_ENV_IDS + ["sudoku-grid-v0"])
def test_check_env_has_nothing_to_say_about_render_fps(env_id):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gym.make(env_id).unwrapped, skip_render_check=True)
    assert not [w for w in caught if "fps" in str(w.message)]
    assert gym.make(env_id).unwrapped.metadata["render_fps"] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_scores_one_and_garbage_zero(family):
    """200 seeded instances per level: both demonstrations end with reward 1; garbage gets 0."""
    env = gym.make(f"{family}-v0").unwrapped
    fam = env.family
    for level in fam.levels:
        for i in range(N_PER_LEVEL):
            obs, info = env.reset(options={"difficulty": level, "index": i, "split": ("train", "test")[i % 2]})
            assert info["difficulty"] == level and all(32 <= ord(c) < 127 or c == "\n" for c in obs)
            variants = (False, True) if fam.tool and i < _tool_demos(family) else (False,)
            for use_tools in variants:
                env.reset(options={"difficulty": level, "index": i, "split": ("train", "test")[i % 2]})
                reward, terminated = _play(env, env.expert_actions(use_tools))
                assert terminated and reward == 1.0, (family, level, i, use_tools)
            env.reset(options={"difficulty": level, "index": i})
            _, reward, terminated, _, info = env.step("garbage !! \x00")
            assert terminated and reward == 0.0 and info["score"] == 0.0 and not info["correct"]


def _tool_demos(family: str) -> int:
    # Tool demonstrations run a real solver or search each time; a subset per level keeps CI fast.
    return {"sudoku": 40, "dsl": 40, "logic": 80}.get(family, N_PER_LEVEL)


def _play(env, actions):
    reward, terminated = 0.0, False
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        assert "answer" not in info and not truncated
    return reward, terminated


@pytest.mark.parametrize("family", FAMILIES)
def test_determinism_and_split_disjointness(family):
    fam = envs.make_family(family)
    a = [fam.instance("train", i, seed=7) for i in range(100)]
    b = [fam.instance("train", i, seed=7) for i in range(100)]
    assert a == b
    assert [x.prompt for x in a] != [fam.instance("train", i, seed=8).prompt for i in range(100)]
    digest = lambda inst: hashlib.sha256(inst.prompt.encode()).hexdigest()  # noqa: E731
    train = {digest(fam.instance("train", i)) for i in range(400)}
    test = {digest(fam.instance("test", i)) for i in range(400)}
    assert train.isdisjoint(test)
    assert all(envs.split_of(fam.instance("test", i).key) == "test" for i in range(50))


@pytest.mark.parametrize("env_id", TEXT_ENV_IDS)
def test_reset_seed_gives_same_instance(env_id):
    env = gym.make(env_id)
    assert env.reset(seed=5)[0] == env.reset(seed=5)[0]
    first = [env.reset(seed=11)[0]] + [env.reset()[0] for _ in range(3)]
    again = [env.reset(seed=11)[0]] + [env.reset()[0] for _ in range(3)]
    assert first == again


@pytest.mark.parametrize("env_id", TEXT_ENV_IDS)
def test_oracle_never_in_observation_or_info(env_id):
    env = gym.make(env_id).unwrapped
    for i in range(20):
        obs, info = env.reset(options={"index": i})
        answer = env._instance.answer
        assert answer not in info.values()
        if len(answer) >= 12:  # short answers (a room, a number) may legitimately occur in a prompt
            assert answer not in obs


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_envs(mode):
    vec = gym.make_vec("arithmetic-v0", num_envs=2, vectorization_mode=mode,
                       vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP,
                                      **({"shared_memory": False} if mode == "async" else {})})
    try:
        obs, info = vec.reset(seed=[1, 2])
        assert len(obs) == 2 and all(isinstance(o, str) for o in obs)
        actions = tuple(vec.call("expert_actions", False)[j][-1] for j in range(2))
        obs2, reward, terminated, truncated, info = vec.step(actions)
        assert np.all(reward == 1.0) and np.all(terminated)
        assert "final_obs" in info and all(isinstance(o, str) for o in obs2)  # already reset (SAME_STEP)
    finally:
        vec.close()


# -- bad input -----------------------------------------------------------------------------
_any_text = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=300),
    st.sampled_from(["", " ", "<call>", "<call></call>", "<call>sudoku_solver </call>", "\x00" * 50,
                     "<call>calculator __import__('os').system('x')</call>", "9" * 5000, "[" * 2000]),
)


@pytest.mark.parametrize("env_id", TEXT_ENV_IDS)
def test_step_fuzz_never_raises(env_id):
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)

    @settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(action=_any_text)
    def run(action):
        if env._done:
            env.reset()
        obs, reward, terminated, truncated, info = env.step(action)
        assert reward in (0.0, 1.0) and isinstance(obs, str) and env.observation_space.contains(obs)
        assert all(32 <= ord(c) < 127 or c == "\n" for c in obs)
        if not env.action_space.contains(action):
            assert terminated and reward == 0.0 and "outside the action space" in info["reason"]
        if terminated or truncated:
            assert isinstance(info["reason"], str) and info["reason"]

    run()


@pytest.mark.parametrize("family", FAMILIES)
def test_verifier_fuzz_never_raises(family):
    fam = envs.make_family(family)
    inst = fam.instance("train", 0)

    @settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(answer=_any_text)
    def run(answer):
        verdict = fam.verify(inst, answer)
        assert 0.0 <= verdict.score <= 1.0 and isinstance(verdict.reason, str)
        assert verdict.score == 1.0 or not verdict.correct

    run()
    for bad in (None, 3, b"bytes", "x" * 200_000):
        assert fam.verify(inst, bad).score == 0.0


def test_call_budget_truncates_with_zero_reward():
    env = gym.make("arithmetic-v0", call_budget=2).unwrapped
    env.reset(seed=0)
    for _ in range(2):
        _, reward, terminated, truncated, info = env.step("<call>calculator 1+1</call>")
        assert (reward, terminated, truncated) == (0.0, False, False)
    _, reward, terminated, truncated, info = env.step("<call>calculator 1+1</call>")
    assert (reward, terminated, truncated) == (0.0, False, True)
    assert "budget" in info["reason"] and info["tool_calls"] == 3


def test_malformed_and_disabled_calls_count_and_report():
    env = gym.make("arithmetic-v0", tools_enabled=False).unwrapped
    obs0, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("<call>calculator 1+1</call>")
    assert info["malformed_calls"] == 1 and "not available" in obs[len(obs0):]
    env = gym.make("arithmetic-v0").unwrapped
    env.reset(seed=0)
    obs, *_ , info = env.step("<call>calculator 1+1")
    assert info["malformed_calls"] == 1 and obs.endswith("</result>") and "error:" in obs


def test_step_after_end_and_bad_options_raise_clearly():
    env = gym.make("arithmetic-v0").unwrapped
    env.reset(seed=0)
    env.step("0")
    with pytest.raises(RuntimeError, match="reset"):
        env.step("0")
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"difficulty": 1, "bogus": 1})
    with pytest.raises(ValueError, match="split"):
        env.reset(options={"split": "validation"})


# -- the action contract ---------------------------------------------------------------------
@pytest.mark.parametrize("action", [5, None, b"42", ["42"], 4.2])
def test_non_str_action_is_a_programming_error(action):
    env = gym.make("arithmetic-v0").unwrapped
    env.reset(seed=0)
    with pytest.raises(TypeError, match="action is a str"):
        env.step(action)
    _, reward, terminated, _, _ = env.step(env.expert_actions(False)[-1])  # the episode is still running
    assert terminated and reward == 1.0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("make_action, why", [
    (lambda answer: answer + "\t", r"'\\t' \(U\+0009\) is not printable ASCII"),
    (lambda answer: answer + "\u00e9", r"'\u00e9' \(U\+00E9\) is not printable ASCII"),
    (lambda answer: "<call>calculator 1\u00b2</call>", r"'\u00b2' \(U\+00B2\)"),
    (lambda answer: answer + " " * 1100, r"1\d{3} characters \(at most 1024\)"),
    (lambda answer: "<call>calculator " + "1+" * 600 + "1</call>", r"characters \(at most 1024\)"),
])
def test_action_outside_the_action_space_ends_with_zero(family, make_action, why):
    """Policy text is untrusted: outside the action space it ends the episode, never crashes, and
    never scores, even when the verifier (which ignores whitespace) would accept it."""
    env = gym.make(f"{family}-v0", partial_credit=True).unwrapped
    obs0, _ = env.reset(seed=1)
    action = make_action(env.expert_actions(False)[-1])
    assert not env.action_space.contains(action)
    obs, reward, terminated, truncated, info = env.step(action)
    assert (reward, terminated, truncated, info["correct"], info["score"]) == (0.0, True, False, False, 0.0)
    assert re.search("action outside the action space: .*" + why, info["reason"]), info["reason"]
    assert obs == obs0 and env.observation_space.contains(obs)


def test_answer_longer_than_max_answer_chars_scores_zero():
    env = gym.make("arithmetic-v0").unwrapped
    env.reset(seed=0)
    answer = env.expert_actions(False)[-1]
    sign = "-" if answer.startswith("-") else ""
    padded = sign + "0" * 1000 + answer.lstrip("-")  # leading zeros: the verifier alone says correct
    assert env.family.verify(env.instance, padded).correct
    _, reward, terminated, _, info = env.step(padded)
    assert reward == 0.0 and terminated
    assert info["reason"] == f"answer too long ({len(padded)} > 16 characters)"
    env.reset(seed=0)
    _, reward, *_ = env.step("  " + answer + "\n")  # surrounding whitespace is not counted
    assert reward == 1.0


def test_calls_are_not_answers_and_observations_stay_in_space():
    """A call longer than max_answer_chars runs as before; full-length calls fill the transcript to at
    most the observation space's bound."""
    env = gym.make("arithmetic-v0", call_budget=3).unwrapped
    obs, _ = env.reset(seed=0)
    call = "<call>calculator " + "+".join(["1"] * 60) + "</call>"
    assert len(call) > env.family.max_answer_chars
    obs, reward, terminated, truncated, info = env.step(call)
    assert obs.endswith("<result>60</result>") and not (terminated or truncated)
    longest = "<call>calculator " + "x" * (1024 - 24) + "</call>"
    for _ in range(2):
        obs, *_ = env.step(longest)
        assert env.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = env.step(longest)  # one past the budget
    assert truncated and env.observation_space.contains(obs)


@pytest.mark.parametrize("prompt, pattern", [
    ("calc: 1\u00d72", r"arithmetic: instance 'ext' has '\u00d7' \(U\+00D7\) in its prompt.*ascii_fold"),
    ("calc: " + "1+" * 40 + "1", "prompt of 87 characters, more than max_prompt_chars=64"),
    ("", "empty"),
])
def test_reset_refuses_a_prompt_outside_the_observation_space(prompt, pattern):
    env = gym.make("arithmetic-v0").unwrapped
    inst = envs.Instance("arithmetic", 1, prompt, "3", "ext", {"expression": "1+2"})
    with pytest.raises(ValueError, match=pattern):
        env.reset(options={"instance": inst})
