import math

import pytest
import torch

from r3m.learn.losses import halting_kl, ponder_loss
from r3m_agent import R3M, R3MConfig, halting_distribution, threshold_steps
from r3m.learn.losses import geometric_prior




def test_distribution_by_hand_and_sums_to_one():
    p = halting_distribution(torch.tensor([[0.2, 0.5, 0.9]]))
    torch.testing.assert_close(p, torch.tensor([[0.2, 0.4, 0.4]]))  # last step takes the remainder
    lambdas = torch.rand(64, 9, generator=torch.Generator().manual_seed(0))
    for S in (1, 2, 9):
        p = halting_distribution(lambdas[:, :S])
        assert (p >= 0).all()
        torch.testing.assert_close(p.sum(1), torch.ones(64))


@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.9, 1.0])
def test_threshold_steps_match_cumulative_sum(threshold):
    p = halting_distribution(torch.rand(200, 7, generator=torch.Generator().manual_seed(1)) * 0.6)
    steps = threshold_steps(p, threshold)
    for row in range(p.shape[0]):
        cum, want = 0.0, p.shape[1]
        for k in range(p.shape[1]):
            cum += p[row, k].item()
            if cum >= threshold:
                want = k + 1
                break
        assert steps[row].item() == want
    assert len(set(steps.tolist())) > 1 or threshold == 1.0  # rows differ: the check is not vacuous
    exact = torch.tensor([[0.25, 0.25, 0.5], [0.1, 0.0, 0.9]])  # "reaches" includes equality
    assert threshold_steps(exact, 0.5).tolist() == [2, 3] and threshold_steps(exact, 0.1).tolist() == [1, 1]
    with pytest.raises(ValueError):
        threshold_steps(p, 0.0)


def test_kl_zero_at_prior_and_ponder_loss_by_hand():
    prior = geometric_prior(6, 0.3)
    torch.testing.assert_close(prior[1] / prior[0], torch.tensor(0.7))
    p = prior.expand(4, 6)
    assert halting_kl(p, 0.3).abs().max() < 1e-6
    q = halting_distribution(torch.full((4, 6), 0.8))
    assert (halting_kl(q, 0.3) > 0.1).all()
    losses = torch.arange(6.0)[:, None].expand(6, 4)  # [S, B]: loss k at step k
    out = ponder_loss(losses, q, lambda_p=0.3, beta=0.5)
    expected_rec = sum(q[0, k].item() * k for k in range(6))
    assert math.isclose(out.reconstruction.item(), expected_rec, rel_tol=1e-5)
    assert math.isclose(out.loss.item(), expected_rec + 0.5 * out.kl.item(), rel_tol=1e-5)
    with pytest.raises(ValueError, match="must be"):
        ponder_loss(losses.T, q, 0.3, 0.5)


def model_with_spread_halting():
    torch.manual_seed(0)
    model = R3M(R3MConfig(d_model=32, n_heads=2, mem_slots=4, semantic_slots=0, K=6)).eval()
    with torch.no_grad():  # rows halt at different steps
        model.halting.proj.weight.normal_(0.0, 1.0)
        model.halting.proj.bias.fill_(-1.0)
    return model


def test_initial_bias_avoids_halting_collapse():
    torch.manual_seed(0)
    model = R3M(R3MConfig(d_model=32, n_heads=2, K=8))
    out = model(torch.randint(9, 100, (16, 6)))
    torch.testing.assert_close(out.halt_probs.sum(1), torch.ones(16))
    assert out.halt_probs[:, 0].max() < 0.1  # sigmoid(-3) ~ 0.05: halting at step 1 is rare at first


