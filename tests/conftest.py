"""Shared test set-up: one torch thread.

The test models are tiny; on a small shared machine two intra-op threads fight each other and
run tens of times slower than one, so every test runs single-threaded.
"""

import torch

torch.set_num_threads(1)

import pytest  # noqa: E402

from r3m_agent.evaluation import SUDOKU_EVAL_DIR  # noqa: E402

# The external evaluation sets live beside the checkout (../shared/eval, or $R3M_EVAL_DIR).
needs_eval_data = pytest.mark.skipif(not (SUDOKU_EVAL_DIR / "norvig_top95.csv").exists(),
                                     reason=f"external evaluation sets not found at {SUDOKU_EVAL_DIR} (set R3M_EVAL_DIR)")
