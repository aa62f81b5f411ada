"""Training throughput of a family under each of its views: samples per second of the stage-1
training step (forward at the training K, the last ``grad_steps`` steps with gradients, backward,
optimiser step), at equal model size.

    python bench/train_throughput.py                 # Sudoku: the cell view against the character view
    python bench/train_throughput.py --family arithmetic --views places chars
    python bench/train_throughput.py --device cuda --preset gpu-sudoku --batch 768 --compile \
        --out bench/results/train_throughput_cuda.json     # the GPU preset against TRM's numbers

Beside the view comparison at ``--k``, the first view is timed at each of ``--ks`` (refinement steps
per training step) with the FLOPs of one training step counted by ``torch.utils.flop_counter``
(forward and backward, per sample), the achieved TFLOP/s and, on CUDA, their share of the card's
bf16 peak as measured here by a large bf16 matmul (None on the CPU, where the runs are fp32);
tokens/s counts the view's positions. On CUDA the step runs under bf16 autocast and, with
``--compile``, through ``torch.compile``. A ``torch.profiler`` summary of the largest K (the ops
that take the time) goes into the same file.

The batches are expert demonstrations of the family's levels, collated once before timing (the
time is the model's; generating demonstrations is timed apart as ``data_samples_per_s``). Both
models are built from one preset; a view's own tables (coordinates, feedback) make the parameter
counts differ by a few percent, and the file records both. Writes
``bench/results/train_throughput.json`` (``--out``) and prints a table; the ratio is measured in
one process, the views alternating, so machine load affects both alike.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from r3m.learn.cli import require_train_extra  # noqa: E402

require_train_extra(__name__)  # without torch: one line naming the extra, not a traceback

import torch  # noqa: E402

from r3m import tools  # noqa: E402
from r3m.learn.cli import parse_config  # noqa: E402
from r3m.learn.data import DemoSource, collate_fill, task_spec  # noqa: E402
from r3m.learn.io import ViewIO, with_views  # noqa: E402
from r3m.learn.losses import imitation_loss  # noqa: E402
from r3m.learn.reporting import provenance  # noqa: E402
from r3m.learn.run import autocast, resolve_device  # noqa: E402
from r3m_agent import PRESETS, R3M  # noqa: E402


@dataclass(frozen=True)
class Args:
    """Samples per second of the stage-1 training step of one family under each of its views, at equal
    model size; writes bench/results/train_throughput.json."""

    family: str = "sudoku"
    """the family to train"""
    views: tuple[str, ...] = ("cells", "chars")
    """the family's views to compare (the first is the one the ratio is of)"""
    levels: tuple[int, ...] = (1, 2)
    """levels the demonstrations come from"""
    preset: str = "cpu-small"
    """model size (r3m_agent.PRESETS)"""
    k: int = 8
    """refinement steps of the training step"""
    grad_steps: int = 2
    """steps with gradients (the last ones), as stage 1"""
    batch: int = 32
    """samples per step"""
    steps: int = 10
    """timed steps per view and round"""
    rounds: int = 3
    """rounds; the views alternate within each, and the median round counts"""
    device: str = "cpu"
    """cpu, cuda or auto"""
    threads: int = 1
    """CPU threads (0: torch's default)"""
    ks: tuple[int, ...] = (1, 8, 16)
    """refinement steps to time the first view at, with FLOPs and TFLOP/s (empty: skip)"""
    compile: bool = False
    """torch.compile the model (CUDA only)"""
    profile: bool = True
    """a torch.profiler summary of the largest --ks"""
    out: str = "bench/results/train_throughput.json"
    """where the results JSON goes"""


