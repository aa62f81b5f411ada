"""A user adds a task family and a tool from their own module, without editing the package.

The README's plug-in guide is the code between the markers below, executed as it stands (a test
checks that the README shows exactly this code): a family with its own generator, oracle,
verifier, tool use and causal decoding, text from outside printable ASCII folded in, both
registered and checked by playing the expert; then trained like a built-in family.
"""

from __future__ import annotations

import re
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

# --- plug-in guide start
import numpy as np

from r3m import envs, tools
from r3m.envs import Instance, TaskFamily
from r3m.verifiers import RIGHT, Verdict, never_raises, wrong

WORDS = ("naïveté", "café", "façade", "jalapeño", "crème", "über")  # not printable ASCII


def reverse_tool(args: str, budget: int) -> tools.ToolResult:      # a tool: (args, budget) -> ToolResult
    word = args.strip()
    if not word.isalpha() or len(word) > budget:
        return tools.ToolResult.fail(f"expected one word of at most {budget} letters")
    return tools.ToolResult(True, word[::-1], cost=len(word))


@never_raises                                                       # a verifier: pure, never raises
def verify_reverse(word: str, answer: str) -> Verdict:
    got, want = answer.strip(), word[::-1]
    if got == want:
        return RIGHT
    same = sum(a == b for a, b in zip(got, want)) / len(want) if len(got) == len(want) else 0.0
    return wrong("not the word reversed", same)                    # partial credit: letters in place


class ReverseFamily(TaskFamily):                                    # a family: generator, oracle, verifier
    name, levels, tool = "reverse_word", (1, 2), "reverse_tool"
    decode = "causal"                                               # written token by token ("fill": slots)
    max_prompt_chars, max_answer_chars = 32, 16

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        word = envs.ascii_fold(WORDS[rng.integers(len(WORDS))])     # "naïveté" -> "naivete"
        word += "".join(rng.choice(list("xyz"), size=difficulty))
        return Instance(self.name, difficulty, f"reverse: {word}", word[::-1], key=word, data={"word": word})

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return verify_reverse(instance.data["word"], answer)

    def tool_args(self, instance: Instance) -> str:                 # what the expert passes to the tool
        return instance.data["word"]


tools.register_tool("reverse_tool", reverse_tool, budget=64)        # a duplicate name raises
env_id = envs.register_task("reverse_word", ReverseFamily)          # validated; registers "reverse_word-v0"
envs.check_family("reverse_word", n=10).raise_if_failed()           # expert demos: splits x levels x tools
# --- plug-in guide end

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_shows_this_code():
    code = Path(__file__).read_text().split("# --- plug-in guide start\n")[1].split("# --- plug-in guide end")[0]
    readme = ROOT.joinpath("README.md").read_text()
    block = re.search(r"<!-- plug-in guide -->\n```python\n(.*?)```", readme, re.S)
    assert block and block.group(1) == code


def test_user_env_works_like_a_builtin():
    assert env_id == "reverse_word-v0" and "reverse_tool" in tools.list_tools()
    check_env(gym.make(env_id).unwrapped, skip_render_check=True)
    env = gym.make(env_id).unwrapped
    for i in range(10):
        for use_tools in (False, True):
            obs, _ = env.reset(options={"index": i})
            assert obs.isascii()
            for action in env.expert_actions(use_tools):
                obs, reward, terminated, truncated, info = env.step(action)
            assert terminated and reward == 1.0
    assert "<call>reverse_tool" in obs and "<result>" in obs


class UnfoldedFamily(ReverseFamily):
    name = "reverse_unfolded"

    def generate(self, rng, difficulty):  # forgets ascii_fold: "naïveté" reaches the prompt
        word = WORDS[rng.integers(len(WORDS))] + "x" * difficulty
        return Instance(self.name, difficulty, f"reverse: {word}", word[::-1], key=word, data={"word": word})


class FlooringFamily(ReverseFamily):
    """The expert's answer disagrees with what the tool returns on some instances (as an external
    scorer that floors where the calculator is exact): only playing the tool demonstration shows it."""

    name = "reverse_flooring"

    def answer_from_tool(self, instance, result):
        return result.output.upper() if len(result.output) > 8 else result.output


def test_registration_rejects_non_ascii_text_and_check_family_finds_a_broken_expert():
    with pytest.raises(ValueError, match=r"outside printable ASCII.*ascii_fold"):
        envs.register_task("reverse_unfolded", UnfoldedFamily)
    assert "reverse_unfolded" not in envs.list_families()  # nothing half-registered
    envs.register_task("reverse_flooring", FlooringFamily)
    try:
        report = envs.check_family("reverse_flooring", n=10)
        assert not report.ok and any("reward" in f for f in report.failures)
        with pytest.raises(ValueError):
            report.raise_if_failed()
    finally:
        envs.unregister_task("reverse_flooring")


def test_user_task_trains_with_imitate(tmp_path):
    from r3m.train import imitate

    metrics = imitate.main(imitate.Config(
        stage="1", families=("reverse_word",), levels=(1,), steps=8, batch_size=8, eval_n=3, eval_ks=(1, 2),
        k_train=2, baseline=False, tensorboard=False, progress=False, threads=1, out=str(tmp_path / "run")))
    assert set(metrics["accuracy_vs_k"]) == {"reverse_word"}
    assert metrics["config"]["families"] == ["reverse_word"] and "reverse_word" in metrics["tools"]


def test_a_plugin_module_on_the_command_line(tmp_path, monkeypatch):
    """``--plugin my_tasks`` imports the user's module before the options are read."""
    from r3m.learn.cli import parse_config
    from r3m.train import imitate

    (tmp_path / "my_tasks.py").write_text(
        "from r3m import envs\nfrom r3m.envs import Instance, TaskFamily\nfrom r3m.verifiers import RIGHT, wrong\n"
        "class Echo(TaskFamily):\n    name, levels, max_prompt_chars, max_answer_chars = 'echo_mine', (1,), 16, 8\n"
        "    def generate(self, rng, difficulty):\n        n = str(int(rng.integers(100)))\n"
        "        return Instance(self.name, difficulty, 'echo: ' + n, n, key=n, data={})\n"
        "    def verify(self, instance, answer):\n"
        "        return RIGHT if answer.strip() == instance.answer else wrong('no')\n"
        "envs.register_task('echo_mine', Echo)\n")
    monkeypatch.chdir(tmp_path)
    try:
        cfg = parse_config(imitate.Config, ["--plugin", "my_tasks", "--families", "echo_mine", "--levels", "1"])
        assert cfg.families == ("echo_mine",) and cfg.plugin == ("my_tasks",)
    finally:
        envs.unregister_task("echo_mine")
