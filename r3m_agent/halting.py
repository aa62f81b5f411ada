"""PonderNet halting (Banino, Balaguer & Blundell 2021, arXiv:2107.05407).

Step k halts with lambda_k = sigmoid(w.pool(h_k) + b); p_k = lambda_k prod_{j<k} (1 - lambda_j),
and the last step takes the remainder so every row sums to 1 over the S steps run. Training
minimises sum_k p_k L_k + beta KL(p || Geometric(lambda_p) truncated to S steps and
renormalised). The bias starts negative: with b near 0 the model halts at step 1 half the time
from the start and the gradient drives it to always halt early (the collapse trap).
At inference a row stops at the first step whose cumulative probability reaches a threshold.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class HaltingHead(nn.Module):
    def __init__(self, d_model: int, bias_init: float) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, 1)
        self.bias_init = bias_init

    def reset_parameters(self) -> None:
        # small weights: every row starts at sigmoid(bias_init), whatever its state
        nn.init.normal_(self.proj.weight, 0.0, 0.02)
        nn.init.constant_(self.proj.bias, self.bias_init)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """lambda_k [B] in float32 (products over many steps lose too much in bf16)."""
        return torch.sigmoid(self.proj(pooled).float().squeeze(-1))


def halting_distribution(lambdas: torch.Tensor) -> torch.Tensor:
    """p [B, S] from per-step halting probabilities [B, S]; the last step takes the remainder."""
    survive = torch.cumprod(1.0 - lambdas, dim=1)
    before = torch.cat([torch.ones_like(survive[:, :1]), survive[:, :-1]], dim=1)
    p = lambdas * before
    return torch.cat([p[:, :-1], before[:, -1:]], dim=1)


def threshold_steps(halt_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per row, the first step k (1-based) whose cumulative halting probability reaches ``threshold``."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    below = (halt_probs.cumsum(dim=1) < threshold).sum(dim=1)
    return (below + 1).clamp(max=halt_probs.shape[1])


def geometric_prior(steps: int, lambda_p: float, device: torch.device | str | None = None) -> torch.Tensor:
    """Geometric(lambda_p) over steps 1..S, truncated and renormalised: [S]."""
    if not 0.0 < lambda_p <= 1.0:
        raise ValueError(f"lambda_p must be in (0, 1], got {lambda_p}")
    k = torch.arange(steps, device=device, dtype=torch.float32)
    prior = lambda_p * (1.0 - lambda_p) ** k
    return prior / prior.sum()


def halting_kl(halt_probs: torch.Tensor, lambda_p: float) -> torch.Tensor:
    """KL(p || prior) per row [B]; zero exactly when p equals the truncated geometric prior."""
    p = halt_probs.float()
    prior = geometric_prior(p.shape[1], lambda_p, p.device)
    return (torch.special.xlogy(p, p) - p * prior.log()).sum(dim=1)


class PonderLoss(NamedTuple):
    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def ponder_loss(step_losses: torch.Tensor, halt_probs: torch.Tensor, lambda_p: float, beta: float) -> PonderLoss:
    """sum_k p_k L_k + beta KL(p || Geometric(lambda_p)), averaged over the batch.

    ``step_losses`` [S, B] is each sample's loss at each step's readout; ``halt_probs`` [B, S].
    """
    if step_losses.shape != halt_probs.shape[::-1]:
        raise ValueError(f"step_losses {tuple(step_losses.shape)} must be [S, B] for halt_probs "
                         f"{tuple(halt_probs.shape)}")
    reconstruction = (halt_probs.float() * step_losses.float().T).sum(dim=1).mean()
    kl = halting_kl(halt_probs, lambda_p).mean()
    return PonderLoss(reconstruction + beta * kl, reconstruction, kl)
