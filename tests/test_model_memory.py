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


def test_stage_one_memory_writes_every_turn_without_a_gate():
    """The plan's Stage 1: FIFO, every turn written whatever the gate would say, no gate gradient."""
    mem = memory(-10.0)  # a gate that would stay shut
    carry = empty_carry(2, M, D)
    for i in range(3):
        carry, hard, soft = mem.write(carry, torch.randn(2, D), gate=False)
        assert hard.tolist() == [1.0, 1.0] and soft.tolist() == [1.0, 1.0]
    assert carry.count.tolist() == [3, 3]
    m = R3M(R3MConfig(d_model=16, n_heads=2, mem_slots=M, semantic_slots=0, K=2, write_bias_init=-10.0))
    assert not m.cfg.write_gate and m(ids(0)).writes.tolist() == [1.0, 1.0]
    assert m(ids(0), write_gate=True).writes.tolist() == [0.0, 0.0]


def test_recency_is_a_per_head_bias_by_age_not_part_of_the_key():
    """Two slots with the same content: the read's weights follow the learned age bias alone."""
    mem = memory(10.0)
    carry = empty_carry(1, M, D)
    same = torch.randn(1, D)
    for _ in range(2):
        carry, _, _ = mem.write(carry, same)
    x = torch.randn(1, 1, D)
    with torch.no_grad():
        q = mem.q(mem.read_norm(x))[0, 0]
        mem.null_key.copy_(-1e3 * q / q.norm())  # the null slot out of the way: scored far below, every head
        base = mem.read(x, carry)
        mem.age_bias[:, 0] = 5.0  # prefer the newest: same content, so the same read
    torch.testing.assert_close(mem.read(x, carry), base)
    with torch.no_grad():
        carry.slots[0, 0] = torch.randn(D)  # now the older slot (0) says something else
        newest = mem.read(x, carry)
        mem.age_bias[:, 0], mem.age_bias[:, 1] = 0.0, 5.0  # prefer the older one
        older = mem.read(x, carry)
    assert not torch.allclose(newest, older)


def test_fifo_order_and_capacity():
    mem = memory(10.0)
    carry = empty_carry(1, M, D)
    for i in range(7):
        carry, hard, soft = mem.write(carry, torch.full((1, D), float(i)))
        assert hard.tolist() == [1.0] and soft.item() > 0.99
        n = min(i + 1, M)
        assert carry.count.tolist() == [n]
        kept = carry.in_order(0)[:, 0].tolist()
        assert kept == [float(v) for v in range(i + 1 - n, i + 1)]  # oldest first; oldest overwritten
    assert carry.ptr.tolist() == [7 % M]


def test_closed_gate_writes_nothing():
    mem = memory(-10.0)
    full = empty_carry(2, M, D)
    for _ in range(M):  # a full memory: ptr points at the oldest slot, which a closed gate must keep
        full, _, _ = memory(10.0).write(full, torch.randn(2, D))
    new, hard, soft = mem.write(full, torch.randn(2, D))
    assert not hard.any() and soft.max() < 1e-4
    assert torch.equal(new.slots, full.slots) and torch.equal(new.valid, full.valid) and torch.equal(new.ptr, full.ptr)


def test_open_and_closed_gates_get_gradient_from_a_read():
    """The write gate learns in both directions: an open gate through the content it wrote, a closed
    one through how much reading the slot it did not fill would have mattered."""
    for bias in (2.0, -2.0):
        mem = memory(bias)
        pooled = torch.randn(2, D)
        carry, hard, soft = mem.write(empty_carry(2, M, D), pooled)
        assert bool(hard.all()) == (bias > 0)
        if bias > 0:
            torch.testing.assert_close(carry.slots[:, 0], pooled, atol=0, rtol=0)  # forward: the exact hard write
        else:  # forward: nothing written (the content waits in the empty slot, which is never read)
            assert carry.valid.abs().max() == 0 and carry.count.tolist() == [0, 0] and carry.ptr.tolist() == [0, 0]
            x = torch.randn(2, 3, D)
            torch.testing.assert_close(mem.read(x, carry), mem.read(x, empty_carry(2, M, D)), atol=0, rtol=0)
        (mem.read(torch.randn(2, 3, D), carry) * torch.randn(2, 3, D)).sum().backward()  # a loss linear in the read
        assert mem.gate.bias.grad.abs() > 0, bias


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
    cfg = dict(d_model=32, n_heads=2, mem_slots=M, semantic_slots=0, K=3, write_bias_init=gate_bias, write_gate=True)
    return R3M(R3MConfig(**{**cfg, **kw})).eval()


