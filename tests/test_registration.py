"""The plug-in API: the ASCII contract, checked and atomic registration, check_family, family metadata."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r3m import envs, tools
from r3m.envs import Instance, TaskFamily
from r3m.verifiers import RIGHT, Verdict, wrong


# -- a small plug-in family, parametrized by what its generator writes ---------------------------
def echo_tool(args: str, budget: int) -> tools.ToolResult:
    return tools.ToolResult(True, args.strip().upper(), cost=1)


def _ensure_echo_tool() -> None:
    if "test_upper_tool" not in tools.list_tools():
        tools.register_tool("test_upper_tool", echo_tool, budget=10, description="upper-case the args")


class UpperFamily(TaskFamily):
    """Prompt ``upper: WORD``; answer the word in capitals; the tool upper-cases its ARGS."""

    name = "test_upper"
    levels = (1, 2)
    tool = "test_upper_tool"
    max_prompt_chars = 32
    max_answer_chars = 16
    word: Callable[[int], str] = staticmethod(lambda level: "abc" * level)

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        tag = str(int(rng.integers(10**6)))
        word = self.word(difficulty)
        return Instance(self.name, difficulty, f"upper: {word} {tag}", word.upper(), key=f"{word}:{tag}",
                        data={"word": word})

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return RIGHT if answer.strip() == instance.answer else wrong("not the word in capitals")

    def tool_args(self, instance: Instance) -> str:
        return instance.data["word"]


def _variant(**attrs) -> type[UpperFamily]:
    return type("UpperVariant", (UpperFamily,), attrs)


@pytest.fixture
def clean_registry():
    """Whatever a test registers under test_upper is gone afterwards (and was not there before)."""
    _ensure_echo_tool()
    assert "test_upper" not in envs.list_families()
    yield
    if "test_upper" in envs.list_families():
        envs.unregister_task("test_upper")
    assert "test_upper-v0" not in gym.registry and "test_upper-v0" not in envs.ENV_IDS


def _nothing_registered(env_id: str = "test_upper-v0") -> bool:
    return ("test_upper" not in envs.list_families() and env_id not in gym.registry
            and env_id not in envs.ENV_IDS)


# -- ascii_fold ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, folded", [
    ("naïveté", "naivete"), ("Crème brûlée", "Creme brulee"), ("“quoted” ‘single’", "\"quoted\" 'single'"),
    ("a–b—c−d", "a-b-c-d"), ("Straße, Ærø", "Strasse, AEro"), ("ﬁne x²", "fine x2"), ("１２３", "123"),
    ("日本", "??"), ("tab\there\r\nline", "tab here\nline"), ("٢", "?"),
])
def test_ascii_fold(text, folded):
    assert envs.ascii_fold(text) == folded


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_ascii_fold_always_printable_and_keeps_ascii(text):
    folded = envs.ascii_fold(text)
    assert set(folded) <= envs.PRINTABLE
    ascii_only = "".join(c for c in text if c in envs.PRINTABLE and c != "\r")
    if ascii_only == text:
        assert folded == text


# -- registration: what is accepted --------------------------------------------------------------
@pytest.mark.parametrize("form", ["class", "instance", "factory"])
def test_register_task_accepts_class_instance_factory(clean_registry, form):
    family = {"class": UpperFamily, "instance": UpperFamily(), "factory": lambda: UpperFamily()}[form]
    env_id = envs.register_task("test_upper", family, call_budget=2)
    assert env_id == "test_upper-v0" and envs.ENV_IDS[env_id] == "test_upper"
    fam = envs.make_family("test_upper")
    assert isinstance(fam, UpperFamily) and fam is envs.make_family("test_upper")
    if form == "instance":
        assert fam is family
    env = gym.make(env_id).unwrapped
    assert env.call_budget == 2
    for use_tools in (False, True):
        env.reset(options={"index": 3, "difficulty": 2})
        for action in env.expert_actions(use_tools):
            _, reward, terminated, _, _ = env.step(action)
        assert terminated and reward == 1.0


def test_make_family_takes_every_form():
    for form in (UpperFamily, lambda: UpperFamily(), UpperFamily()):
        fam = envs.make_family(form)
        assert isinstance(fam, UpperFamily) and "test_upper" not in envs.list_families()
    env = envs.TextTaskEnv(UpperFamily)  # an unregistered family plays too
    assert env.reset(seed=0)[0].startswith("upper: ")
    with pytest.raises(KeyError, match="unknown task family 'test_upper'"):
        envs.make_family("test_upper")


def test_unregister_then_register_again(clean_registry):
    envs.register_task("test_upper", UpperFamily, env_id="test_upper-v3")
    with pytest.raises(ValueError, match="already registered"):
        envs.register_task("test_upper", UpperFamily, env_id="test_upper-v4")
    envs.unregister_task("test_upper")
    assert _nothing_registered("test_upper-v3") and "test_upper-v4" not in gym.registry
    envs.register_task("test_upper", UpperFamily, env_id="test_upper-v3")  # a notebook cell re-run
    assert gym.make("test_upper-v3").unwrapped.family.name == "test_upper"
    envs.unregister_task("test_upper")
    with pytest.raises(KeyError, match="unknown task family"):
        envs.unregister_task("test_upper")


def test_unregister_tool():
    tools.register_tool("test_tmp_tool", echo_tool, budget=1)
    assert tools.call("test_tmp_tool", "x").output == "X"
    tools.unregister_tool("test_tmp_tool")
    assert "test_tmp_tool" not in tools.list_tools() and not tools.call("test_tmp_tool", "x").ok
    tools.register_tool("test_tmp_tool", lambda a, b: tools.ToolResult(True, "again"), budget=1)
    assert tools.call("test_tmp_tool", "x").output == "again"  # the new function, not a cached old one
    tools.unregister_tool("test_tmp_tool")
    with pytest.raises(KeyError, match="unknown tool"):
        tools.unregister_tool("test_tmp_tool")


# -- registration: what is refused, atomically ----------------------------------------------------
def _bad_generate(self, rng, difficulty):
    raise ZeroDivisionError("generator bug")


@pytest.mark.parametrize("name, family, kwargs, error, pattern", [
    ("Test_Upper", UpperFamily, {}, ValueError, r"task name 'Test_Upper' must match"),
    ("test_upper", UpperFamily, {"env_id": "test upper v0"}, ValueError, "must look like NAME-v0"),
    ("test_upper", UpperFamily, {"env_id": "test_upper-v٢"}, ValueError, "must look like NAME-v0"),
    ("test_upper", UpperFamily, {"env_id": "sudoku-v0"}, ValueError, "'sudoku-v0' is already registered"),
    ("test_upper", _variant(name="other"), {}, ValueError, "family.name is 'other'"),
    ("test_upper", _variant(levels=()), {}, ValueError, "levels must be a non-empty tuple"),
    ("test_upper", _variant(levels=[1, 2]), {}, ValueError, "levels must be a non-empty tuple"),
    ("test_upper", _variant(levels=(1, "2")), {}, ValueError, "levels must be a non-empty tuple"),
    ("test_upper", _variant(levels=(1, 1)), {}, ValueError, "distinct"),
    ("test_upper", _variant(decode="beam"), {}, ValueError, r"decode must be one of \('fill', 'causal'\)"),
    ("test_upper", _variant(max_answer_chars=0), {}, ValueError, "max_answer_chars must be a positive int"),
    ("test_upper", _variant(max_tool_args_chars=2.5), {}, ValueError, "max_tool_args_chars must be None"),
    ("test_upper", _variant(answer_len=40), {}, ValueError, "answer_len=40 exceeds max_answer_chars=16"),
    ("test_upper", _variant(tool="no_such_tool"), {}, ValueError, "tool 'no_such_tool' is not registered"),
    ("test_upper", _variant(generate=_bad_generate), {}, ValueError,
     r"level 1: generating a train instance failed \(ZeroDivisionError: generator bug"),
    ("test_upper", lambda: "not a family", {}, TypeError, "not a TaskFamily"),
    ("test_upper", UpperFamily, {"no_such_arg": 1}, TypeError, "no_such_arg"),
])
def test_register_task_refuses_and_leaves_nothing(clean_registry, name, family, kwargs, error, pattern):
    env_id = kwargs.get("env_id", "test_upper-v0")
    before = set(gym.registry)
    with pytest.raises(error, match=pattern):
        envs.register_task(name, family, **kwargs)
    assert _nothing_registered() and set(gym.registry) == before
    if env_id != "sudoku-v0":
        assert env_id not in envs.ENV_IDS


@pytest.mark.parametrize("attrs, level, pattern", [
    ({"word": staticmethod(lambda lvl: "naïve" if lvl == 2 else "abc")}, 2,
     r"prompt contains 'ï' \(U\+00EF\)"),
    ({"word": staticmethod(lambda lvl: "abc" * 9 * lvl)}, 1, "prompt has .* more than max_prompt_chars=32"),
    ({"max_answer_chars": 5}, 2, "oracle answer has 6 characters, more than max_answer_chars=5"),
    ({"tool_args": lambda self, inst: inst.data["word"] + " \u2014"}, 1,
     r"expert action 0 \(with tools\) contains '—' \(U\+2014\)"),
    ({"tool_args": lambda self, inst: inst.data["word"] * 2, "max_tool_args_chars": 8}, 2,
     "ARGS of the call has 12 characters, more than max_tool_args_chars=8"),
    ({"answer_from_tool": lambda self, inst, result: result.output + "\t"}, 1,
     r"expert action 1 \(with tools\) contains '\\t' \(U\+0009\)"),
])
def test_register_task_rejects_text_outside_the_contract(clean_registry, attrs, level, pattern):
    family = _variant(**attrs)
    with pytest.raises(ValueError, match=f"task family 'test_upper', level {level}: .*{pattern}") as err:
        envs.register_task("test_upper", family)
    if "U+" in pattern:
        assert "r3m.envs.ascii_fold" in str(err.value)
    assert _nothing_registered()
    envs.register_task("test_upper", UpperFamily)  # the fixed family registers: nothing was left behind


def test_validate_false_skips_the_sample_check_but_reset_still_refuses(clean_registry):
    family = _variant(word=staticmethod(lambda lvl: "naïve"))
    envs.register_task("test_upper", family, validate=False)
    env = gym.make("test_upper-v0").unwrapped
    pattern = r"test_upper: instance .* has 'ï' \(U\+00EF\) in its prompt.*ascii_fold"
    with pytest.raises(ValueError, match=pattern):
        env.reset(seed=0)


def test_builtins_are_registered_lazily():
    """``import r3m.envs`` registers the built-in families by name without importing (or checking) them."""
    code = ("import sys, r3m.envs as e; print(sorted(e.list_families()), "
            "[m for m in sys.modules if m.startswith('r3m.envs.families')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    builtins = "['arithmetic', 'dsl', 'instruct', 'listops', 'logic', 'memory', 'prefix', 'sudoku']"
    assert out.strip() == f"{builtins} []"


# -- family metadata -------------------------------------------------------------------------------
def test_decode_numeric_env_and_payload_defaults():
    builtin = ("sudoku", "arithmetic", "listops", "logic", "dsl", "memory", "instruct", "prefix")
    decodes = {name: envs.make_family(name).decode for name in builtin}
    assert decodes.pop("instruct") == "causal" and set(decodes.values()) == {"fill"}
    sudoku = envs.make_family("sudoku")
    assert sudoku.numeric_env == "sudoku-grid-v0" and sudoku.numeric_env in gym.registry
    assert envs.make_family("arithmetic").numeric_env is None
    assert sudoku.payload_chars() == 81 and sudoku.payload_chars([3]) == 81
    prefix = envs.make_family("prefix")
    assert prefix.payload_chars([1]) == 8 and prefix.payload_chars() == 64
    assert envs.make_family("logic").payload_chars() == 512  # max(answer 128, ARGS = the prompt, 512)
    assert envs.make_family("memory").payload_chars() == 16  # no tool: the answer bound
    with pytest.raises(ValueError, match="levels must be a non-empty subset"):
        sudoku.payload_chars([9])


@pytest.mark.parametrize("family", ["arithmetic", "listops", "prefix"])
def test_derived_payload_bounds_hold_and_grow_with_level(family):
    """The per-level bounds are derived from the level specs: exceeded by no sampled payload, and
    no looser than the class maxima allow."""
    fam = envs.make_family(family)
    bounds = [fam.payload_chars([lvl]) for lvl in fam.levels]
    assert bounds == sorted(bounds) and fam.payload_chars() == bounds[-1]
    assert bounds[-1] <= max(fam.max_answer_chars, fam.max_tool_args_chars or fam.max_prompt_chars)
    for lvl, bound in zip(fam.levels, bounds):
        longest = 0
        for i in range(150):
            inst = fam.instance("train", i, lvl)
            longest = max([longest, len(inst.answer)] + [len(envs.checks.payload(a))
                                                         for a in fam.expert_actions(inst, True)])
        assert longest <= bound, (lvl, longest, bound)


# -- check_family ------------------------------------------------------------------------------------
class FloorDivFamily(TaskFamily):
    """``div: 7/2``: the expert floors the quotient (3), but the calculator is exact (7/2)."""

    name = "test_floordiv"
    levels = (1,)
    tool = "calculator"
    max_prompt_chars = 32
    max_answer_chars = 8

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        a, b = (int(v) for v in rng.integers(2, 100, size=2))
        return Instance(self.name, difficulty, f"div: {a}/{b}", str(a // b), key=f"{a}/{b}",
                        data={"a": a, "b": b})

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return RIGHT if answer.strip() == instance.answer else wrong("not the floored quotient")

    def tool_args(self, instance: Instance) -> str:
        return f"{instance.data['a']}/{instance.data['b']}"


def test_check_family_reports_a_tool_demo_that_fails():
    check = envs.check_family(FloorDivFamily(), n=6)
    assert check.family == "test_floordiv" and check.episodes == 2 * 6 * 2 and not check.ok
    assert check.failures and all("with tools" in f and "ends with reward 0.0" in f for f in check.failures)
    assert any(f.startswith("test level 1 index ") for f in check.failures)  # every split is played
    with pytest.raises(ValueError, match="task family 'test_floordiv': .* failures in 24 episodes"):
        check.raise_if_failed()


def test_check_family_reports_exceptions_payloads_and_text():
    class Broken(FloorDivFamily):
        name = "test_broken"
        tool = None
        max_answer_chars = 2

        def generate(self, rng, difficulty):
            inst = super().generate(rng, difficulty)
            if inst.data["a"] % 3 == 0:
                raise RuntimeError("generator bug")
            answer = "é" if inst.data["a"] % 3 == 1 else inst.answer
            return Instance(self.name, difficulty, inst.prompt, answer, inst.key, inst.data)

        def payload_chars(self, levels=None):
            return 0  # a false bound

    check = envs.check_family(Broken(), n=12, splits=("train",))
    text = "\n".join(check.failures)
    assert "RuntimeError: generator bug" in text
    assert "the oracle answer contains 'é' (U+00E9), outside printable ASCII" in text
    assert "more than payload_chars=0 of its level" in text
    assert check.episodes == 12 and not check.ok


@pytest.mark.parametrize("family", ["arithmetic", "listops", "prefix", "memory", "instruct", "sudoku",
                                    "logic", "dsl"])
def test_builtin_families_pass_check_family(family):
    n = 2 if family in ("dsl", "logic") else 4  # their generators search; a few instances suffice
    check = envs.check_family(family, n=n)
    assert check.ok, check.failures[:5]
    fam = envs.make_family(family)
    assert check.episodes == 2 * len(fam.levels) * n * (2 if fam.tool else 1)


def test_registered_plugin_passes_check_family(clean_registry):
    envs.register_task("test_upper", UpperFamily)
    envs.check_family("test_upper", n=3).raise_if_failed()
