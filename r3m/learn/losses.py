"""The losses of every training stage.

- Imitation of expert episodes (Stages 1-2, warm starts, replay, distillation): cross-entropy on
  the payload (answer or call ARGS) and on the tool choice, turn by turn with the memory carried
  across the turns of an episode; the progressive schedule of Deep Thinking decides how many
  refinement steps run and which readouts are supervised.
- PonderNet halting (Stage 2): sum_k p_k L_k + beta KL(p || Geometric(lambda_p)).
- Penalties: the episodic memory's write budget and the state's drift in the last step.
- The policy-gradient objective (Stage 3): PPO's clipped surrogate on length-normalised sequence
  ratios plus a KL to the reference policy, estimated per token (``kl_estimate``: k1, k2 or k3).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from r3m.learn.data import IGNORE, CausalBatch, Example, FillBatch, TaskSpec, collate_causal, collate_fill
from r3m.learn.io import ViewIO
from r3m_agent.blocks import ModelOutput
from r3m_agent.checkpoint import unwrap
from r3m_agent.memory import Carry
from r3m_agent.r3m import R3M, RefineState
from r3m_agent.tokenizer import EOS_ID, PAD_ID


# -- imitation --------------------------------------------------------------------------------------
class LossOut(NamedTuple):
    loss: torch.Tensor
    token_loss: float
    tool_loss: float
    step_losses: list[float]  # mean loss at each supervised step (last entries = latest steps)
    writes: float | None  # memory writes per episode (None: the model has no memory)
    write_rate: float | None  # fraction of turns that wrote (None: no memory)
    scalars: dict | None = None  # anything else to log (e.g. halt/...)


def model_kwargs(model: torch.nn.Module, K: int | None, grad_steps: int | None) -> dict:
    return dict(K=K, grad_steps=grad_steps) if isinstance(unwrap(model), R3M) else {}


def per_sample_token_loss(step_logits: torch.Tensor, targets: torch.Tensor,
                          allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy [S, B] of each step's readout, averaged over each sample's target tokens;
    ``allowed`` [V]: the outputs the view can write (the others get no probability, as when acting)."""
    S, B = step_logits.shape[:2]
    logits = step_logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
    ce = F.cross_entropy(logits.flatten(0, 2), targets.repeat(S, 1, 1).flatten(),
                         ignore_index=IGNORE, reduction="none").view(S, B, -1)
    live = (targets != IGNORE).float()
    return (ce * live).sum(-1) / live.sum(-1).clamp(min=1.0)


def view_io(model: torch.nn.Module, spec: TaskSpec) -> ViewIO:
    """The spec's view bound to the (unwrapped) model's config."""
    return ViewIO.of(spec, unwrap(model).cfg)


def imitation_forward(model: torch.nn.Module, spec: TaskSpec, batch: FillBatch | CausalBatch, *,
                      K: int | None = None, grad_steps: int | None = None,
                      carry: Carry | None = None, io: ViewIO | None = None,
                      state: RefineState | None = None) -> ModelOutput:
    """The model on one teacher-forced turn: the expert's choice conditions the payload, and the
    tool logits come from the decision point, which never sees the payload (``blocks.prepare``).
    ``state``: continue the refinement where an earlier segment on the same batch left off."""
    kw = model_kwargs(model, K, grad_steps)
    if carry is not None:
        kw["carry"] = carry
    if state is not None:
        kw["state"] = state
    if isinstance(batch, FillBatch):
        io = io or view_io(model, spec)
        lay = batch.layout
        return model(lay.ids, lay.mask, mode="fill", choice=batch.tool, **lay.forward_kwargs(), **io.model_kwargs(),
                     **kw)
    return model(batch.ids, batch.mask, mode="causal", choice=batch.tool, decision_index=batch.decision, **kw)


class TurnOut(NamedTuple):
    out: ModelOutput
    targets: torch.Tensor
    tool: torch.Tensor
    episodes: torch.Tensor  # [B] which episode each row belongs to
    allowed: torch.Tensor | None = None  # [V] what the view's outputs may be (fill layouts)


