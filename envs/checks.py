"""Checks of a task family's contract: what ``register_task`` enforces and ``check_family`` measures.

The contract: prompts, oracle answers and expert actions are printable ASCII
(``envs.ascii.PRINTABLE``) within the family's limits (``max_prompt_chars``,
``max_answer_chars``, ``max_tool_args_chars``, ``payload_chars``), and both expert
demonstrations, with the tool and without, end with reward 1 in the family's text env.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from r3m import tools
from r3m.envs.ascii import describe_char, first_non_printable
from r3m.envs.base import Instance, TaskFamily, make_family
from r3m.envs.text_env import MAX_ACTION_CHARS, TextTaskEnv

FOLD_HINT = "transliterate generated text with r3m.envs.ascii_fold"


def text_problem(what: str, text: object, limit: int, limit_name: str) -> str | None:
    """Why ``text`` breaks the contract (non-str, a character outside printable ASCII, too long), or None."""
    if not isinstance(text, str):
        return f"the {what} is a {type(text).__name__}, not a str"
    bad = first_non_printable(text)
    if bad is not None:
        return f"the {what} contains {describe_char(bad)}, outside printable ASCII; {FOLD_HINT}"
    if len(text) > limit:
        return f"the {what} has {len(text)} characters, more than {limit_name}={limit}"
    return None


def payload(action: str) -> str:
    """What an expert action writes into the answer slots: a call's ARGS, else the answer itself."""
    if tools.is_call(action):
        return tools.parse_call(action).args
    return action.strip()


def instance_problems(family: TaskFamily, inst: Instance) -> list[str]:
    """Contract breaks of one instance's prompt and oracle answer."""
    found = [text_problem("prompt", inst.prompt, family.max_prompt_chars, "max_prompt_chars"),
             text_problem("oracle answer", inst.answer, family.max_answer_chars, "max_answer_chars")]
    return [p for p in found if p]


def action_problems(family: TaskFamily, actions: Sequence[str], use_tools: bool) -> list[str]:
    """Contract breaks of one expert demonstration (``use_tools`` names it in the messages)."""
    mode = "with tools" if use_tools else "without tools"
    args_limit = family.max_tool_args_chars or family.max_prompt_chars
    found = []
    for k, action in enumerate(actions):
        what = f"expert action {k} ({mode})"
        problem = text_problem(what, action, MAX_ACTION_CHARS, "the action space's max_length")
        if problem is not None:
            problem += " (so it is not in action_space)"
        elif tools.is_call(action):
            parsed = tools.parse_call(action)
            problem = (f"{what} is a malformed call: {parsed.error}" if parsed.error else
                       text_problem(f"{what}, the ARGS of the call", parsed.args, args_limit,
                                    "max_tool_args_chars"))
        else:
            problem = text_problem(f"{what}, the answer", action.strip(), family.max_answer_chars,
                                   "max_answer_chars")
        found.append(problem)
    return [p for p in found if p]


@dataclass
class FamilyCheck:
    """What ``check_family`` found: ``failures`` are readable strings, empty when the family is sound."""

    family: str
    episodes: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def raise_if_failed(self, show: int = 10) -> None:
        """Raise ValueError listing the first ``show`` failures."""
        if self.failures:
            lines = "\n  ".join(self.failures[:show])
            more = f"\n  ... and {len(self.failures) - show} more" if len(self.failures) > show else ""
            raise ValueError(f"task family {self.family!r}: {len(self.failures)} failures in "
                             f"{self.episodes} episodes:\n  {lines}{more}")


def check_family(family: str | TaskFamily, n: int = 20, levels: Sequence[int] | None = None,
                 splits: Sequence[str] = ("train", "test")) -> FamilyCheck:
    """Play the expert on ``n`` instances per split and level, with the tool (if any) and without.

    Each instance is reset with ``options={"split", "difficulty", "index"}`` in the family's
    text env. Recorded as failures: an exception (type and message), a demonstration that does
    not end with reward 1, an observation outside ``observation_space``, an expert action
    outside ``action_space`` (or over its limits), an expert payload (the answer, or a call's
    ARGS) longer than ``payload_chars`` of its level, and a prompt or oracle answer that breaks
    the contract.
    """
    fam = make_family(family)
    levels = fam.check_levels(levels)
    bounds = {level: fam.payload_chars((level,)) for level in levels}
    env = TextTaskEnv(fam)
    check = FamilyCheck(fam.name)
    for split in splits:
        for level in levels:
            for index in range(n):
                where = f"{split} level {level} index {index}"
                options = {"split": split, "difficulty": level, "index": index}
                for use_tools in ((False, True) if fam.tool else (False,)):
                    check.episodes += 1
                    problems = _episode(env, options, use_tools, bounds[level], first=not use_tools)
                    check.failures += [f"{where}: {p}" for p in problems]
    return check


def _episode(env: TextTaskEnv, options: dict, use_tools: bool, bound: int, first: bool) -> list[str]:
    """Problems of one expert demonstration (and, on an instance's ``first`` play, of the instance)."""
    mode = "with tools" if use_tools else "without tools"
    problems: list[str] = []
    try:
        obs, _ = env.reset(options=options)
        if first:
            problems += instance_problems(env.family, env.instance)
        actions = env.expert_actions(use_tools)
        problems += action_problems(env.family, actions, use_tools)
        reward, terminated, info = 0.0, False, {}
        for k, action in enumerate(actions):
            if not env.observation_space.contains(obs):
                problems.append(f"observation before expert action {k} ({mode}) is not in observation_space")
            if isinstance(action, str) and len(payload(action)) > bound:
                problems.append(f"expert payload {k} ({mode}) has {len(payload(action))} characters, "
                                f"more than payload_chars={bound} of its level")
            obs, reward, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        if not env.observation_space.contains(obs):
            problems.append(f"final observation ({mode}) is not in observation_space")
        if not terminated or reward != 1.0:
            problems.append(f"expert demonstration ({mode}) ends with reward {reward} "
                            f"(terminated={terminated}; {info.get('reason', 'no answer given')})")
    except Exception as exc:  # a check reports, it does not stop at the first bug
        problems.append(f"{mode}: {type(exc).__name__}: {exc}")
    return problems
