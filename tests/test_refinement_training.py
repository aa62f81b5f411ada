"""The training ingredients of recursive models on Sudoku (TRM and its successors): attention over a
view's constraint graph, refinement continued across segments with the state detached, the weights'
moving average, and the family's on-the-fly augmentation switched off for the ablation."""

from __future__ import annotations

import pytest
import torch

from r3m import envs
from r3m.envs.families.sudoku import SudokuFamily
from r3m.envs.text_env import TextTaskEnv
from r3m.learn.data import DemoSource, collate_fill, task_spec
from r3m.learn.io import ViewIO, with_views
from r3m.learn.loop import FitSpec, Interrupted, WeightAverage, fit, make_optimizer
from r3m.learn.losses import LossOut, SegmentCarry, imitation_forward, imitation_loss
from r3m.learn.run import Run
from r3m.verifiers.sudoku import PEERS
from r3m_agent import R3M, R3MConfig, RefineState
from r3m_agent.blocks import prepare


def sudoku_model(**overrides):
    spec = task_spec("sudoku", (1,))
    torch.manual_seed(0)
    cfg = R3MConfig(d_model=32, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=2, semantic_slots=0, K=2)
    return R3M(with_views(cfg, [spec])), spec


def demo_batch(spec, model, n=3):
    source = DemoSource([spec], (), 0, stream="demos", tool_fraction=0.0, turns=n)
    _, episodes = source.get(0)
    return episodes, collate_fill([e[0] for e in episodes], ViewIO.of(spec, model.cfg))


def test_peers_limit_a_cell_to_its_row_column_and_box_and_the_decision_point_reads_all():
    model, spec = sudoku_model()
    _, batch = demo_batch(spec, model, n=1)
    lay = batch.layout
    b = prepare(lay.ids, lay.mask, "fill", None, **lay.forward_kwargs(), peers=True)
    cells = lay.forward_kwargs()["outputs"][0]  # the 81 cell positions, in cell order
    allowed = b.attn_mask[0, 0]
    for cell in (0, 40, 80):
        sees = {int(c) for c in range(81) if allowed[cells[cell], cells[c]]}
        assert sees == set(PEERS[cell]) | {cell}  # 20 peers and itself
    assert bool(allowed[b.decision[0]].all())  # the <sep> (halting, tool choice) reads every position
    full = prepare(lay.ids, lay.mask, "fill", None, **lay.forward_kwargs())
    assert bool(full.attn_mask.all())
    with pytest.raises(ValueError, match="coordinates"):
        prepare(lay.ids, lay.mask, "fill", None, slots=lay.forward_kwargs()["slots"], peers=True)


def test_the_cells_view_declares_peers_and_its_ablation_does_not():
    views = SudokuFamily().views()
    assert views["cells"].peers and not views["cells-all"].peers
    assert views["cells"].describe()["peers"] is True and views["cells-all"].describe()["name"] == "cells-all"
    spec = task_spec("sudoku", (1,), view="cells-all")
    cfg = with_views(R3MConfig(d_model=32, n_heads=2, prelude_layers=0, core_layers=1, semantic_slots=0), [spec])
    assert ViewIO.of(spec, cfg).model_kwargs()["peers"] is False


def test_a_refinement_continued_from_its_state_equals_one_longer_refinement():
    model, spec = sudoku_model()
    _, batch = demo_batch(spec, model)
    io = ViewIO.of(spec, model.cfg)
    with torch.no_grad():
        whole = imitation_forward(model, spec, batch, K=5, io=io)
        first = imitation_forward(model, spec, batch, K=2, io=io)
        rest = imitation_forward(model, spec, batch, K=3, io=io, state=RefineState.of(first))
    assert io.model_kwargs()["feedback"]  # the fed-back predictions travel with the state
    torch.testing.assert_close(rest.logits, whole.logits)
    torch.testing.assert_close(rest.hidden, whole.hidden)
    with pytest.raises(ValueError, match="state.hidden"):
        imitation_forward(model, spec, batch, K=1, io=io, state=RefineState(first.hidden[:1], first.logits[:1]))


def grads(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()])


