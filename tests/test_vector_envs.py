"""Every text env gives the same batches under Gymnasium's async vector env as under its sync one.

The upstream bug this guards against (Gymnasium 1.x, reported with the reproducer below):
``AsyncVectorEnv`` with ``shared_memory=True`` (the default of ``make_vec(...,
vectorization_mode="async")``) calls ``read_from_shared_memory`` once, in its constructor, and
returns that object after every reset and step. That is a live numpy view for ``Box`` and
``Discrete``, but for ``Text`` a tuple of strings decoded from the still zero-filled buffer: so
every observation is ``max_length`` copies of the charset's first character (``"0"`` for the
default charset, ``"\\n"`` for ours), whatever the workers wrote. Minimal reproducer::

    import gymnasium as gym

    class Echo(gym.Env):
        observation_space = gym.spaces.Text(8)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return "abc", {}

        def step(self, action):
            return "abc", 0.0, True, False, {}

    vec = gym.vector.AsyncVectorEnv([Echo, Echo])
    print(vec.reset(seed=0)[0])  # ('00000000', '00000000'), not ('abc', 'abc')

Our envs use ``r3m.envs.PrintableText``, which registers a live read (``envs/spaces.py``).
"""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest

from r3m import envs
from r3m.envs.spaces import PrintableText, SharedTexts

TEXT_ENV_IDS = sorted(envs.ENV_IDS)


def _first_expert_actions(vec) -> tuple[str, ...]:
    """Each sub-env's first expert action with tools: a tool call where the family has a tool."""
    return tuple(actions[0] for actions in vec.call("expert_actions", True))


@pytest.mark.parametrize("env_id", TEXT_ENV_IDS)
def test_async_equals_sync(env_id):
    sync = gym.make_vec(env_id, 2, vectorization_mode="sync")
    asyn = gym.make_vec(env_id, 2, vectorization_mode="async")  # default arguments: shared memory on
    try:
        seeds = [3, 4]
        obs_sync, _ = sync.reset(seed=seeds)
        obs_async, _ = asyn.reset(seed=seeds)
        assert obs_async == obs_sync and isinstance(obs_async, tuple)
        for seed, obs in zip(seeds, obs_async):  # the real prompts, not padding
            assert obs == gym.make(env_id).unwrapped.reset(seed=seed)[0]
            assert len(set(obs)) > 3 and asyn.single_observation_space.contains(obs)
        actions = _first_expert_actions(sync)
        assert actions == _first_expert_actions(asyn)
        out_sync, out_async = sync.step(actions), asyn.step(actions)
        assert out_async[0] == out_sync[0]
        for got, want in zip(out_async[1:4], out_sync[1:4]):
            assert np.array_equal(got, want)
        assert out_async[4]["tool_calls"].tolist() == out_sync[4]["tool_calls"].tolist()
        for action, obs in zip(actions, out_async[0]):  # a call's result came through
            assert ("<result>" in obs) == action.startswith("<call>")
    finally:
        sync.close()
        asyn.close()


def test_shared_texts_is_a_live_view_and_deepcopies_to_a_tuple():
    import multiprocessing as mp

    from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory, write_to_shared_memory

    space = PrintableText(16)
    memory = create_shared_memory(space, n=2, ctx=mp)
    view = read_from_shared_memory(space, memory, n=2)
    assert isinstance(view, SharedTexts) and tuple(view) == ("", "")  # unwritten slots read empty
    write_to_shared_memory(space, 0, "calc: 1+2", memory)
    write_to_shared_memory(space, 1, "a\nb ~", memory)
    assert view == ("calc: 1+2", "a\nb ~") and view[1] == "a\nb ~" and len(view) == 2 and view != "ab"
    snapshot = copy.deepcopy(view)
    write_to_shared_memory(space, 0, "x", memory)
    assert snapshot == ("calc: 1+2", "a\nb ~") and isinstance(snapshot, tuple) and view[0] == "x"


class _Echo(gym.Env):
    """The upstream reproducer of the module docstring, as a test."""

    observation_space = gym.spaces.Text(8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "abc", {}

    def step(self, action):
        return "abc", 0.0, True, False, {}


@pytest.mark.xfail(strict=False, reason="documents the upstream Gymnasium bug (plain Text in AsyncVectorEnv "
                                        "with shared memory); passes once Gymnasium fixes it")
def test_upstream_reproducer_plain_text_async():
    vec = gym.vector.AsyncVectorEnv([_Echo, _Echo])
    try:
        assert vec.reset(seed=0)[0] == ("abc", "abc")
    finally:
        vec.close()