def imitation_turns(model: torch.nn.Module, spec: TaskSpec,
                    episodes: Sequence[Sequence[Example]] | FillBatch | CausalBatch, *,
                    K: int | None = None, grad_steps: int | None = None,
                    tbptt: int | None = None, segment: "SegmentCarry | None" = None) -> Iterator[TurnOut]:
    """Run the turns of expert episodes in order, each reading the memory the model wrote on the
    episode's earlier turns, exactly as ``run_episodes`` threads it when the policy acts.

    The carry keeps its graph across turns, so the answer's loss reaches the writes (gate and
    content) of the turns it read: truncated backpropagation through time over windows of
    ``tbptt`` turns (None: the whole episode; the carry is detached between windows). An already
    collated batch is one turn on an empty memory. ``segment``: episodes of one turn each continue
    the refinement the previous segment on this batch left off (``SegmentCarry``)."""
    device = next(model.parameters()).device
    io = view_io(model, spec)
    allowed = io.allowed.to(device) if spec.mode != "causal" else None
    if segment is not None:
        if isinstance(episodes, (FillBatch, CausalBatch)) or max(map(len, episodes)) != 1:
            raise ValueError("segments continue single-turn episodes (a streamed episode carries memory instead)")
        batch = (collate_fill([e[0] for e in episodes], io) if spec.mode != "causal"
                 else collate_causal([e[0] for e in episodes], spec.width)).to(device)
        out = imitation_forward(model, spec, batch, K=K, grad_steps=grad_steps, io=io, state=segment.state)
        segment.state = RefineState.of(out)
        yield TurnOut(out, batch.targets, batch.tool, torch.arange(len(batch.tool), device=device), allowed)
        return
    if isinstance(episodes, (FillBatch, CausalBatch)):
        batch = episodes.to(device)
        out = imitation_forward(model, spec, batch, K=K, grad_steps=grad_steps, io=io)
        yield TurnOut(out, batch.targets, batch.tool, torch.arange(len(batch.tool), device=device), allowed)
        return
    base = unwrap(model)
    carry = base.initial_carry(len(episodes), device) if isinstance(base, R3M) else None
    for j in range(max(map(len, episodes))):
        rows = [i for i, e in enumerate(episodes) if len(e) > j]
        ex = [episodes[i][j] for i in rows]
        batch = collate_fill(ex, io) if spec.mode != "causal" else collate_causal(ex, spec.width)
        batch = batch.to(device)
        index = torch.tensor(rows, device=device)
        row_carry = carry.select(index) if carry is not None else None
        out = imitation_forward(model, spec, batch, K=K, grad_steps=grad_steps, carry=row_carry, io=io)
        yield TurnOut(out, batch.targets, batch.tool, index, allowed)
        if carry is not None and out.carry is not None:
            carry = carry.put(index, out.carry)
            if tbptt is not None and (j + 1) % tbptt == 0:
                carry = carry.detach()


def imitation_loss(model: torch.nn.Module, spec: TaskSpec,
                   episodes: Sequence[Sequence[Example]] | FillBatch | CausalBatch, *,
                   K: int | None, grad_steps: int | None, supervised_steps: int | None = None,
                   tool_weight: float = 1.0, write_penalty: float = 0.0, write_budget: float = 0.0,
                   write_cost: float = 0.0, drift_penalty: float = 0.0, tbptt: int | None = None,
                   segment: "SegmentCarry | None" = None, choice_targets: torch.Tensor | None = None) -> LossOut:
    """Imitation of whole expert episodes (``imitation_turns``): the sum over an episode's turns,
    averaged over episodes (each episode's negative log-likelihood), so a streamed episode's one
    scored answer is not diluted by its many no-op turns; the memory's penalties
    (``write_penalties``) are per episode too, in the same units.

    Per turn: the token loss averaged over the last ``supervised_steps`` readouts (default: every
    step that keeps a graph), plus the tool loss, plus (when ``drift_penalty`` > 0) the state's
    change in the last step. The logged token and tool losses are per-turn means; the
    ``step_losses`` logged are the first turn's.

    ``choice_targets`` [B] (one turn per row): the tool head's targets instead of the examples' own
    choice, while the payload stays supervised under the examples' choice (distillation: the answer
    is taught on every instance, "answer now" only where the model's own answer verifies).
    """
    last = supervised_steps if supervised_steps is not None else grad_steps
    total, token_sum, tool_sum, writes, n = 0.0, 0.0, 0.0, 0.0, 0
    step_losses: list[float] = []
    gates: list[tuple[torch.Tensor, torch.Tensor]] = []
    for turn in imitation_turns(model, spec, episodes, K=K, grad_steps=grad_steps, tbptt=tbptt, segment=segment):
        out, rows = turn.out, len(turn.tool)
        per_step = per_sample_token_loss(out.step_logits, turn.targets, turn.allowed).mean(1)  # [S]
        token = (per_step if last is None else per_step[-last:]).mean()
        want = turn.tool if choice_targets is None else choice_targets.to(turn.tool.device)[turn.episodes]
        tool = F.cross_entropy(out.tool_logits.float(), want)
        loss = token + tool_weight * tool
        if drift_penalty and out.drift is not None:
            loss = loss + drift_penalty * out.drift.mean()
        total = total + rows * loss
        token_sum += rows * float(token.detach())
        tool_sum += rows * float(tool.detach())
        writes += float(out.writes.float().sum())
        if out.write_probs is not None:
            gates.append((turn.episodes, out.write_probs))
        step_losses = step_losses or [float(x) for x in per_step.detach()]
        n += rows
    collated = isinstance(episodes, (FillBatch, CausalBatch))  # one turn per row: rows are episodes
    loss = total / (n if collated else len(episodes))
    if gates and (write_penalty or write_cost):
        loss = loss + write_penalties(gates, 1 if collated else len(episodes), write_penalty, write_budget, write_cost)
    if not gates:
        return LossOut(loss, token_sum / n, tool_sum / n, step_losses, None, None)
    n_episodes = len(episodes) if not isinstance(episodes, (FillBatch, CausalBatch)) else n
    return LossOut(loss, token_sum / n, tool_sum / n, step_losses, writes / max(1, n_episodes), writes / n)


