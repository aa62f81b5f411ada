"""Shared test set-up: one torch thread.

The test models are tiny; on a small shared machine two intra-op threads fight each other and
run tens of times slower than one, so every test runs single-threaded.
"""

import torch

torch.set_num_threads(1)

import pytest  # noqa: E402

from r3m.learn.evaluation import sudoku_eval_dir  # noqa: E402

# The external evaluation sets live beside the checkout (../shared/eval, or $R3M_EVAL_DIR).
needs_eval_data = pytest.mark.skipif(not (sudoku_eval_dir() / "norvig_top95.csv").exists(),
                                     reason=f"external evaluation sets not found at {sudoku_eval_dir()} (set R3M_EVAL_DIR)")