def card(device) -> str:
    """The accelerator's name, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return provenance().get("machine", {}).get("cpu", "cpu")


def build(args: Args, view: str):
    spec = task_spec(args.family, args.levels, view=view)
    base = dataclasses.replace(PRESETS[args.preset], K=args.k, tool_names=tuple(tools.list_tools()))
    torch.manual_seed(0)
    model = R3M(with_views(base, [spec]))
    io = ViewIO.of(spec, model.cfg)
    source = DemoSource([spec], model.cfg.tool_names, 0, stream="demos", tool_fraction=0.0, turns=args.batch)
    t0 = time.perf_counter()
    batches = [collate_fill([e for ep in source.get(i)[1] for e in ep][: args.batch], io) for i in range(args.steps)]
    data_rate = args.steps * args.batch / (time.perf_counter() - t0)
    return spec, model, batches, data_rate


def time_steps(args: Args, spec, model, batches, device, K: int | None = None, opt=None) -> float:
    """Samples per second of training steps over ``batches`` (moved to ``device`` ahead of the clock)."""
    opt = opt or torch.optim.AdamW(model.parameters(), lr=1e-3)
    ready = [b.to(device) for b in batches]
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for batch in ready:
        train_step(args, spec, model, batch, device, args.k if K is None else K, opt)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(batches) * args.batch / (time.perf_counter() - t0)


def train_step(args: Args, spec, model, batch, device, K: int, opt) -> None:
    with autocast(device):
        loss = imitation_loss(model, spec, batch, K=K, grad_steps=args.grad_steps, supervised_steps=1).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def step_flops(args: Args, spec, model, batch, device, K: int) -> int:
    """FLOPs of one training step (forward and backward; the optimiser's elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with FlopCounterMode(display=False) as counter:
        train_step(args, spec, model, batch.to(device), device, K, opt)
    return int(counter.get_total_flops())


def bf16_peak_tflops(device) -> float | None:
    """The card's bf16 matmul throughput as measured here (TFLOP/s); None off CUDA."""
    if device.type != "cuda":
        return None
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    reps, t0 = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def profile_summary(args: Args, spec, model, batches, device, K: int, top: int = 12) -> list[dict]:
    """The ops that take a training step's time (self time, summed over 3 steps), largest first."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with profile(activities=acts) as prof:
        for batch in batches[:3]:
            train_step(args, spec, model, batch.to(device), device, K, opt)
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)
    total = sum(getattr(e, key, 0.0) for e in events) or 1.0
    return [{"op": e.key, "self_ms": getattr(e, key, 0.0) / 1e3 / 3, "share": getattr(e, key, 0.0) / total,
             "calls_per_step": e.count / 3} for e in events[:top]]


def k_sweep(args: Args, view: str, built, device) -> dict:
    """The first view at each of ``args.ks``: samples/s, tokens/s, FLOPs per sample, TFLOP/s."""
    spec, model, batches, _ = built
    peak = bf16_peak_tflops(device)
    positions = int(batches[0].layout.ids.shape[1])
    run_model = torch.compile(model) if args.compile and device.type == "cuda" else model
    out = {"view": view, "bf16_peak_tflops": peak, "by_k": {}}
    for K in args.ks:
        flops = step_flops(args, spec, model, batches[0], device, K) / args.batch
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        time_steps(args, spec, run_model, batches[:2], device, K, opt)  # warm-up (and compilation)
        rates = [time_steps(args, spec, run_model, batches, device, K, opt) for _ in range(args.rounds)]
        rate = statistics.median(rates)
        tflops = flops * rate / 1e12
        out["by_k"][K] = {"samples_per_s": rate, "rounds": rates, "tokens_per_s": rate * positions,
                          "flops_per_sample": flops, "tflops": tflops,
                          "peak_fraction": tflops / peak if peak else None}
    if args.profile and args.ks:
        out["profile"] = {"K": max(args.ks), "ops": profile_summary(args, spec, model, batches, device, max(args.ks))}
    return out


def main(args: Args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    built = {v: build(args, v) for v in args.views}
    for spec, model, batches, _ in built.values():  # warm-up: first-call allocations, not the model's speed
        model.to(device)
        time_steps(args, spec, model, batches[:2], device)
    rates: dict[str, list[float]] = {v: [] for v in args.views}
    for _ in range(args.rounds):
        for v in args.views:
            spec, model, batches, _ = built[v]
            rates[v].append(time_steps(args, spec, model, batches, device))
    views = {}
    for v, (spec, model, batches, data_rate) in built.items():
        lay = batches[0].layout
        views[v] = {"samples_per_s": statistics.median(rates[v]), "rounds": rates[v],
                    "params": sum(p.numel() for p in model.parameters()), "positions": int(lay.ids.shape[1]),
                    "data_samples_per_s": data_rate, "view": ViewIO.of(spec, model.cfg).describe()}
    first = args.views[0]
    result = {"args": dataclasses.asdict(args), "device": str(device), "card": card(device), "views": views,
              "ratio": {v: views[first]["samples_per_s"] / views[v]["samples_per_s"] for v in args.views[1:]},
              "autocast": "bf16" if device.type == "cuda" else None,
              "compile": bool(args.compile and device.type == "cuda"), "provenance": provenance()}
    if args.ks:
        result["k_sweep"] = k_sweep(args, first, built[first], device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"| view | positions | params | samples/s | x {first} |\n|---|---|---|---|---|")
    for v, r in views.items():
        print(f"| {v} | {r['positions']} | {r['params']:,} | {r['samples_per_s']:.1f} | "
              f"{r['samples_per_s'] / views[first]['samples_per_s']:.2f} |")
    if args.ks:
        sweep = result["k_sweep"]
        print(f"\n{first} view on {result['card']}: | K | samples/s | tokens/s | GFLOP/sample | TFLOP/s | of bf16 peak |")
        for K, r in sweep["by_k"].items():
            share = f"{r['peak_fraction']:.1%}" if r["peak_fraction"] is not None else "-"
            print(f"| {K} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['flops_per_sample'] / 1e9:.3f} | "
                  f"{r['tflops']:.4f} | {share} |")
        for op in sweep.get("profile", {}).get("ops", [])[:6]:
            print(f"  {op['share']:6.1%}  {op['op']}")
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main(parse_config(Args, sys.argv[1:]))