class SegmentCarry:
    """Deep supervision across segments (TRM, Jolicoeur-Martineau 2025; HRM before it): one batch is
    trained for ``segments`` consecutive optimiser steps, each running K steps from the state the
    previous one ended in, detached, so every segment gets its own loss and update while the state
    keeps refining: the model learns to improve states it reaches only after many steps without
    backpropagating through them. ``state`` is None at a batch's first segment."""

    def __init__(self, segments: int):
        if segments < 1:
            raise ValueError(f"segments must be >= 1, got {segments}")
        self.segments = segments
        self.state: RefineState | None = None
        self._batch: int | None = None

    def at(self, step: int) -> tuple[int, int]:
        """(the batch index, the segment within it) of optimiser step ``step``; a new batch (or a
        resumed run that lost the chain) starts from the input."""
        batch, seg = divmod(step, self.segments)
        if batch != self._batch or seg == 0:
            self.state, self._batch = None, batch
        return batch, seg


def progressive_schedule(rng: np.random.Generator, k_train: int, grad_steps: int) -> tuple[int, int, int]:
    """(K, steps with gradients, supervised readouts) for one batch (Bansal et al. 2022).

    n ~ U{0..k_train-1} steps without gradients from the start, then m ~ U{1..k_train-n} steps with
    gradients (at most ``grad_steps``), and only the last readout is supervised. The network learns
    to improve *any* state it produced itself, and early exits are supervised rarely (exit 1 in
    1/k_train^2 of batches), so it is not pushed toward a one-pass shortcut whose later steps drift
    ("overthinking").
    """
    n = int(rng.integers(0, k_train))
    m = int(rng.integers(1, k_train - n + 1))
    return n + m, min(m, grad_steps), 1


# -- halting (PonderNet, Banino et al. 2021) ----------------------------------------------------------
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


def ponder_imitation_loss(model: torch.nn.Module, spec: TaskSpec, episodes: Sequence[Sequence[Example]], *,
                          K: int, lambda_p: float, beta: float, drift_penalty: float = 0.0) -> "LossOut":
    """Stage 2: PonderNet's loss on each turn's per-step token losses, plus the tool loss, plus (as
    in stage 1) the state's change in the last step: without it stage 2 undid stage 1's fixed point
    and accuracy fell beyond the trained K (prefix: 100% at K=64 after stage 1, 84% after stage 2)."""
    loss, n, recon, tool_sum, writes = 0.0, 0, 0.0, 0.0, 0.0
    halt = {"halt/expected_steps": 0.0, "halt/kl": 0.0}
    step_losses: list[float] = []
    for turn in imitation_turns(model, spec, episodes, K=K, grad_steps=None):
        rows, out = len(turn.tool), turn.out
        per_sample = per_sample_token_loss(out.step_logits, turn.targets, turn.allowed)  # [S, B]
        ponder = ponder_loss(per_sample, out.halt_probs, lambda_p, beta)
        tool_loss = F.cross_entropy(out.tool_logits.float(), turn.tool)
        drift = drift_penalty * out.drift.mean() if drift_penalty and out.drift is not None else 0.0
        loss = loss + rows * (ponder.loss + tool_loss + drift)
        p = out.halt_probs.detach()
        k = torch.arange(1, p.shape[1] + 1, device=p.device)
        halt["halt/expected_steps"] += rows * float((p * k).sum(1).mean())
        halt["halt/kl"] += rows * float(ponder.kl.detach())
        recon += rows * float(ponder.reconstruction.detach())
        tool_sum += rows * float(tool_loss.detach())
        writes += float(out.writes.float().sum())
        step_losses = step_losses or [float(x) for x in per_sample.detach().mean(1)]
        n += rows
    halt = {k: v / n for k, v in halt.items()}
    has_memory = turn.out.write_probs is not None
    return LossOut(loss / n, recon / n, tool_sum / n, step_losses, writes / len(episodes) if has_memory else None,
                   None, halt)


