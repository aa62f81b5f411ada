"""``sudoku-grid-v0``: Sudoku as a numeric, cell-by-cell env for stable-baselines3."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from r3m.envs.base import make_family, reset_instance
from r3m.verifiers.sudoku import verify

_CELL = np.arange(81)
_ROW, _COL, _BOX = _CELL // 9, _CELL % 9, (_CELL // 27) * 3 + (_CELL % 9) // 3


def _move(action: Any) -> int:
    """``action`` as an int in [0, 729): the types ``Discrete.contains`` accepts, bools excluded."""
    integral = isinstance(action, (int, np.integer)) or (
        isinstance(action, np.ndarray) and action.shape == () and np.issubdtype(action.dtype, np.integer))
    if not integral or isinstance(action, (bool, np.bool_)):
        raise TypeError(f"sudoku-grid-v0 actions are integers in Discrete(729), got {type(action).__name__} "
                        f"{action!r:.40}")
    if not 0 <= int(action) < 729:
        raise ValueError(f"sudoku-grid-v0 actions are cell * 9 + digit - 1 in 0..728, got {int(action)}")
    return int(action)


class SudokuGridEnv(gym.Env[np.ndarray, np.int64]):
    """Fill a Sudoku one (cell, digit) at a time; instances come from ``SudokuFamily``.

    ## Observation
    ``Box(0, 9, (81,), int64)``: the board row-major, 0 for an empty cell.

    ## Action
    ``Discrete(729)``: ``cell * 9 + (digit - 1)`` writes ``digit`` into ``cell`` (0..80, row-major).
    ``action_masks()`` gives the valid ones (for sb3-contrib's MaskablePPO): the cell is empty
    and the digit is not yet in its row, column or box. An action must be a Python or numpy
    integer (or a 0-d integer array) in 0..728: anything else is a caller's bug, not a move,
    and raises (``TypeError`` for another type, including ``"5"``, ``1.5`` and ``True``;
    ``ValueError`` out of range).

    ## Reward
    0 per move. When the board is full: the Sudoku verifier's verdict, 1.0 if the grid is a
    correct solution (always the case for a board filled by valid moves), else 0.0.

    ## Episode End
    Terminated when the board is full (reward as above); at a dead end, when some empty cell has
    no valid digit left so the board can no longer be completed (reward 0); and at an action
    in ``Discrete(729)`` that the mask forbids, which leaves the board unchanged (reward 0).
    No truncation: an episode lasts at most 81 moves.

    ## Arguments
    ``difficulty`` (1-5, None draws a level per instance), ``split`` ("train"/"test"),
    ``data_seed``; ``reset(options={"difficulty", "split", "index"})`` overrides them for one
    episode, as in ``TextTaskEnv``. ``info``: difficulty, split, filled (cells filled by
    moves), and at the end ``correct``, ``score`` and ``reason``. ``expert_actions()`` lists
    the moves that fill the remaining empty cells with the solution.
    """

    # render_fps: Gymnasium's checker asks every env that renders for it; ansi frames are not timed.
    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, difficulty: int | None = None, split: str = "train", data_seed: int = 0,
                 render_mode: str | None = None):
        self.family = make_family("sudoku")
        self.difficulty = difficulty
        self.split = split
        self.data_seed = data_seed
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 9, (81,), np.int64)
        self.action_space = spaces.Discrete(729)
        self._board = np.zeros(81, np.int64)
        self._puzzle = self._solution = "." * 81
        self._difficulty, self._split, self._filled = 1, split, 0
        self._done = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        inst, self._split = reset_instance(self, options)  # instance: SudokuFamily.from_puzzle
        self._puzzle = inst.data["puzzle"]
        self._solution = inst.answer
        self._difficulty = inst.difficulty
        self._board = np.array([0 if ch == "." else int(ch) for ch in self._puzzle], np.int64)
        self._filled = 0
        self._done = False
        return self._board.copy(), self._info()

    def _free(self) -> np.ndarray:
        """bool[81, 9]: may digit d+1 go into cell i?"""
        used = np.zeros((3, 9, 10), bool)
        filled = self._board > 0
        digits = self._board[filled]
        used[0, _ROW[filled], digits] = True
        used[1, _COL[filled], digits] = True
        used[2, _BOX[filled], digits] = True
        taken = used[0, _ROW] | used[1, _COL] | used[2, _BOX]
        return ~taken[:, 1:] & ~filled[:, None]

    def expert_actions(self) -> list[int]:
        """The moves that fill the current board's empty cells with the solution, row-major."""
        if self._done:
            raise RuntimeError("call reset() before expert_actions()")
        return [i * 9 + int(self._solution[i]) - 1 for i in np.flatnonzero(self._board == 0).tolist()]

    def action_masks(self) -> np.ndarray:
        """bool[729]: the valid actions (all False once the episode is over)."""
        if self._done:
            return np.zeros(729, bool)
        return self._free().reshape(729)

    def step(self, action):
        if self._done:
            raise RuntimeError("episode is over: call reset() before step()")
        a = _move(action)
        free = self._free()
        if not free[a // 9, a % 9]:
            self._done = True
            info = self._info(False, 0.0, f"invalid action {a}: cell taken or digit already in its unit")
            return self._board.copy(), 0.0, True, False, info
        self._board[a // 9] = a % 9 + 1
        self._filled += 1
        if self._board.all():
            self._done = True
            verdict = verify(self._puzzle, "".join(map(str, self._board.tolist())))
            reward = 1.0 if verdict.correct else 0.0
            info = self._info(verdict.correct, verdict.score, verdict.reason)
            return self._board.copy(), reward, True, False, info
        free = self._free()
        empty = self._board == 0
        if not free[empty].any(axis=1).all():
            self._done = True
            info = self._info(False, 0.0, "dead end: an empty cell has no valid digit")
            return self._board.copy(), 0.0, True, False, info
        return self._board.copy(), 0.0, False, False, self._info()

    def _info(self, correct: bool | None = None, score: float = 0.0, reason: str = "") -> dict[str, Any]:
        info: dict[str, Any] = {"difficulty": self._difficulty, "split": self._split, "filled": self._filled}
        if correct is not None:
            info.update(correct=bool(correct), score=float(score), reason=reason)
        return info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        cells = "".join(str(v) if v else "." for v in self._board.tolist())
        return "\n".join(cells[r * 9 : r * 9 + 9] for r in range(9))
