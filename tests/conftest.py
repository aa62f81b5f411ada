"""Shared test set-up: one torch thread.

The test models are tiny; on a small shared machine two intra-op threads fight each other and
run tens of times slower than one, so every test runs single-threaded.
"""

import torch

torch.set_num_threads(1)