def test_segments_detach_the_carried_state_so_a_segment_trains_only_its_own_steps():
    model, spec = sudoku_model()
    episodes, batch = demo_batch(spec, model)
    chain = SegmentCarry(2)
    assert chain.at(0) == (0, 0) and chain.state is None
    imitation_loss(model, spec, episodes, K=2, grad_steps=2, segment=chain)  # segment 1 stores its state
    assert chain.state is not None and not chain.state.hidden.requires_grad
    start = RefineState(chain.state.hidden.clone(), chain.state.logits.clone())
    assert chain.at(1) == (0, 1) and chain.state is not None  # the same batch continues

    def second_segment_grads(chain, state=None):
        if state is not None:
            chain._batch, chain.state = 0, state
            chain.at(1)
        model.zero_grad()
        imitation_loss(model, spec, episodes, K=2, grad_steps=2, segment=chain).loss.backward()
        return grads(model)

    through_chain = second_segment_grads(chain)
    from_constant = second_segment_grads(SegmentCarry(2), start)
    assert through_chain.abs().sum() > 0
    torch.testing.assert_close(through_chain, from_constant)  # the first segment's steps get nothing
    # an attached start would carry the second segment's loss back into the first segment's steps
    first = imitation_forward(model, spec, batch, K=2, grad_steps=2)
    attached = second_segment_grads(SegmentCarry(2), RefineState(first.hidden, first.logits))
    assert not torch.allclose(attached, from_constant, atol=1e-6)
    assert chain.at(2) == (1, 0) and chain.state is None  # a new batch starts from its input


def test_segments_need_single_turn_episodes():
    model, spec = sudoku_model()
    episodes, _ = demo_batch(spec, model)
    with pytest.raises(ValueError, match="single-turn"):
        imitation_loss(model, spec, [episodes[0] * 2], K=2, grad_steps=1, segment=SegmentCarry(2))
    with pytest.raises(ValueError, match="segments"):
        SegmentCarry(0)


def test_weight_average_warms_up_and_the_phase_ends_with_it(tmp_path):
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    avg = WeightAverage(lin, 0.9)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    avg.update(0)  # decay min(0.9, 1/10) = 0.1: mostly the new weights
    assert torch.allclose(avg.shadow[0], torch.full((1, 2), 0.1 * 1.0 + 0.9 * 3.0))
    with pytest.raises(ValueError):
        WeightAverage(lin, 1.0)

    def run_fit(path, stop_after=0):
        torch.manual_seed(0)
        model = R3M(R3MConfig(d_model=16, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=2,
                              semantic_slots=0, K=2))
        ids = torch.randint(10, 40, (2, 5), generator=torch.Generator().manual_seed(1))

        def loss_fn(step):
            loss = model(ids, K=2).logits.float().pow(2).mean()
            return LossOut(loss, float(loss.detach()), 0.0, [], None, None)

        run = Run(path, torch.device("cpu"), tensorboard=False, progress=False, stop_after=stop_after)
        spec = FitSpec(12, 1e-2, warmup=1, ckpt_every=4, ema=0.9)
        last = {}

        def keep_last(step):
            last["w"] = [p.detach().clone() for p in model.parameters()]
            return loss_fn(step)

        try:
            fit(run, "p", model, make_optimizer(model, 1e-2, 0.0), spec, keep_last)
        except Interrupted:
            return None, None
        return model, last

    whole, last = run_fit(tmp_path / "a")
    ended = [p.detach() for p in whole.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(ended, last["w"]))  # not the last weights: the average
    assert run_fit(tmp_path / "b", stop_after=6)[0] is None  # killed after 6 steps (checkpoint at 4)
    resumed, _ = run_fit(tmp_path / "b")
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)  # the average was restored with the checkpoint


def test_augmentation_off_trains_on_the_stored_entries_and_on_draws_their_symmetries():
    off = TextTaskEnv("sudoku", augment=False)
    on = TextTaskEnv("sudoku")
    stored = {e.puzzle for level in off.family.bank.values() for e in level}
    for i in range(5):
        plain, _ = off.reset(options={"index": i, "difficulty": 1})
        moved, _ = on.reset(options={"index": i, "difficulty": 1})
        assert plain.removeprefix("sudoku:") in stored
        assert moved.removeprefix("sudoku:") not in stored
        assert off.family.instance("train", i, 1).key == on.family.instance("train", i, 1).key  # same entry
    with pytest.raises(ValueError, match="no augmentation"):
        TextTaskEnv("prefix", augment=False)
    assert envs.make_family("sudoku").augmentation and not envs.make_family("prefix").augmentation


def test_segment_training_and_the_average_run_through_the_script(tmp_path):
    from train import imitate

    cfg = imitate.Config(families=("sudoku",), levels=(1,), preset="cpu-micro", stage="1", baseline=False,
                         steps=6, segments=2, ema=0.9, augment=False, eval_n=2, eval_ks=(1, 2), curriculum=0.0,
                         tool_fraction=0.0, progress=False, tensorboard=False, out=str(tmp_path / "run"))
    metrics = imitate.main(cfg)
    assert metrics["config"]["segments"] == 2 and metrics["config"]["augment"] is False
    spec = imitate.task_specs(cfg)[0]
    assert spec.train_env == {"augment": False} and spec.env == {}
    for bad in (dict(segments=0), dict(ema=1.0), dict(segments=2, stream=True, families=("memory",))):
        with pytest.raises(ValueError):
            imitate.Config(**bad)