@pytest.mark.parametrize("mode", ["causal", "fill"])
def test_early_exit_equals_threshold_selection_and_halted_rows_stop_costing(mode):
    model = model_with_spread_halting()
    fill = {"mode": "fill", "answer_len": 3} if mode == "fill" else {}
    ids = torch.randint(9, 100, (24, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids, **fill)  # every row all K steps
        out = model(ids, halt="threshold", halt_threshold=0.5, **fill)
    steps = threshold_steps(full.halt_probs, 0.5)
    assert torch.equal(out.steps, steps) and len(set(steps.tolist())) > 1
    for row in range(ids.shape[0]):  # each row's outputs are those of its threshold step
        torch.testing.assert_close(out.logits[row], full.step_logits[steps[row] - 1, row], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.halt_logp, full.halt_probs.gather(1, (steps - 1)[:, None]).squeeze(1).log(),
                               atol=1e-5, rtol=0)
    assert torch.equal(out.blocks, model.cfg.prelude_layers + steps * model.cfg.core_layers)


def test_halted_rows_run_no_more_blocks():
    """Count the core blocks' calls and the rows they process: a halted row is not among them."""
    model = model_with_spread_halting()
    ids = torch.randint(9, 100, (24, 5), generator=torch.Generator().manual_seed(2))
    rows_seen: list[int] = []
    hook = model.core[0].register_forward_hook(lambda mod, inp, out: rows_seen.append(inp[0].shape[0]))
    with torch.no_grad():
        out = model(ids, halt="threshold", halt_threshold=0.5)
    hook.remove()
    running = [int((out.steps > k).sum()) for k in range(model.cfg.K)]
    assert rows_seen == [r for r in running if r]  # step k processes only the rows still running
    assert sum(rows_seen) == int(out.steps.sum()) < ids.shape[0] * model.cfg.K


@pytest.mark.parametrize("mode", ["causal", "fill"])
def test_sampled_and_given_steps_agree(mode):
    model = model_with_spread_halting()
    fill = {"mode": "fill", "answer_len": 3} if mode == "fill" else {}
    ids = torch.randint(9, 100, (24, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        sampled = model(ids, halt="sample", generator=torch.Generator().manual_seed(0), **fill)
        given = model(ids, halt_steps=sampled.steps, **fill)
        full = model(ids, **fill)
    assert len(set(sampled.steps.tolist())) > 1
    torch.testing.assert_close(given.halt_logp, sampled.halt_logp, atol=1e-6, rtol=0)
    torch.testing.assert_close(given.logits, sampled.logits, atol=1e-6, rtol=0)
    expected = full.halt_probs.gather(1, (sampled.steps - 1)[:, None]).squeeze(1).log()
    torch.testing.assert_close(sampled.halt_logp, expected, atol=1e-5, rtol=0)


def test_the_halting_head_reads_whether_the_state_still_moves():
    """lambda rises as the largest per-position change of the state falls (FPRM's signal), the same
    for any input length, and the weight of that signal is learned."""
    from r3m_agent.r3m import HaltingHead

    head = HaltingHead(8, -3.0)
    head.reset_parameters()
    state = torch.zeros(3, 8)
    lam = head(state, torch.tensor([1e-1, 1e-2, 1e-4]))
    assert lam[0] < lam[1] < lam[2] and lam[1].item() == pytest.approx(torch.sigmoid(torch.tensor(-3.0)).item(), abs=1e-4)
    head(state, torch.tensor([1e-3] * 3)).sum().backward()
    assert head.change.grad is not None and head.change.grad.abs().item() > 0


def test_the_change_the_halting_head_reads_ignores_the_causal_payload():
    """Acting decides the step over the observation alone; re-scoring with the payload appended must
    read the same change (the largest over the observation's positions)."""
    from r3m_agent.blocks import prepare
    from r3m_agent.r3m import _max_change

    ids = torch.randint(10, 50, (2, 9))
    b = prepare(ids, None, "causal", None, decision_index=torch.tensor([4, 6]))
    h, prev = torch.zeros(2, 9, 4), torch.zeros(2, 9, 4)
    h[:, 7:] = 5.0  # only payload positions move
    assert _max_change(h, prev, b).tolist() == [0.0, 0.0]


def stable_steps(step_logits: torch.Tensor, patience: int) -> torch.Tensor:
    """By hand: per row, the first step (1-based) whose argmax answer has held for ``patience`` steps."""
    pred = step_logits.argmax(-1)  # [K, B, W]
    K, B = pred.shape[:2]
    steps = torch.full((B,), K)
    for row in range(B):
        same = 0
        for k in range(1, K):
            same = same + 1 if torch.equal(pred[k, row], pred[k - 1, row]) else 0
            if same >= patience:
                steps[row] = k + 1
                break
    return steps


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_stable_rule_stops_when_the_answer_settles(patience):
    """halt="stable": a row stops once its predicted answer held for ``patience`` steps, with the
    outputs of that step, and a halted row runs no more blocks; the rule needs no trained head."""
    torch.manual_seed(0)
    model = R3M(R3MConfig(d_model=32, n_heads=2, mem_slots=4, semantic_slots=0, K=12)).eval()
    ids = torch.randint(9, 100, (32, 6), generator=torch.Generator().manual_seed(4))
    fill = {"mode": "fill", "answer_len": 4}
    with torch.no_grad():
        full = model(ids, **fill)
        out = model(ids, halt="stable", halt_patience=patience, **fill)
    want = stable_steps(full.step_logits, patience)
    assert torch.equal(out.steps, want) and len(set(want.tolist())) > 1  # rows settle at different steps
    assert int(want.min()) >= patience + 1  # a prediction must be seen patience + 1 times
    for row in range(ids.shape[0]):
        torch.testing.assert_close(out.logits[row], full.step_logits[want[row] - 1, row], atol=1e-5, rtol=0)
    assert torch.equal(out.halt_logp, torch.zeros(ids.shape[0]))  # deterministic: not part of a sampled action
    assert torch.equal(out.blocks, model.cfg.prelude_layers + want * model.cfg.core_layers)
    with pytest.raises(ValueError, match="halt_patience"):
        model(ids, halt="stable", halt_patience=0, **fill)