# -- penalties ----------------------------------------------------------------------------------------
def write_penalties(gates: Sequence[tuple[torch.Tensor, torch.Tensor]], n_episodes: int, weight: float,
                    budget: float, cost: float) -> torch.Tensor:
    """The memory's two penalties on the soft write gates, from ``(episode index [B], gate [B])``
    per turn: ``weight * mean_e max(0, sum_t g_et - budget)`` (a write budget per episode: more
    writes than the memory has slots evict each other) plus ``cost * mean_e sum_t g_et`` (a price
    per write, so a write must earn its place: distractors stop being stored)."""
    index = torch.cat([e for e, _ in gates])
    values = torch.cat([g.float() for _, g in gates])
    per_episode = torch.zeros(n_episodes, device=index.device).index_add(0, index, values)
    return weight * F.relu(per_episode - budget).mean() + cost * per_episode.mean()


def write_budget_penalty(write_probs: torch.Tensor | None, budget: float) -> torch.Tensor:
    """Mean over the batch of max(0, expected writes - budget), from soft gates [B] or [B, turns]."""
    if write_probs is None:
        return torch.zeros(())
    gates = write_probs.float()
    return F.relu((gates.sum(dim=1) if gates.dim() == 2 else gates) - budget).mean()


# -- the policy-gradient objective ---------------------------------------------------------------------
def action_tokens(payload: torch.Tensor) -> torch.Tensor:
    """Tokens per action [B]: the tool choice plus the payload up to and including its eos."""
    eos = (payload == EOS_ID).long()
    live = (eos.cumsum(1) - eos) == 0
    return (live & (payload != PAD_ID)).sum(1) + 1


class PGOut(NamedTuple):
    loss: torch.Tensor
    pg_loss: float
    kl: float
    clip_fraction: float
    ratio: float


KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(log_ratio: torch.Tensor, estimator: str = "k3", clamp: float = 0.0) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from ``log_ratio`` = log ref - log pi of the sampled
    tokens (Schulman 2020, "Approximating KL divergence"): k1 = -r, k2 = r^2 / 2, k3 = e^r - r - 1.

    k3 is unbiased and never negative, but it grows as e^r: on an 82-token Sudoku action whose
    reference log-probability had drifted above the policy's, it reached 279 and 469 just before
    the policy collapsed, so the penalty's gradient swamped the surrogate's. k2 grows as r^2 and,
    used as a loss, has the gradient of the true KL on samples from pi; k1 is linear (its
    expected gradient is zero on-policy). ``clamp`` > 0 bounds |r| per token first, so every
    estimator is bounded (k2 by clamp^2 / 2); beyond the clamp the term gives no gradient.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"KL estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    r = log_ratio.clamp(-clamp, clamp) if clamp > 0 else log_ratio
    if estimator == "k1":
        return -r
    if estimator == "k2":
        return 0.5 * r * r
    return torch.exp(r) - r - 1.0


def clipped_objective(new_lp: torch.Tensor, old_lp: torch.Tensor, ref_lp: torch.Tensor, adv: torch.Tensor,
                      n_tokens: torch.Tensor, clip: float, kl_coef: float, kl_estimator: str = "k3",
                      kl_clamp: float = 0.0) -> PGOut:
    """The clipped surrogate plus the KL penalty (``kl_estimate`` of the per-token log-ratio to the
    reference: the length-normalised one), averaged over actions (module docstring)."""
    n = n_tokens.to(new_lp.dtype).clamp(min=1)
    ratio = torch.exp((new_lp - old_lp) / n)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    kl = kl_estimate((ref_lp - new_lp) / n, kl_estimator, kl_clamp)
    loss = -surrogate.mean() + kl_coef * kl.mean()
    clipped = ((ratio - 1.0).abs() > clip).float().mean()
    return PGOut(loss, float(-surrogate.mean().detach()), float(kl.mean().detach()), float(clipped),
                 float(ratio.mean().detach()))
