"""The text environment every task family shares."""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
from gymnasium import spaces

from r3m import tools
from r3m.envs.base import PRINTABLE, Instance, TaskFamily, make_family, reset_instance
from r3m.verifiers import Verdict, wrong

MAX_RESULT_CHARS = 512
MAX_ACTION_CHARS = 1024


def sanitize(text: str, limit: int) -> str:
    """Printable ASCII only (others become '?'), at most ``limit`` characters."""
    text = text[:limit]
    return text if all(c in PRINTABLE for c in text) else "".join(c if c in PRINTABLE else "?" for c in text)


class TextTaskEnv(gym.Env[str, str]):
    """A task family as a single-question, multi-turn text episode.

    ## Observation
    ``Text``: the transcript so far, printable ASCII. First the prompt; after each tool call
    the call as written followed by ``<result>OUTPUT</result>`` (or ``<result>error: ...</result>``).

    ## Action
    ``Text``: one string. ``<call>NAME ARGS</call>`` runs registered tool NAME on ARGS and
    continues the episode; anything else is the final answer.

    ## Reward
    0 for a tool call. For the final answer, the family's verifier: 1.0 if correct, else 0.0
    (or the verifier's partial-credit score with ``partial_credit=True``).

    ## Episode End
    Terminated after the final answer. Truncated with reward 0 when the policy makes more
    than ``call_budget`` calls; malformed calls and calls to disabled tools count too.

    ## Arguments
    ``family``: a registered family name or a ``TaskFamily``; ``call_budget`` (default 4);
    ``tools_enabled``: True, False, or the tool names allowed; ``difficulty``: a level or
    None (drawn per instance); ``split``: "train" or "test"; ``data_seed``: the dataset seed.
    ``reset(options={"difficulty", "split", "index"})`` overrides them for one episode;
    ``reset(options={"instance": inst})`` plays a given ``Instance`` of this family instead (for
    external evaluation sets; ``info["split"]`` is then "external").
    ``info`` carries family, difficulty, split, tool_calls and malformed_calls, and after an
    answer ``correct``, ``score`` and ``reason``. It never carries the oracle answer.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        family: str | TaskFamily,
        call_budget: int = 4,
        tools_enabled: bool | Sequence[str] = True,
        partial_credit: bool = False,
        difficulty: int | None = None,
        split: str = "train",
        data_seed: int = 0,
        render_mode: str | None = None,
    ):
        self.family = make_family(family)
        self.call_budget = int(call_budget)
        self.tools_enabled = tools_enabled
        self.partial_credit = partial_credit
        self.difficulty = difficulty
        self.split = split
        self.data_seed = data_seed
        self.render_mode = render_mode
        turn_chars = MAX_ACTION_CHARS + MAX_RESULT_CHARS + len(tools.RESULT_OPEN + tools.RESULT_CLOSE)
        self.observation_space = spaces.Text(
            self.family.max_prompt_chars + (self.call_budget + 1) * turn_chars, min_length=1, charset=PRINTABLE
        )
        self.action_space = spaces.Text(MAX_ACTION_CHARS, min_length=0, charset=PRINTABLE)
        self._instance: Instance | None = None
        self._transcript = ""
        self._calls = self._malformed = 0
        self._done = True

    # -- episode ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._instance, self._split = reset_instance(self, options)
        if self._split == "external":
            self._instance = self._external(self._instance)
        self._transcript = self._instance.prompt
        self._calls = self._malformed = 0
        self._done = False
        return self._transcript, self._info()

    def step(self, action: str):
        if self._done:
            raise RuntimeError("episode is over: call reset() before step()")
        if isinstance(action, str) and tools.is_call(action):
            return self._tool_step(action)
        verdict = self._score(action)
        self._done = True
        reward = 1.0 if verdict.correct else (verdict.score if self.partial_credit else 0.0)
        return self._transcript, reward, True, False, self._info(verdict)

    def _tool_step(self, action: str):
        self._calls += 1
        if self._calls > self.call_budget:
            self._done = True
            verdict = wrong(f"call budget exceeded ({self.call_budget} calls)")
            return self._transcript, 0.0, False, True, self._info(verdict)
        parsed = tools.parse_call(action)
        if parsed.error:
            self._malformed += 1
            result = tools.ToolResult.fail(parsed.error)
        elif not self._tool_allowed(parsed.name):
            self._malformed += 1
            result = tools.ToolResult.fail(f"tool {parsed.name!r} is not available in this episode")
        else:
            result = tools.call(parsed.name, parsed.args)
            if not result.ok and result.error and result.error.startswith("unknown tool"):
                self._malformed += 1
        self._transcript += sanitize(action.strip(), MAX_ACTION_CHARS) + tools.format_result(
            sanitize(result.transcript_text(), MAX_RESULT_CHARS)
        )
        return self._transcript, 0.0, False, False, self._info()

    def _external(self, inst: Instance) -> Instance:
        if not isinstance(inst, Instance) or inst.family != self.family.name:
            raise ValueError(f"options['instance'] must be an Instance of family {self.family.name!r}")
        return inst

    def _tool_allowed(self, name: str) -> bool:
        if isinstance(self.tools_enabled, bool):
            return self.tools_enabled
        return name in self.tools_enabled

    def _score(self, action: Any) -> Verdict:
        if not isinstance(action, str):
            return wrong(f"action must be a string, got {type(action).__name__}")
        return self.family.verify(self._instance, action)

    def _info(self, verdict: Verdict | None = None) -> dict[str, Any]:
        info = {
            "family": self.family.name,
            "difficulty": self._instance.difficulty,
            "split": self._split,
            "tool_calls": self._calls,
            "malformed_calls": self._malformed,
        }
        if verdict is not None:
            info.update(correct=bool(verdict.correct), score=float(verdict.score), reason=verdict.reason)
        return info

    # -- demonstrations and rendering -----------------------------------------------------
    def expert_actions(self, use_tools: bool) -> list[str]:
        """The expert's actions for the current instance: tool calls (if ``use_tools``), then the answer."""
        if self._instance is None:
            raise RuntimeError("call reset() before expert_actions()")
        return self.family.expert_actions(self._instance, use_tools)

    def render(self) -> str | None:
        return self._transcript if self.render_mode == "ansi" else None
