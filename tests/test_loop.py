"""The training loop: NaN/inf steps skipped and counted, a run that keeps producing them stops with a
clear message and leaves its last checkpoint loadable; resume from a checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from r3m.learn.losses import LossOut
from r3m.learn.loop import Diverged, FitSpec, fit, make_optimizer
from r3m.learn.run import Run
from r3m_agent import R3M, R3MConfig, load_checkpoint


def tiny():
    torch.manual_seed(0)
    return R3M(R3MConfig(d_model=16, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=2, semantic_slots=0, K=2))


def loss_with_nan_at(model, bad_steps):
    ids = torch.randint(10, 40, (2, 5), generator=torch.Generator().manual_seed(1))

    def loss_fn(step: int) -> LossOut:
        out = model(ids, K=2)
        loss = out.logits.float().pow(2).mean()
        if step in bad_steps:
            loss = loss * float("nan")  # an injected NaN: the loss and every gradient from it
        return LossOut(loss, float(loss.detach()), 0.0, [], 0.0, 0.0)

    return loss_fn


def params(model):
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def test_a_nan_step_is_skipped_and_counted(tmp_path):
    model = tiny()
    run = Run(tmp_path, torch.device("cpu"), tensorboard=False, progress=False)
    seen = []

    def loss_fn(step):
        seen.append(params(model))
        return loss_with_nan_at(model, {3})(step)

    state = fit(run, "p", model, make_optimizer(model, 1e-2, 0.0), FitSpec(6, 1e-2, warmup=1), loss_fn)
    assert state.nan_steps == 1 and state.done and math.isnan(state.grad_norms[3])
    assert torch.equal(seen[3], seen[4])  # no update from the NaN step
    assert not torch.equal(seen[2], seen[3])  # the others update
    assert torch.isfinite(params(model)).all()


def test_nan_steps_in_a_row_stop_the_run_and_the_last_checkpoint_loads(tmp_path):
    model = tiny()
    run = Run(tmp_path, torch.device("cpu"), tensorboard=False, progress=False)
    spec = FitSpec(40, 1e-2, warmup=1, ckpt_every=5, max_bad_steps=4)
    with pytest.raises(Diverged, match="4 steps in a row"):
        fit(run, "p", model, make_optimizer(model, 1e-2, 0.0), spec, loss_with_nan_at(model, set(range(12, 40))))
    fresh = tiny()
    payload = load_checkpoint(run.ckpt("p"), fresh)
    assert payload["extra"]["fit"]["step"] == 10 and not payload["extra"]["fit"]["done"]
    assert torch.isfinite(params(fresh)).all()
    # a later, healthy attempt resumes from that checkpoint
    state = fit(run, "p", fresh, make_optimizer(fresh, 1e-2, 0.0), FitSpec(14, 1e-2, warmup=1, ckpt_every=5),
                loss_with_nan_at(fresh, set()))
    assert state.done and state.step == 14 and len(state.losses) == 14


def test_nan_run_through_the_command_line_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    """imitate with a loss that is always NaN: exit 1, one line naming the phase and the remedy."""
    from r3m.learn import cli, losses
    from r3m.train import imitate

    real = losses.imitation_loss

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        return out._replace(loss=out.loss * float("nan"))

    monkeypatch.setattr("r3m.learn.stages.imitation_loss", poisoned)
    argv = ["--families", "arithmetic", "--levels", "1", "--steps", "10", "--batch-size", "4", "--k-train", "2",
            "--max-bad-steps", "3", "--baseline", "false", "--stage", "1", "--progress", "false",
            "--tensorboard", "false", "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exit_:
        cli.run(imitate.main, imitate.Config, argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert exit_.value.code == 1 and len(err) == 1 and "NaN/inf" in err[0] and "stage1" in err[0]


def test_level_curriculum_unlocks_levels_in_order_then_draws_all():
    from r3m.learn.data import DemoSource, task_spec

    spec = task_spec("prefix", (1, 2, 3))
    src = DemoSource([spec], (), 0, stream="demos", tool_fraction=0.0, episodes=16, curriculum_steps=30)
    assert [src.levels_at(s, spec) for s in (0, 9, 10, 19, 20, 29, 30)] == \
        [(1,), (1,), (1, 2), (1, 2), (1, 2, 3), (1, 2, 3), (1, 2, 3)]
    drawn = {ep[0].difficulty for ep in src.episodes(0, spec)}
    assert drawn == {1}
    assert {ep[0].difficulty for s in range(40, 44) for ep in src.episodes(s, spec)} == {1, 2, 3}
    off = DemoSource([spec], (), 0, stream="demos", tool_fraction=0.0, episodes=16)
    assert off.levels_at(0, spec) == (1, 2, 3)


def test_streamed_loss_is_per_episode_so_noop_turns_do_not_dilute_the_answer():
    """A batch's loss is the mean over episodes of each episode's summed turn losses (and write
    penalties): the same as averaging the episodes' losses taken one at a time."""
    from r3m.learn.data import DemoSource, task_spec
    from r3m.learn.losses import imitation_loss

    # the character view: its no-op turns have a target (the eos), so a per-turn mean would differ
    spec = task_spec("memory", (1, 2), view="chars", stream=True)
    episodes = DemoSource([spec], (), 0, stream="demos", tool_fraction=0.0, episodes=3).episodes(0, spec)
    assert len({len(ep) for ep in episodes}) > 1  # episodes of different lengths
    model = R3M(R3MConfig(d_model=16, n_heads=2, prelude_layers=0, core_layers=1, mem_slots=4, semantic_slots=0,
                          K=2, write_gate=True)).eval()
    kw = dict(K=2, grad_steps=2, write_penalty=1.0, write_budget=1.0, write_cost=0.01)
    with torch.no_grad():
        whole = imitation_loss(model, spec, episodes, **kw).loss
        alone = [imitation_loss(model, spec, [ep], **kw).loss for ep in episodes]
    torch.testing.assert_close(whole, torch.stack(alone).mean(), rtol=1e-4, atol=1e-5)
    assert whole > 2.0  # a sum over many turns of an untrained model, not a per-turn mean (~log V)