def ids(seed, B=2, T=6):
    return torch.randint(9, 100, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_one_write_per_call_and_the_carry_round_trips():
    m = model(5.0)
    first = m(ids(1))
    assert first.writes.tolist() == [1, 1] and first.carry.count.tolist() == [1, 1]
    second = m(ids(2), carry=first.carry)
    fresh = m(ids(2))
    assert (second.logits - fresh.logits).abs().max() > 1e-4  # the second turn reads the first's write
    assert second.carry.count.tolist() == [2, 2] and second.carry.ptr.tolist() == [2, 2]
    again = m(ids(2), carry=first.carry.detach().to("cpu"))
    torch.testing.assert_close(again.logits, second.logits, atol=0, rtol=0)
    row1 = m(ids(2)[1:], carry=first.carry.select(torch.tensor([1])))
    torch.testing.assert_close(row1.logits[0], second.logits[1], atol=1e-6, rtol=0)
    blind = m(ids(2), carry=first.carry, read_memory=False)  # the no-memory ablation
    torch.testing.assert_close(blind.logits, fresh.logits, atol=1e-6, rtol=0)


@torch.no_grad()
def test_reset_between_episodes():
    m = model(5.0)
    carry = m(ids(1)).carry
    reset = reset_carry(carry, torch.tensor([True, False]))
    assert reset.count.tolist() == [0, 1] and reset.ptr.tolist() == [0, 1]
    assert reset.slots[0].abs().max() == 0 and torch.equal(reset.slots[1], carry.slots[1])
    out = m(ids(2), carry=reset)
    torch.testing.assert_close(out.logits[0], m(ids(2)).logits[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logits[1], m(ids(2), carry=carry).logits[1], atol=1e-6, rtol=0)
    assert reset_carry(None, torch.tensor([True])) is None


@torch.no_grad()
def test_a_call_reads_only_the_memory_that_came_in():
    closed = model(-10.0)
    opened = model(-10.0)
    opened.memory.gate.bias.fill_(10.0)  # same weights, gate forced open
    start = model(10.0)(ids(3), K=2).carry  # both read a non-empty memory that came in
    for mode in ({}, {"mode": "fill", "answer_len": 2}):
        a, b = closed(ids(1), carry=start, **mode), opened(ids(1), carry=start, **mode)
        assert a.writes.tolist() == [0, 0] and b.writes.tolist() == [1, 1]
        torch.testing.assert_close(a.step_logits, b.step_logits, atol=0, rtol=0)  # this call's write: next call
        assert a.carry.count.tolist() == [1, 1] and b.carry.count.tolist() == [2, 2]


def test_the_task_loss_reaches_the_write_gate_across_two_turns():
    """A loss on the second turn's answer trains the first turn's write (gate and content)."""
    m = model(0.3).train()
    first = m(ids(1), mode="fill", answer_len=2)
    second = m(ids(2), mode="fill", answer_len=2, carry=first.carry)
    assert first.writes.sum() > 0
    torch.nn.functional.cross_entropy(second.logits.flatten(0, 1), torch.full((4,), 20)).backward()
    assert m.memory.gate.weight.grad.abs().max() > 0 and m.memory.content.weight.grad.abs().max() > 0


def test_write_penalties():
    from r3m.learn.losses import write_penalties

    probs = torch.tensor([0.9, 0.1, 0.9, 0.2, 0.9, 0.0], requires_grad=True)  # turns of episodes 0 and 1
    episode = torch.tensor([0, 1, 0, 1, 0, 1])
    pen = write_penalties([(episode, probs)], 2, weight=1.0, budget=1.0, cost=0.0)
    torch.testing.assert_close(pen, torch.tensor(1.7 / 2))  # episode 0 wrote 2.7, budget 1; episode 1 0.3
    pen.backward()
    assert probs.grad[[0, 2, 4]].gt(0).all() and probs.grad[[1, 3, 5]].eq(0).all()
    priced = write_penalties([(episode, probs.detach())], 2, weight=0.0, budget=1.0, cost=0.5)
    torch.testing.assert_close(priced, torch.tensor(0.5 * 3.0 / 2))
    assert write_budget_penalty(None, 1.0) == 0


def test_read_support_mass_measures_where_the_reads_look():
    """A read forced onto the newest slot (a huge age-0 bias) puts all its weight on the supporting
    fact exactly when that fact is the story's last line: the diagnostic must give that share,
    counted independently from the stories; with the reads spread evenly it gives ``uniform``."""
    import gymnasium as gym

    from r3m.learn.data import task_spec
    from r3m.learn.evaluation import EVAL_SEED, read_support_mass
    from r3m.learn.io import with_views
    from r3m.learn.policy import Policy

    spec = task_spec("memory", (1,), stream=True)
    torch.manual_seed(0)
    model = R3M(with_views(R3MConfig(d_model=16, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=24,
                                     semantic_slots=0, K=2), [spec])).eval()
    with torch.no_grad():
        model.memory.age_bias.fill_(-40.0)
        model.memory.age_bias[:, 0] = 40.0
    policy = Policy(model, spec, K=2)
    n = 30
    got = read_support_mass(policy, "memory", (1,), n, spec.env)
    env = gym.make("memory-v0", disable_env_checker=True, stream=True).unwrapped
    last = [env.reset(seed=EVAL_SEED + i, options={"split": "test", "difficulty": 1}) and env.instance
            for i in range(n)]
    want = sum(inst.data["supporting"] == (len(inst.prompt.split("\n")) - 1,) for inst in last) / n
    assert 0 < want < 1 and abs(got["by_level"][1] - want) < 1e-3
    with torch.no_grad():  # no preference at all: every valid slot and the null slot alike
        model.memory.age_bias.zero_()
        model.memory.q.weight.zero_()
        model.memory.null_key.zero_()
    even = read_support_mass(policy, "memory", (1,), n, spec.env)
    assert abs(even["mass"] - even["uniform"]) < 1e-4


def test_with_gold_facts_written_the_read_and_the_answer_learn_task_one():
    """The read path on its own (issue: memory that learns): each sentence written by hand as the
    bag of its words, only the read and the answer trained. Task 1 needs the content match (whose
    move?) and recency (the latest one); 250 steps of 16 stories reach 90% on unseen ones (the
    newest sentence's place, the shortcut a read finds without the question, gets about 45%)."""
    import numpy as np
    import torch.nn.functional as F

    from r3m import envs
    from r3m.learn.data import task_spec
    from r3m.learn.io import ViewIO, with_views
    from r3m_agent.memory import empty_carry
    from r3m_agent.tokenizer import VOCAB_SIZE

    spec = task_spec("memory", (1,), stream=True)
    torch.manual_seed(0)
    model = R3M(with_views(R3MConfig(d_model=32, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=16,
                                     semantic_slots=0, K=2), [spec]))
    io = ViewIO.of(spec, model.cfg)
    fam = envs.make_family("memory")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def answer(split: str, seeds) -> tuple[torch.Tensor, torch.Tensor]:
        insts = [fam.instance(split, int(s), 1) for s in seeds]
        stories = [x.prompt.split("\n")[:-1] for x in insts]
        carry = empty_carry(len(insts), 16, 32)
        for j in range(max(map(len, stories))):
            rows = torch.tensor([i for i, s in enumerate(stories) if len(s) > j])
            lay = io.batch([stories[i][j] for i in rows.tolist()])
            bag = (model.embed(lay.ids) * (lay.mask & (lay.ids >= VOCAB_SIZE))[..., None]).sum(1)
            new, _, _ = model.memory.write(carry.select(rows), bag, gate=False)
            carry = carry.put(rows, new)
        questions = [x.prompt.split("\n")[-1] for x in insts]
        lay = io.batch(questions)
        out = model(lay.ids, lay.mask, mode="fill", **lay.forward_kwargs(), **io.model_kwargs(), carry=carry, K=2)
        target = io.targets(questions, [0] * len(insts), [x.answer for x in insts], lay)[:, 0]
        return out.logits[:, 0].masked_fill(~io.allowed, float("-inf")), target

    rng = np.random.default_rng(0)
    for _ in range(250):
        logits, target = answer("train", rng.integers(2**31, size=16))
        loss = F.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits, target = answer("test", range(200))
    assert (logits.argmax(-1) == target).float().mean() >= 0.9


def test_a_write_keeps_the_mean_of_the_observation_where_the_view_asks():
    """turn_state "mean": the mean of the observation's token states, never the answer slots or the
    padding; "decision": the <sep> state. The memory family's words view asks for the mean (its
    ablation, words-sep, for the <sep>), and the model refuses an unknown mode."""
    import pytest
    from r3m import envs
    from r3m.learn.data import task_spec
    from r3m.learn.io import ViewIO, with_views
    from r3m_agent.blocks import prepare, turn_state

    ids_ = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    b = prepare(ids_, ids_ != 0, "fill", 2, None, False)
    h = torch.randn(2, b.ids.shape[1], 3)
    obs = b.mask & ~b.payload
    assert obs[1].sum() < obs[0].sum() and not (obs & b.payload).any()
    torch.testing.assert_close(turn_state(h, b, "mean")[1], h[1][obs[1]].mean(0))
    torch.testing.assert_close(turn_state(h, b), h[torch.arange(2), b.decision])
    h2 = h.clone()
    h2[b.payload] = 1e6  # the answer slots change: the mean does not
    torch.testing.assert_close(turn_state(h2, b, "mean"), turn_state(h, b, "mean"))

    family = envs.make_family("memory")
    assert family.views()["words"].write == "mean" and family.views()["words-sep"].write == "decision"
    for view, want in (("words", "mean"), ("words-sep", "decision")):
        spec = task_spec("memory", (1,), view=view)
        model = R3M(with_views(R3MConfig(d_model=16, n_heads=2, mem_slots=M, semantic_slots=0, K=2), [spec]))
        io = ViewIO.of(spec, model.cfg)
        assert io.model_kwargs()["write_from"] == want
        lay = io.batch(["Mary went to the kitchen."])
        carry = model.initial_carry(1)
        out = model(lay.ids, lay.mask, mode="fill", carry=carry, **lay.forward_kwargs(), **io.model_kwargs())
        assert out.writes.tolist() == [1.0]
    with pytest.raises(ValueError, match="write_from"):
        model(lay.ids, lay.mask, mode="fill", **lay.forward_kwargs(), **{**io.model_kwargs(), "write_from": "last"})
