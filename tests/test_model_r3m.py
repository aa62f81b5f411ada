"""R3M: any K, boundedness, truncated gradients, seeds, configs, parameter groups per stage."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from r3m.learn.loop import STAGE_GROUPS
from r3m.learn.losses import ponder_loss, write_budget_penalty
from r3m_agent import GROUP_NAMES, DenseConfig, DenseTransformer, R3M, R3MConfig

SMALL = dict(d_model=32, n_heads=2, prelude_layers=1, core_layers=2, mem_slots=4, semantic_slots=16, K=4,
             tool_names=("calculator", "sudoku_solver"))




def r3m(seed=0, **kw):
    torch.manual_seed(seed)
    return R3M(R3MConfig(**{**SMALL, **kw}))


def tokens(*shape, seed=1):
    return torch.randint(9, 100, shape, generator=torch.Generator().manual_seed(seed))


def test_any_k_runs():
    model = r3m(d_model=16, prelude_layers=0, core_layers=1).eval()
    ids = tokens(2, 5)
    with torch.no_grad():
        for K in range(1, 65):
            out = model(ids, K=K)
            assert out.step_logits.shape == (K, 2, 5, model.cfg.vocab_size)
            assert out.halt_probs.shape == (2, K) and out.write_probs.shape == (2,)
            assert out.steps.tolist() == [K, K] and torch.isfinite(out.logits).all()
            torch.testing.assert_close(out.logits, out.step_logits[-1])


@pytest.mark.parametrize("h_init", ["input", "learned"])
@pytest.mark.parametrize("mode", ["causal", "fill"])
def test_hidden_state_bounded_at_k64(h_init, mode):
    model = r3m(h_init=h_init, semantic=True, write_bias_init=5.0).eval()
    with torch.no_grad():  # large random weights make f chaotic; convex mixing must still bound h
        for p in model.parameters():
            p.normal_(0.0, 1.0)
    fill = {"mode": "fill", "answer_len": 4} if mode == "fill" else {}
    with torch.no_grad():
        out = model(tokens(2, 8), K=64, **fill)
    # RMSNorm output has rms 1, so |entry| <= sqrt(d) * max|weight|; h_0 and every f obey that
    root_d = model.cfg.d_model**0.5
    f_bound = root_d * model.core_norm.weight.abs().max().item()
    h0_bound = (root_d * model.input_norm.weight.abs().max().item() if h_init == "input"
                else model.h_init.abs().max().item())
    assert torch.isfinite(out.hidden).all() and torch.isfinite(out.step_logits).all()
    assert out.hidden.abs().max().item() <= max(f_bound, h0_bound) * (1 + 1e-5)
    eta = model.eta()
    assert (eta > 0).all() and (eta < 1).all()


def test_grad_steps_truncates_graph_but_not_values():
    model = r3m()
    ids = tokens(2, 6)
    full = model(ids, K=5)
    cut = model(ids, K=5, grad_steps=2)
    torch.testing.assert_close(cut.step_logits, full.step_logits)
    cut.step_logits[:3].sum().backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())
    model.zero_grad()
    cut.step_logits[3:].pow(2).sum().backward()
    assert model.embed.weight.grad.abs().max() > 0  # input recall: x reaches the graphed steps
    assert model.core[0].attn.qkv.weight.grad.abs().max() > 0


@pytest.mark.parametrize("build", [lambda s: r3m(s), lambda s: _dense(s)])
def test_same_seed_same_outputs(build):
    ids = tokens(2, 7)
    a, b, c = build(0), build(0), build(1)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    torch.testing.assert_close(a(ids).logits, b(ids).logits, atol=0, rtol=0)
    assert not torch.allclose(a(ids).logits, c(ids).logits)


def _dense(seed):
    torch.manual_seed(seed)
    return DenseTransformer(DenseConfig(d_model=32, n_layers=2, n_heads=2))


@pytest.mark.parametrize("cls", [R3MConfig, DenseConfig])
def test_config_round_trip_and_unknown_keys(cls):
    cfg = cls(d_model=64, n_heads=2, tool_names=("calculator",))
    data = cfg.to_dict()
    assert cls.from_dict(data) == cfg
    assert cls.from_dict({**data, "tool_names": list(cfg.tool_names)}) == cfg  # lists from JSON
    with pytest.raises(ValueError, match="unknown .*'d_modle'"):
        cls.from_dict({**data, "d_modle": 3})


@pytest.mark.parametrize("bad, err", [
    (dict(K=0), ValueError), (dict(eta_min=0.0), ValueError), (dict(eta_max=1.0), ValueError),
    (dict(eta_init=0.99), ValueError), (dict(d_model=30, n_heads=4), ValueError), (dict(h_init="zero"), ValueError),
    (dict(d_model="128"), TypeError), (dict(memory=1), TypeError), (dict(mem_slots=0), ValueError),
    (dict(semantic=True, semantic_slots=0), ValueError), (dict(tool_names=("calculator", "calculator")), ValueError),
    (dict(vocab_size=10), ValueError), (dict(halt_threshold=0.0), ValueError), (dict(core_layers=0), ValueError),
])
def test_config_validation(bad, err):
    with pytest.raises(err):
        R3MConfig(**bad)


def test_dense_config_validation():
    assert DenseConfig().n_layers >= 1 and DenseConfig(mlp_ratio=3).mlp_ratio == 3.0
    with pytest.raises(ValueError):
        DenseConfig(n_layers=0)
    with pytest.raises(TypeError):
        DenseConfig(n_heads=2.0)


@pytest.mark.parametrize("build", [
    r3m, lambda: r3m(memory=False, semantic_slots=0), lambda: r3m(h_init="learned", learn_eta=False),
    lambda: _dense(0),
], ids=["r3m", "r3m-bare", "r3m-learned-init", "dense"])
def test_param_groups_partition_parameters(build):
    model = build()
    groups = model.param_groups()
    assert tuple(groups) == GROUP_NAMES
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    with pytest.raises(ValueError, match="unknown parameter group"):
        model.set_trainable(["core", "brain"])


def _full_loss(model, ids):
    """Two turns of an episode (the second reads the first's write), with every loss term."""
    choice = torch.tensor([1, 0])
    first = model(ids, mode="fill", answer_len=3, K=3, semantic=True, choice=choice)
    out = model(ids.flip(1), mode="fill", answer_len=3, K=3, semantic=True, choice=choice, carry=first.carry)
    target = tokens(ids.shape[0], 3, seed=9)
    step_ce = torch.stack([F.cross_entropy(s.transpose(1, 2), target, reduction="none").mean(1)
                           for s in out.step_logits])
    tool_ce = F.cross_entropy(out.tool_logits, choice)
    ponder = ponder_loss(step_ce, out.halt_probs, lambda_p=0.3, beta=0.01).loss
    causal = model(ids, K=2, choice=choice, decision_index=torch.tensor([2, 2]))  # the payload input's choice
    return (step_ce.mean() + ponder + tool_ce + write_budget_penalty(first.write_probs + out.write_probs, 0.5)
            + causal.logits.float().pow(2).mean() * 1e-3)


@pytest.mark.parametrize("stage", sorted(STAGE_GROUPS))
def test_gradients_reach_trainable_groups_only(stage):
    model = r3m(write_bias_init=0.3, write_gate=True)  # with FIFO writes the gate has nothing to learn
    with torch.no_grad():  # the zero-initialised semantic output would hide its other weights' gradients
        model.semantic.o.weight.normal_(0.0, 0.02)
    model.set_trainable(STAGE_GROUPS[stage])
    _full_loss(model, tokens(2, 6)).backward()
    for name, params in model.param_groups().items():
        for p in params:
            if name in STAGE_GROUPS[stage]:
                assert p.requires_grad and p.grad is not None and p.grad.abs().max() > 0, (name, p.shape)
            else:
                assert not p.requires_grad and p.grad is None, (name, p.shape)


def test_semantic_memory_is_a_no_op_until_trained_alone():
    model = r3m()
    ids = tokens(2, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    off = model(ids, semantic=False).logits.detach()
    torch.testing.assert_close(model(ids, semantic=True).logits, off, atol=0, rtol=0)
    model.set_trainable(STAGE_GROUPS[4])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        out = model(ids, semantic=True)
        F.cross_entropy(out.logits.transpose(1, 2), tokens(2, 6, seed=3)).backward()
        opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("semantic.") for k in changed)
    torch.testing.assert_close(model(ids, semantic=False).logits, off, atol=0, rtol=0)
    assert not torch.allclose(model(ids, semantic=True).logits, off)


def test_tool_logits_and_memory_off():
    model = r3m(memory=False, tool_names=("calculator", "list_eval"))
    out = model(tokens(3, 5))
    # answer, the two tools, and "answer with the last verified tool result"
    assert out.tool_logits.shape == (3, 4) and out.carry is None and out.write_probs is None
    assert out.writes.tolist() == [0, 0, 0] and model.initial_carry(3) is None
    with pytest.raises(ValueError, match="memory=False"):
        model(tokens(3, 5), carry=r3m().initial_carry(3))
    with pytest.raises(ValueError, match="semantic"):
        r3m(semantic_slots=0)(tokens(1, 3), semantic=True)


def test_default_configs_work():
    for model in (R3M(), DenseTransformer()):
        out = model(tokens(1, 4))
        assert out.logits.shape == (1, 4, model.cfg.vocab_size)
    assert dataclasses.is_dataclass(R3MConfig()) and R3MConfig().vocab_size == DenseConfig().vocab_size
