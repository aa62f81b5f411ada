"""The text environment every task family shares."""

from __future__ import annotations

import math
from typing import Any, Sequence

import gymnasium as gym

from r3m import tools
from r3m.envs.ascii import PRINTABLE, describe_char, first_non_printable
from r3m.envs.base import NOOP, Instance, StreamStep, TaskFamily, make_family, reset_instance
from r3m.envs.spaces import PrintableText
from r3m.verifiers import Verdict, wrong

MAX_RESULT_CHARS = 512
MAX_ACTION_CHARS = 1024


def sanitize(text: str, limit: int) -> str:
    """Printable ASCII only (others become '?'), at most ``limit`` characters: for tool output,
    which a user's tool may write in any alphabet and at any length."""
    text = text[:limit]
    return text if all(c in PRINTABLE for c in text) else "".join(c if c in PRINTABLE else "?" for c in text)


class TextTaskEnv(gym.Env[str, str]):
    """A task family as a single-question, multi-turn text episode.

    ## Observation
    ``Text``: the transcript so far, printable ASCII. First the prompt; after each tool call
    the call as written followed by ``<result>OUTPUT</result>`` (or ``<result>error: ...</result>``).

    ## Action
    ``Text``: one string of printable ASCII (codes 32-126 and newline), at most 1024 characters.
    ``<call>NAME ARGS</call>`` runs registered tool NAME on ARGS and continues the episode;
    anything else is the final answer, at most the family's ``max_answer_chars`` once
    surrounding whitespace is stripped. Policy text is untrusted, so a string outside the
    action space (another character, or too long) is not an error: it ends the episode with
    reward 0 and ``info["reason"]`` saying why. A non-string action is a programming error and
    raises ``TypeError``.

    ## Reward
    0 for a tool call. For the final answer, the family's verifier: 1.0 if correct, else 0.0
    (or the verifier's partial-credit score with ``partial_credit=True``); 0 for an answer
    longer than ``max_answer_chars`` and for an action outside the action space.

    ## Episode End
    Terminated after the final answer and after an action outside the action space. Truncated
    with reward 0 when the policy makes more than ``call_budget`` calls; malformed calls and
    calls to disabled tools count too.

    ## Arguments
    ``family``: a registered family name or a ``TaskFamily``; ``call_budget`` (default 4);
    ``tools_enabled``: True, False, or the tool names allowed; ``difficulty``: a level or
    None (drawn per instance); ``split``: "train" or "test"; ``data_seed``: the dataset seed.
    ``reset(options={"difficulty", "split", "index"})`` overrides them for one episode;
    ``reset(options={"instance": inst})`` plays a given ``Instance`` of this family instead (for
    external evaluation sets; ``info["split"]`` is then "external").
    ``info`` carries family, difficulty, split, tool_calls and malformed_calls, and after an
    answer ``correct``, ``score`` and ``reason``. It never carries the oracle answer.
    ``reset`` raises ``ValueError`` for an instance whose prompt breaks the family's contract
    (a character outside printable ASCII, or longer than ``max_prompt_chars``).

    ``distractors`` (default 0): a rate of inserted text that changes no answer (the memory
    family: sentences with no world information per story sentence), up to the family's
    ``max_distractor_rate``; the same seed gives the same distracted instance, in the split of
    the original.

    ## Streaming (``stream=True``, families with ``streams``)
    The past is not in the observation, so only state carried across turns can answer. The
    family cuts each instance into steps (``TaskFamily.stream``); the observation is ONLY the
    current step's text (at most the family's ``max_stream_chars``), or after a tool call that
    call and its result only (the stream does not advance); ``observation_space`` bounds the
    longer of the two. The prompt's ``max_prompt_chars`` does not apply. At a step with nothing to score
    any action is accepted, with reward 0, and the stream advances; the expert's no-op there is
    ``""``. At a scored step the answer (at most ``max_answer_chars``) is recorded and the
    stream advances with reward 0; at the last step, which is always scored, the episode
    terminates with the family's ``verify_stream`` of all recorded answers (1, 0, or the
    partial credit). ``info`` also carries ``stream_step`` and ``stream_kind`` (index and kind of
    the step just shown), ``stream_support`` (whether the answer rests on that step, where the
    family knows), ``stream_steps`` (their number) and ``stream_correct`` (for each scored
    step answered so far, whether it matched the expert's answer, ignoring whitespace and case).
    Instances, seeds and splits are those of the whole-prompt episode.
    """

    # render_fps: Gymnasium's checker asks every env that renders for it; ansi frames are not timed.
    metadata = {"render_modes": ["ansi"], "render_fps": 4}

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
        stream: bool = False,
        distractors: float = 0.0,
        augment: bool = True,
    ):
        self.family = make_family(family)
        if not augment:  # the family's instances without its on-the-fly transforms (an ablation)
            self.family = self.family.augmented(False)
        self.stream = _check_stream(self.family, stream)
        self.distractors = _check_distractors(self.family, distractors)
        self.call_budget = int(call_budget)
        self.tools_enabled = tools_enabled
        self.partial_credit = partial_credit
        self.difficulty = difficulty
        self.split = split
        self.data_seed = data_seed
        self.render_mode = render_mode
        turn_chars = MAX_ACTION_CHARS + MAX_RESULT_CHARS + len(tools.RESULT_OPEN + tools.RESULT_CLOSE)
        # PrintableText, not spaces.Text: Gymnasium's async vector env misreads Text (envs/spaces.py)
        if self.stream:  # one step's text, or one call and its result
            obs_chars = max(self.family.max_stream_chars, turn_chars)
        else:
            obs_chars = self.family.max_prompt_chars + (self.call_budget + 1) * turn_chars
        self.observation_space = PrintableText(obs_chars)
        self.action_space = PrintableText(MAX_ACTION_CHARS, min_length=0)
        self._instance: Instance | None = None
        self._transcript = ""  # the observation: the transcript, or in stream mode the current step
        self._calls = self._malformed = 0
        self._done = True
        self._steps: list[StreamStep] = []
        self._pos = 0
        self._answers: list[str] = []
        self._stream_correct: list[bool] = []

    # -- episode ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._instance, self._split = reset_instance(self, options)
        if self._split == "external":
            self._instance = self._external(self._instance)
        if self.distractors > 0:
            self._instance = self.family.with_distractors(self._instance, self.distractors)
        if self.stream:
            self._steps = self._check_stream_steps(self._instance)
            self._pos, self._answers, self._stream_correct = 0, [], []
            self._transcript = self._steps[0].observation
        else:
            self._check_prompt(self._instance)
            self._transcript = self._instance.prompt
        self._calls = self._malformed = 0
        self._done = False
        return self._transcript, self._info()

    def step(self, action: str):
        if self._done:
            raise RuntimeError("episode is over: call reset() before step()")
        if not isinstance(action, str):
            raise TypeError(f"a text env's action is a str (the policy's text), got {type(action).__name__}")
        outside = self._outside_action_space(action)
        if outside:
            return self._end(wrong(f"action outside the action space: {outside}"))
        if tools.is_call(action):
            return self._tool_step(action)
        if self.stream:
            return self._stream_step(action)
        too_long = self._too_long(action)
        return self._end(too_long or self.family.verify(self._instance, action))

    def _too_long(self, answer: str) -> Verdict | None:
        length, limit = len(answer.strip()), self.family.max_answer_chars
        return wrong(f"answer too long ({length} > {limit} characters)") if length > limit else None

    def _stream_step(self, action: str):
        """Record the answer at a scored step, accept anything elsewhere; advance or, at the end, score."""
        step = self._steps[self._pos]
        if step.expected is not None:
            too_long = self._too_long(action)
            if too_long:
                return self._end(too_long)
            self._answers.append(action)
            self._stream_correct.append(_same(action, step.expected))
        if self._pos + 1 == len(self._steps):
            return self._end(self.family.verify_stream(self._instance, self._answers))
        self._pos += 1
        self._transcript = self._steps[self._pos].observation
        return self._transcript, 0.0, False, False, self._info()

    def _end(self, verdict: Verdict):
        self._done = True
        reward = 1.0 if verdict.correct else (verdict.score if self.partial_credit else 0.0)
        return self._transcript, reward, True, False, self._info(verdict)

    def _outside_action_space(self, action: str) -> str | None:
        """Why ``action`` is not in ``action_space``, or None."""
        if len(action) > self.action_space.max_length:
            return f"{len(action)} characters (at most {self.action_space.max_length})"
        bad = first_non_printable(action)
        return None if bad is None else f"{describe_char(bad)} is not printable ASCII"

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
        turn = action.strip() + tools.format_result(sanitize(result.transcript_text(), MAX_RESULT_CHARS))
        self._transcript = turn if self.stream else self._transcript + turn
        return self._transcript, 0.0, False, False, self._info()

    def _external(self, inst: Instance) -> Instance:
        if not isinstance(inst, Instance) or inst.family != self.family.name:
            raise ValueError(f"options['instance'] must be an Instance of family {self.family.name!r}")
        return inst

    def _check_prompt(self, inst: Instance) -> None:
        """A prompt outside the observation space is the family's bug: say so, never clip it."""
        name, limit = self.family.name, self.family.max_prompt_chars
        if not isinstance(inst.prompt, str) or not inst.prompt:
            raise ValueError(f"{name}: instance {inst.key!r} has an empty or non-str prompt")
        bad = first_non_printable(inst.prompt)
        if bad is not None:
            raise ValueError(f"{name}: instance {inst.key!r} has {describe_char(bad)} in its prompt, outside "
                             "printable ASCII; transliterate generated text with r3m.envs.ascii_fold")
        if len(inst.prompt) > limit:
            raise ValueError(f"{name}: instance {inst.key!r} has a prompt of {len(inst.prompt)} characters, "
                             f"more than max_prompt_chars={limit}")

    def _check_stream_steps(self, inst: Instance) -> list[StreamStep]:
        """The instance's stream; steps outside the observation space are the family's bug."""
        steps = list(self.family.stream(inst))
        name, limit = self.family.name, self.family.max_stream_chars
        if not steps or steps[-1].expected is None:
            raise ValueError(f"{name}: the stream of instance {inst.key!r} is empty or does not end "
                             "with a scored step")
        for k, step in enumerate(steps):
            text = step.observation
            bad = first_non_printable(text) if isinstance(text, str) else None
            if not isinstance(text, str) or not text or bad is not None or len(text) > limit:
                raise ValueError(f"{name}: step {k} of instance {inst.key!r} is not non-empty printable "
                                 f"ASCII of at most max_stream_chars={limit} characters: {text!r:.80}")
        return steps

    def _tool_allowed(self, name: str) -> bool:
        if isinstance(self.tools_enabled, bool):
            return self.tools_enabled
        return name in self.tools_enabled

    def _info(self, verdict: Verdict | None = None) -> dict[str, Any]:
        info = {
            "family": self.family.name,
            "difficulty": self._instance.difficulty,
            "split": self._split,
            "tool_calls": self._calls,
            "malformed_calls": self._malformed,
        }
        if self.stream:
            info.update(stream_step=self._pos, stream_steps=len(self._steps),
                        stream_kind=self._steps[self._pos].kind, stream_support=bool(self._steps[self._pos].support),
                        stream_correct=tuple(self._stream_correct))
        if verdict is not None:
            info.update(correct=bool(verdict.correct), score=float(verdict.score), reason=verdict.reason)
        return info

    # -- demonstrations and rendering -----------------------------------------------------
    @property
    def instance(self) -> Instance:
        """The instance being played. It holds the oracle: for demonstrations and checks, never a policy."""
        if self._instance is None:
            raise RuntimeError("call reset() before reading the instance")
        return self._instance

    def expert_actions(self, use_tools: bool) -> list[str]:
        """The expert's actions for the current instance: tool calls (if ``use_tools``), then the answer.

        In stream mode one action per step of the episode being played, from the start: the
        expected answer at scored steps, the no-op ``""`` elsewhere (streamed families have no tool
        demonstration, so ``use_tools`` changes nothing).
        """
        if self._instance is None:
            raise RuntimeError("call reset() before expert_actions()")
        if self.stream:
            return [NOOP if step.expected is None else step.expected for step in self._steps]
        return self.family.expert_actions(self._instance, use_tools)

    def render(self) -> str | None:
        return self._transcript if self.render_mode == "ansi" else None


def _same(answer: str, expected: str) -> bool:
    """A stream step's answer against the expert's, ignoring whitespace and case."""
    return "".join(answer.split()).lower() == "".join(expected.split()).lower()


def _check_stream(family: TaskFamily, stream: bool) -> bool:
    if not isinstance(stream, bool):
        raise TypeError(f"stream must be a bool, got {stream!r}")
    if stream and not family.streams:
        raise ValueError(f"{family.name}: streaming is not supported (stream=True needs a family with "
                         "streams=True, e.g. memory or prefix)")
    return stream


def _check_distractors(family: TaskFamily, rate: float) -> float:
    """A finite rate within the family's ``max_distractor_rate`` (whose prompt bound allows for it)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
        raise ValueError(f"distractors must be a finite number, got {rate!r}")
    limit = family.max_distractor_rate
    if not 0 <= rate <= limit:
        what = f"at most {limit}" if limit > 0 else "0: the family does not support distractors"
        raise ValueError(f"{family.name}: distractors={rate} must be {what}")
    return float(rate)
