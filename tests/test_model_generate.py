import pytest
import torch

from r3m_agent import DenseConfig, DenseTransformer, R3M, R3MConfig
from r3m_agent.tokenizer import PAD_ID




def build(kind):
    torch.manual_seed(0)
    if kind == "dense":
        return DenseTransformer(DenseConfig(d_model=32, n_layers=2, n_heads=2)).eval()
    cfg = R3MConfig(d_model=32, n_heads=2, mem_slots=4, semantic_slots=0, K=2, write_bias_init=5.0)
    return R3M(cfg).eval()


def start(model, batch):
    """R3M starts from a non-empty memory (the same for every row), so reads are exercised."""
    return {"carry": model(torch.full((batch, 4), 20), K=1).carry} if isinstance(model, R3M) else {}


def generate(model, ids, mask, **kw):
    """New tokens, and the carry for R3M."""
    if isinstance(model, R3M):
        return model.generate(ids, mask, **start(model, ids.shape[0]), **kw)
    return model.generate(ids, mask, **kw), None


def prompts():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(9, 100, (n,), generator=g) for n in (3, 7, 5)]


def padded(seqs, side):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD_ID)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for row, seq in enumerate(seqs):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, span], mask[row, span] = seq, True
    return ids, mask


@pytest.mark.parametrize("kind", ["dense", "r3m"])
def test_batched_generation_with_eos_matches_unbatched(kind):
    model = build(kind)
    seqs = prompts()
    free = [generate(model, s[None], None, max_new_tokens=8, temperature=0.0, eos_id=None)[0][0].tolist()
            for s in seqs]
    eos = free[0][2]  # row 0 stops at (or before) its third token: EOS handling is exercised
    single = [generate(model, s[None], None, max_new_tokens=8, temperature=0.0, eos_id=eos) for s in seqs]
    expected = [row[: row.index(eos) + 1] if eos in row else row for row in free]
    assert [s[0][0].tolist() for s in single] == expected
    assert min(len(e) for e in expected) < 8
    for side in ("left", "right"):
        ids, mask = padded(seqs, side)
        out, carry = generate(model, ids, mask, max_new_tokens=8, temperature=0.0, eos_id=eos)
        assert out.shape == (3, max(len(e) for e in expected))
        for row, exp in enumerate(expected):
            assert out[row, : len(exp)].tolist() == exp
            assert (out[row, len(exp) :] == PAD_ID).all()
            if carry is not None:
                torch.testing.assert_close(carry.slots[row], single[row][1].slots[0], atol=1e-5, rtol=0)
                assert carry.count[row] == single[row][1].count[0] > 0


@pytest.mark.parametrize("kind", ["dense", "r3m"])
def test_sampling_top_k_and_seed(kind):
    model = build(kind)
    ids = prompts()[1][None].expand(64, -1)
    greedy, _ = generate(model, ids[:1], None, max_new_tokens=4, temperature=0.0, eos_id=None)
    top1, _ = generate(model, ids[:1], None, max_new_tokens=4, temperature=1.0, top_k=1, eos_id=None)
    assert torch.equal(greedy, top1)
    kw = dict(max_new_tokens=1, temperature=2.0, top_k=3, eos_id=None)
    a, _ = generate(model, ids, None, generator=torch.Generator().manual_seed(5), **kw)
    b, _ = generate(model, ids, None, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b)
    with torch.no_grad():
        first = model(ids[:1], **start(model, 1)).logits[0, -1]
    allowed = set(torch.topk(first, 3).indices.tolist())
    assert set(a[:, 0].tolist()) <= allowed and len(set(a[:, 0].tolist())) > 1
