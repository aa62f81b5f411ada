"""Causal masking, padding invariance and fill mode, for the dense baseline and for R3M."""

import pytest
import torch

from r3m_agent import DenseConfig, DenseTransformer, R3M, R3MConfig
from r3m_agent.blocks import prepare

ATOL = 1e-5


V = 100  # draw ordinary token ids from the character range (ids 9..104)


def dense():
    torch.manual_seed(0)
    return DenseTransformer(DenseConfig(d_model=32, n_layers=2, n_heads=2)).eval()


def r3m(**kw):
    torch.manual_seed(0)
    cfg = dict(d_model=32, n_heads=2, prelude_layers=1, core_layers=2, mem_slots=4, semantic_slots=16,
               semantic=True, write_bias_init=5.0, K=4)
    return R3M(R3MConfig(**{**cfg, **kw})).eval()


def tokens(*shape, seed=1):
    return torch.randint(9, V, shape, generator=torch.Generator().manual_seed(seed))


def filled_carry(model, batch):
    """A non-empty memory from a previous call, so the tests also cover reads."""
    if not isinstance(model, R3M):
        return {}
    carry = model(tokens(batch, 6, seed=7), K=2).carry
    assert int(carry.count.min()) > 0
    return {"carry": carry}


MODELS = {
    "dense": (dense, {}),
    "r3m-K1": (r3m, {"K": 1}),
    "r3m-K4": (r3m, {"K": 4}),
}


@pytest.mark.parametrize("name", MODELS)
def test_causal_logits_ignore_future_tokens(name):
    build, kw = MODELS[name]
    model = build()
    kw = {**kw, **filled_carry(model, 2)}
    ids = tokens(2, 12)
    t = 6
    changed = ids.clone()
    changed[:, t + 1 :] = tokens(2, 12 - t - 1, seed=5)
    with torch.no_grad():
        a, b = model(ids, **kw), model(changed, **kw)
    torch.testing.assert_close(a.logits[:, : t + 1], b.logits[:, : t + 1], atol=ATOL, rtol=0)
    assert (a.logits[:, t + 1 :] - b.logits[:, t + 1 :]).abs().max() > 1e-3  # the test can fail
    assert ((a.tool_logits - b.tool_logits).abs().amax(-1) > 1e-5).all()  # decision point: the last token


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("mode", ["causal", "fill"])
def test_all_pad_row_stays_finite(name, mode):
    build, kw = MODELS[name]
    model = build()
    fill = {"mode": "fill", "answer_len": 2} if mode == "fill" else {}
    ids, mask = tokens(2, 5), torch.tensor([[False] * 5, [False, False, True, True, True]])
    b = prepare(ids, mask, fill.get("mode", "causal"), fill.get("answer_len"))
    assert b.attn_mask.any(dim=-1).all()  # no query row with nothing to attend to (NaN softmax)
    with torch.no_grad():
        out = model(ids, mask, **fill, **kw)
    assert all(torch.isfinite(t).all() for t in (out.logits, out.tool_logits, out.halt_probs, out.hidden))


def padded_batch(seqs, side, pad_id=0):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for row, seq in enumerate(seqs):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, span], mask[row, span] = seq, True
    return ids, mask


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("mode", ["causal", "fill"])
def test_padding_does_not_change_real_tokens(name, mode):
    build, kw = MODELS[name]
    model = build()
    carry = filled_carry(model, 3).get("carry")
    fill = {"mode": "fill", "answer_len": 5} if mode == "fill" else {}
    seqs = [tokens(9, seed=2), tokens(12, seed=3), tokens(5, seed=4)]
    with torch.no_grad():
        refs = []
        for row, seq in enumerate(seqs):
            row_carry = {"carry": carry.select(torch.tensor([row]))} if carry is not None else {}
            refs.append(model(seq[None], **fill, **kw, **row_carry))
        for side in ("left", "right"):
            ids, mask = padded_batch(seqs, side, pad_id=3)  # a real character as pad: must not matter
            out = model(ids, mask, **fill, **kw, **({"carry": carry} if carry is not None else {}))
            assert torch.isfinite(out.logits).all()
            for row, ref in enumerate(refs):
                got = out.logits[row][mask[row]] if mode == "causal" else out.logits[row]
                torch.testing.assert_close(got, ref.logits[0], atol=ATOL, rtol=0)
                torch.testing.assert_close(out.tool_logits[row], ref.tool_logits[0], atol=ATOL, rtol=0)
                torch.testing.assert_close(out.halt_probs[row], ref.halt_probs[0], atol=ATOL, rtol=0)
                if carry is not None:
                    torch.testing.assert_close(out.carry.slots[row], ref.carry.slots[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_fill_slots_see_whole_prompt(name):
    build, kw = MODELS[name]
    model = build()
    ids = tokens(2, 10)
    changed = ids.clone()
    changed[:, 0] = (ids[:, 0] + 1 - 9) % (V - 9) + 9
    with torch.no_grad():
        for answer_len in (1, 7):
            a = model(ids, mode="fill", answer_len=answer_len, **kw)
            b = model(changed, mode="fill", answer_len=answer_len, **kw)
            assert a.logits.shape == (2, answer_len, model.cfg.vocab_size)
            assert a.step_logits.shape[1:] == (2, answer_len, model.cfg.vocab_size)
            assert ((a.logits - b.logits).abs().amax(dim=-1) > 1e-4).all()  # every slot, every row


def test_fill_mode_needs_answer_len_and_mode_is_checked():
    model = dense()
    with pytest.raises(ValueError, match="answer_len"):
        model(tokens(1, 4), mode="fill")
    with pytest.raises(ValueError, match="mode"):
        model(tokens(1, 4), mode="sideways")
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(tokens(1, 4), torch.ones(1, 5, dtype=torch.bool))


@pytest.mark.parametrize("sees", [False, True])
def test_input_sees_slots_decides_whether_the_input_depends_on_the_answer_width(sees):
    """Input-blind (the default): the input's states, hence the decision state, are the same
    whatever the number of answer slots; with input_sees_slots they change."""
    model = r3m(input_sees_slots=sees, semantic=False)
    ids = tokens(2, 7)
    a = model(ids, mode="fill", answer_len=3, K=3).hidden[:, :7]
    b = model(ids, mode="fill", answer_len=9, K=3).hidden[:, :7]
    assert torch.allclose(a, b, atol=ATOL) is (not sees)
    b_ = prepare(ids, None, "fill", 3, input_sees_slots=sees)
    assert bool(b_.attn_mask[0, 0, :7, 7:].any()) is sees and bool(b_.attn_mask[0, 0, 7:, :7].all())