def test_a_time_budget_ends_the_phase_and_the_learning_rate_decays_to_it(tmp_path, monkeypatch):
    """FitSpec.time_budget: the phase ends (done, checkpointed) once its training time reaches the
    budget, before its steps, with the cosine schedule at its floor by then."""
    from r3m.learn import loop

    clock = iter(range(0, 10_000, 10))  # every time.time() call: 10 s later
    monkeypatch.setattr(loop.time, "time", lambda: float(next(clock)))
    model = tiny()
    run = Run(tmp_path, torch.device("cpu"), tensorboard=False, progress=False)
    lrs = []
    opt = make_optimizer(model, 1e-2, 0.0)

    def loss_fn(step):
        lrs.append(opt.param_groups[0]["lr"])
        return loss_with_nan_at(model, set())(step)

    state = fit(run, "p", model, opt, FitSpec(1000, 1e-2, warmup=1, time_budget=100.0), loss_fn)
    assert state.done and 1 < state.step < 1000 and (tmp_path / "ckpt" / "p.pt").exists()
    assert lrs[-1] < 0.2e-2 < lrs[1]  # decayed with the time spent, not with the (unreached) steps
    assert loop.lr_at(10, 1000, 1.0, 1, time_frac=1.0) == pytest.approx(0.1)
    assert loop.lr_at(10, 1000, 1.0, 1) > 0.99


def test_a_stop_rule_ends_the_phase_done_and_checkpointed(tmp_path):
    """FitSpec.stop_when(step): checked before each step; once true the phase ends as if its steps
    were done (state done, checkpoint written), with no time budget needed."""
    model = tiny()
    run = Run(tmp_path, torch.device("cpu"), tensorboard=False, progress=False)
    asked = []

    def stop(step):
        asked.append(step)
        return step >= 7

    state = fit(run, "p", model, make_optimizer(model, 1e-2, 0.0), FitSpec(1000, 1e-2, warmup=1, stop_when=stop),
                loss_with_nan_at(model, set()))
    assert state.done and state.step == 7 and asked == list(range(8)) and (tmp_path / "ckpt" / "p.pt").exists()
