import torch

from r3m.learn.losses import write_budget_penalty
from r3m_agent import R3M, R3MConfig, reset_carry
from r3m_agent.memory import EpisodicMemory, empty_carry

D, M = 8, 4




def memory(gate_bias):
    mem = EpisodicMemory(D, 2, M, write_bias_init=gate_bias)
    mem.reset_parameters()
    with torch.no_grad():
        mem.gate.weight.zero_()
        mem.content.weight.copy_(torch.eye(D))  # slot content = the pooled vector, to read it back
    return mem


def test_fifo_order_and_capacity():
    mem = memory(10.0)
    carry = empty_carry(1, M, D)
    for i in range(7):
        carry, hard, soft = mem.write(carry, torch.full((1, D), float(i)))
        assert hard.tolist() == [True] and soft.item() > 0.99
        n = min(i + 1, M)
        assert carry.count.tolist() == [n]
        kept = carry.in_order(0)[:, 0].tolist()
        assert kept == [float(v) for v in range(i + 1 - n, i + 1)]  # oldest first; oldest overwritten
    assert carry.ptr.tolist() == [7 % M]


def test_closed_gate_writes_nothing():
    mem = memory(-10.0)
    carry = empty_carry(2, M, D)
    new, hard, soft = mem.write(carry, torch.randn(2, D))
    assert not hard.any() and soft.max() < 1e-4
    assert torch.equal(new.slots, carry.slots) and not new.valid.any() and torch.equal(new.ptr, carry.ptr)


def test_gate_trains_through_straight_through_estimator():
    mem = memory(2.0)
    pooled = torch.randn(2, D)
    carry, hard, soft = mem.write(empty_carry(2, M, D), pooled)
    assert hard.all()
    torch.testing.assert_close(carry.slots[:, 0], pooled, atol=0, rtol=0)  # forward is the exact hard write
    mem.read(torch.randn(2, 3, D), carry).pow(2).sum().backward()
    assert mem.gate.bias.grad.abs() > 0


def test_reads_see_only_valid_slots():
    mem = memory(10.0)
    x = torch.randn(2, 3, D)
    assert mem.read(x, empty_carry(2, M, D)).abs().max() == 0  # an empty memory reads exactly zero
    carry, _, _ = mem.write(empty_carry(2, M, D), torch.randn(2, D))
    read = mem.read(x, carry)
    assert read.abs().max() > 0
    carry.slots[:, 1:] = torch.randn(2, M - 1, D)  # junk in slots never written must not be read
    torch.testing.assert_close(mem.read(x, carry), read, atol=0, rtol=0)


def model(gate_bias, **kw):
    torch.manual_seed(0)
    cfg = dict(d_model=32, n_heads=2, mem_slots=M, semantic_slots=0, K=3, write_bias_init=gate_bias)
    return R3M(R3MConfig(**{**cfg, **kw})).eval()


def ids(seed, B=2, T=6):
    return torch.randint(9, 100, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_carry_round_trips_through_two_calls():
    m = model(5.0)
    first = m(ids(1))
    assert first.writes.tolist() == [3, 3] and first.carry.count.tolist() == [3, 3]
    second = m(ids(2), carry=first.carry)
    fresh = m(ids(2))
    assert (second.logits - fresh.logits).abs().max() > 1e-4  # the second turn reads the first's writes
    assert second.carry.count.tolist() == [M, M] and second.carry.ptr.tolist() == [6 % M] * 2
    again = m(ids(2), carry=first.carry.detach().to("cpu"))
    torch.testing.assert_close(again.logits, second.logits, atol=0, rtol=0)
    row1 = m(ids(2)[1:], carry=first.carry.select(torch.tensor([1])))
    torch.testing.assert_close(row1.logits[0], second.logits[1], atol=1e-6, rtol=0)


@torch.no_grad()
def test_reset_between_episodes():
    m = model(5.0)
    carry = m(ids(1)).carry
    reset = reset_carry(carry, torch.tensor([True, False]))
    assert reset.count.tolist() == [0, 3] and reset.ptr.tolist() == [0, 3]
    assert reset.slots[0].abs().max() == 0 and torch.equal(reset.slots[1], carry.slots[1])
    out = m(ids(2), carry=reset)
    torch.testing.assert_close(out.logits[0], m(ids(2)).logits[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logits[1], m(ids(2), carry=carry).logits[1], atol=1e-6, rtol=0)
    assert reset_carry(None, torch.tensor([True])) is None


@torch.no_grad()
def test_causal_writes_not_readable_in_same_call_but_fill_writes_are():
    closed = model(-10.0)
    opened = model(-10.0)
    opened.memory.gate.bias.fill_(10.0)  # same weights, gate forced open
    start = closed(ids(3), K=2).carry  # both read a non-empty memory that came in
    a, b = closed(ids(1), carry=start), opened(ids(1), carry=start)
    assert a.writes.tolist() == [0, 0] and b.writes.tolist() == [3, 3]
    torch.testing.assert_close(a.step_logits, b.step_logits, atol=0, rtol=0)
    assert not torch.equal(a.carry.slots, b.carry.slots)
    fa = closed(ids(1), mode="fill", answer_len=2)
    fb = opened(ids(1), mode="fill", answer_len=2)
    torch.testing.assert_close(fa.step_logits[0], fb.step_logits[0], atol=0, rtol=0)  # nothing written yet
    assert (fa.step_logits[1:] - fb.step_logits[1:]).abs().max() > 1e-4  # step k reads step k-1's write


@torch.no_grad()
def test_writes_counted_up_to_halting_step():
    m = model(5.0, K=6)
    m.halting.proj.weight.normal_(0.0, 1.0)
    m.halting.proj.bias.fill_(-1.0)
    out = m(ids(4, B=16), halt=True)
    assert torch.equal(out.writes, out.steps) and torch.equal(out.carry.count, out.writes.clamp(max=M))
    assert len(set(out.steps.tolist())) > 1


def test_write_budget_penalty():
    probs = torch.tensor([[0.9, 0.9, 0.9], [0.1, 0.2, 0.0]], requires_grad=True)
    pen = write_budget_penalty(probs, budget=1.0)
    torch.testing.assert_close(pen, torch.tensor(1.7 / 2))
    pen.backward()
    assert probs.grad[0].gt(0).all() and probs.grad[1].eq(0).all()
    assert write_budget_penalty(None, 1.0) == 0
