"""Shared test set-up: one torch thread.

The test models are tiny; on a small shared machine two intra-op threads fight each other and
run tens of times slower than one, so every test runs single-threaded.
"""

import torch

torch.set_num_threads(1)

import pytest  # noqa: E402

from r3m.envs import eval_set_path  # noqa: E402

# The external evaluation sets live beside the checkout (../shared/eval, or $R3M_EVAL_DIR).
needs_eval_data = pytest.mark.skipif(not eval_set_path("norvig_top95").exists(),
                                     reason=f"external evaluation sets not found at {eval_set_path('norvig_top95').parent} "
                                            "(set R3M_EVAL_DIR)")


@pytest.fixture(autouse=True)
def _restore_r3m_logger():
    """Scripts run in-process call ``setup_logging``, which installs a stderr handler on the
    ``r3m`` logger and stops propagation; undo that after each test so caplog sees later
    tests' messages whatever the order the tests run in."""
    import logging

    log = logging.getLogger("r3m")
    handlers, propagate, level = list(log.handlers), log.propagate, log.level
    yield
    log.handlers[:] = handlers
    log.propagate, log.level = propagate, level
