"""Multi-process training (torchrun): with two gloo processes on the CPU, one step's averaged
gradients equal the gradients of one process on the same global batch, for the imitation loss of
train/imitate.py and for the policy-gradient loss of train/rl_verify.py (``pytest -k ddp``)."""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from r3m import tools
from r3m.learn import stages
from r3m.learn.data import task_spec
from r3m.learn.io import with_views
from r3m.learn.losses import imitation_loss, progressive_schedule
from r3m.learn.loop import average_gradients
from r3m.learn.policy import Policy
from r3m.learn.rollout import make_vec, run_episodes
from r3m.learn.run import Run, stream_rng
from r3m.train import rl_verify
from r3m_agent import R3M, R3MConfig

SPEC = task_spec("arithmetic", (1,))
# the built-in tools only: a spawned process does not see tools other test modules registered
BUILTIN_TOOLS = tuple(t for t in tools.list_tools() if str(tools.spec(t).entry_point).startswith("r3m.tools."))
IMITATION = stages.Imitation(steps=1, lr=1e-3, batch_size=6, k_train=3, grad_steps=2, tool_fraction=0.0)


def model() -> R3M:
    torch.manual_seed(0)
    return R3M(with_views(R3MConfig(d_model=32, n_heads=2, prelude_layers=0, core_layers=2, mem_slots=4,
                                    semantic_slots=0, K=3, tool_names=BUILTIN_TOOLS), [SPEC]))


def grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, store: str, job: str, payload, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        run = Run(None, torch.device("cpu"), tensorboard=False, progress=False, rank=rank, world=world)
        net = model()
        if job == "imitate":
            loss = stages.stage1_loss(run, net, [SPEC], IMITATION, seed=0)(0).loss
        else:
            cfg, batch = payload
            loss, _ = rl_verify.pg_loss(cfg, Policy(net, SPEC, K=2), batch, run)
        loss.backward()
        average_gradients(net)
        torch.save(grads(net), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def two_processes(tmp_path, job: str, payload=None) -> list[dict[str, torch.Tensor]]:
    out = str(tmp_path / "grads")
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), job, payload, out), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}") for r in range(2)]


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_ddp_imitation_step_equals_one_process_on_the_global_batch(tmp_path):
    ranks = two_processes(tmp_path, "imitate")
    assert_same(ranks[1], ranks[0])  # every process holds the same averaged gradients
    # one process, the union of both processes' batches (each draws its own: the rank is in its key)
    halves = [stages._demos([SPEC], model(), IMITATION, 0, Run(None, torch.device("cpu"), rank=r, world=2)).get(0)[1]
              for r in range(2)]
    K, grad_steps, supervised = progressive_schedule(stream_rng(0, "schedule", 0), IMITATION.k_train,
                                                     IMITATION.grad_steps)
    net = model()
    imitation_loss(net, SPEC, halves[0] + halves[1], K=K, grad_steps=grad_steps, supervised_steps=supervised,
                   drift_penalty=IMITATION.drift_penalty, write_penalty=IMITATION.write_penalty,
                   write_budget=IMITATION.write_budget, write_cost=IMITATION.write_cost).loss.backward()
    assert_same(ranks[0], grads(net))


def test_ddp_policy_gradient_step_equals_one_process_on_the_global_batch(tmp_path):
    net = model().eval()
    with torch.no_grad():
        net.tool_head.weight.zero_()  # some calls, some answers
        net.tool_head.bias.fill_(-5.0)
        net.tool_head.bias[0] = net.tool_head.bias[1 + list(net.cfg.tool_names).index("calculator")] = 0.0
    policy = Policy(net, SPEC, K=2)
    vec = make_vec("arithmetic-v0", 8)
    try:
        with torch.no_grad():
            episodes = run_episodes(policy, vec, list(range(8)), {"split": "train", "difficulty": 1}, sample=True,
                                    generator=torch.Generator().manual_seed(3))
    finally:
        vec.close()
    if len(episodes) % 2 == 0:  # an odd number of episodes: the processes' shares differ in size
        episodes = episodes[:-1]
    batch = rl_verify.EpisodeBatch(episodes, torch.linspace(-1, 1, len(episodes)))
    batch.ref_lp = batch.old_lp - 0.1
    assert batch.n_actions > len(episodes)  # some episodes have several turns (a call, then the answer)
    cfg = dataclasses.replace(rl_verify.Config(env="arithmetic-v0", replay_coef=0.0, entropy_coef=0.01))
    ranks = two_processes(tmp_path, "rl", (cfg, batch))
    assert_same(ranks[1], ranks[0])
    one = model()
    loss, _ = rl_verify.pg_loss(cfg, Policy(one, SPEC, K=2), batch,
                                Run(None, torch.device("cpu")))
    loss.backward()
    assert_same(ranks[0], grads(one))


def test_ddp_rl_verify_runs_under_torchrun(tmp_path):
    """The script itself with two processes: each plays its share of the groups, rank 0 writes."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "rl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "train/rl_verify.py",
           "--env", "arithmetic-v0", "--levels", "1", "--k", "1", "--warm-steps", "4", "--warm-batch", "8",
           "--iterations", "2", "--groups", "3", "--group-size", "2", "--eval-n", "2",
           "--distill", "false", "--baselines", "false", "--out", str(out), "--progress", "false",
           "--tensorboard", "false", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["iterations"] == [2] and all(h["rl/env_steps"] >= 6 for h in m["history"])  # all 3 groups x 2
