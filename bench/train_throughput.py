"""Training throughput of a family under each of its views: samples per second of the stage-1
training step (forward at the training K, the last ``grad_steps`` steps with gradients, backward,
optimiser step), at equal model size.

    python bench/train_throughput.py                 # Sudoku: the cell view against the character view
    python bench/train_throughput.py --family arithmetic --views places chars

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
from r3m.learn.run import resolve_device  # noqa: E402
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
    out: str = "bench/results/train_throughput.json"
    """where the results JSON goes"""


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


def time_steps(args: Args, spec, model, batches, device) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for batch in batches:
        loss = imitation_loss(model, spec, batch.to(device), K=args.k, grad_steps=args.grad_steps,
                              supervised_steps=1).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(batches) * args.batch / (time.perf_counter() - t0)


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
    result = {"args": dataclasses.asdict(args), "device": str(device), "views": views,
              "ratio": {v: views[first]["samples_per_s"] / views[v]["samples_per_s"] for v in args.views[1:]},
              "provenance": provenance()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"| view | positions | params | samples/s | x {first} |\n|---|---|---|---|---|")
    for v, r in views.items():
        print(f"| {v} | {r['positions']} | {r['params']:,} | {r['samples_per_s']:.1f} | "
              f"{r['samples_per_s'] / views[first]['samples_per_s']:.2f} |")
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main(parse_config(Args, sys.argv[1:]))
