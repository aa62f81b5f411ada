"""A user adds a task family and a tool from their own module, without editing the package.

This file is the README's plug-in guide, executed: define a family (generator, oracle,
verifier, tool use), a tool, register both, check the env, replay the expert, and train.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

from r3m import envs
from r3m import tools
from r3m.envs import Instance, TaskFamily
from r3m.verifiers import RIGHT, Verdict, never_raises, wrong


def reverse_tool(args: str, budget: int) -> tools.ToolResult:
    word = args.strip()
    if not word.isalpha() or len(word) > budget:
        return tools.ToolResult.fail(f"expected one word of at most {budget} letters")
    return tools.ToolResult(True, word[::-1], cost=len(word))


@never_raises
def verify_reverse(word: str, answer: str) -> Verdict:
    """Correct iff the answer is the word reversed; partial credit: fraction of letters in place."""
    got, want = answer.strip(), word[::-1]
    if got == want:
        return RIGHT
    same = sum(a == b for a, b in zip(got, want)) / len(want) if len(got) == len(want) else 0.0
    return wrong("not the word reversed", same)


class ReverseFamily(TaskFamily):
    name = "reverse_word"
    levels = (1, 2)
    tool = "reverse_tool"
    max_prompt_chars = 32

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        n = int(rng.integers(2, 4)) + 3 * (difficulty - 1)
        word = "".join(rng.choice(list("abcdefghij"), size=n))
        return Instance(self.name, difficulty, f"reverse: {word}", word[::-1], key=word, data={"word": word})

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return verify_reverse(instance.data["word"], answer)

    def tool_args(self, instance: Instance) -> str:
        return instance.data["word"]


tools.register_tool("reverse_tool", reverse_tool, budget=64, description="reverse one word")
ENV_ID = envs.register_task("reverse_word", ReverseFamily)


def test_user_env_works_like_a_builtin():
    assert ENV_ID == "reverse_word-v0" and "reverse_tool" in tools.list_tools()
    check_env(gym.make(ENV_ID).unwrapped, skip_render_check=True)
    env = gym.make(ENV_ID).unwrapped
    for i in range(20):
        for use_tools in (False, True):
            env.reset(options={"index": i})
            for action in env.expert_actions(use_tools):
                obs, reward, terminated, truncated, info = env.step(action)
            assert terminated and reward == 1.0
    assert "<call>reverse_tool" in obs and "<result>" in obs


def test_user_task_trains_with_imitate(tmp_path):
    from r3m.train import imitate

    metrics = imitate.main(imitate.Config(
        stage="1", families=("reverse_word",), levels=(1,), steps=8, batch_size=8, eval_n=3, eval_ks=(1, 2),
        k_train=2, baseline=False, tensorboard=False, progress=False, threads=1, out=str(tmp_path / "run")))
    assert set(metrics["accuracy_vs_k"]) == {"reverse_word"}
    assert "reverse_word" in metrics["tools"]
