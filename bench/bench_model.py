"""Forward+backward throughput and peak memory of every R3M preset at K in {1, 4, 8, 16}.

One training-like step per iteration: a causal pass with deep supervision (cross-entropy at
every step's readout, all steps keeping their graph) and a backward pass. The parameter-matched
dense baseline of each preset runs beside it. Cost should grow linearly in K (each step runs the
same core); the table gives time per iteration relative to K=1 and an affine fit
t(K) = fixed + K * per_step with its R^2 and largest relative deviation.

    python bench/bench_model.py --quick              # CPU smoke run: cpu-tiny and cpu-small
    python bench/bench_model.py --device cuda        # every preset, bf16 autocast
    python bench/bench_model.py --device cuda --compile

Writes bench/results/model_<cpu|cuda>[_compile].json and prints a markdown table. Peak memory is the CUDA
allocator's peak (weights included) or, on the CPU, the process's peak RSS during the point
(torch's own ~0.3 GB and the heap cached from earlier points included, so it is an upper bound).
CPU numbers depend on the machine's load (shared cores): the load average is recorded, and
``--threads 1`` avoids OpenMP threads spinning against other processes.
"""

from __future__ import annotations

import json
import os
import platform
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
import torch.nn.functional as F  # noqa: E402

from r3m_agent import PRESETS, DenseTransformer, R3M, count_parameters, dense_config_like  # noqa: E402
from r3m.learn.cli import parse_config  # noqa: E402


@dataclass(frozen=True)
class Args:
    """Forward+backward time per step, tokens per second and peak memory of each R3M preset at several
    K, beside its parameter-matched dense baseline; writes bench/results/model_<cpu|cuda>[_compile].json."""

    device: str = "auto"
    """cpu, cuda or auto (cuda when available)"""
    quick: bool = False
    """smoke run: small presets, small batch, few iterations"""
    compile: bool = False
    """torch.compile the models (CUDA only)"""
    presets: tuple[str, ...] = ()
    """presets to run (empty: all; --quick on CPU: cpu-tiny cpu-small)"""
    ks: tuple[int, ...] = (1, 4, 8, 16)
    """refinement steps to time"""
    batch: int = 0
    """sequences per batch (0: 8 on CPU, 4 with --quick, 64 on CUDA)"""
    seq: int = 0
    """tokens per sequence (0: 64 on CPU, 32 with --quick, 256 on CUDA)"""
    iters: int = 0
    """timed iterations per point (0: 3 with --quick, 5 on CPU, 20 on CUDA)"""
    threads: int = 0
    """CPU threads (0: torch's default); 1 is steadier on a loaded machine"""
    out: str = ""
    """folder for the results JSON (empty: bench/results, or bench/results/quick with --quick, which the
    README's results never read)"""


def parse_args(argv: list[str] | None = None) -> Args:
    return parse_config(Args, argv)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


class PeakMemory:
    """Peak memory of one measurement: the CUDA allocator's peak, or on Linux the process's peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # writing 5 resets VmHWM (Linux >= 4.0), so each point gets its own peak
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":  # allocator peak, weights included
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:  # the process's peak RSS since the reset (torch itself and cached heap included)
            self.mb = _status_mb("VmHWM:")


def _status_mb(key: str) -> float:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return float("nan")
    found = [line for line in lines if line.startswith(key)]
    return int(found[0].split()[1]) / 1024 if found else float("nan")


def time_point(model: torch.nn.Module, ids: torch.Tensor, K: int | None, args: Args, iters: int) -> dict:
    device = ids.device
    kw = {} if K is None else {"K": K}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> float:
        with autocast:
            out = model(ids[:, :-1], **kw)
            loss = sum(F.cross_entropy(s.flatten(0, 1).float(), ids[:, 1:].flatten()) for s in out.step_logits)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with PeakMemory(device) as mem:
        for _ in range(2 if device.type == "cuda" else 1):  # warm-up (and compilation)
            step()
        sync()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            loss = step()
            sync()
            times.append(time.perf_counter() - start)
    ms = statistics.median(times) * 1e3
    return {"ms_per_iter": ms, "tokens_per_s": ids.shape[0] * (ids.shape[1] - 1) / (ms / 1e3),
            "peak_mem_mb": mem.mb, "loss_finite": bool(torch.isfinite(loss))}


@torch.no_grad()
def device_agreement(device: torch.device) -> dict:
    """Largest |CPU - device| logit difference (fp32) for one model on the same padded inputs.

    Covers both modes, a second turn reading the first turn's carry, halting with early exit, and
    whether greedy generation picks the same tokens: the device must compute the same function.
    """
    torch.manual_seed(0)
    cpu = R3M(PRESETS["cpu-tiny"]).eval()
    dev = R3M(PRESETS["cpu-tiny"]).to(device).eval()
    dev.load_state_dict(cpu.state_dict())
    ids = torch.randint(9, 100, (4, 24))
    mask = torch.arange(24)[None, :] >= torch.tensor([[0], [5], [11], [2]])  # left padding
    calls = {"causal": {}, "fill": {"mode": "fill", "answer_len": 9}, "halt": {"halt": True, "early_exit": True}}
    out, carries = {}, {}
    for name, kw in calls.items():
        a, b = cpu(ids, mask, K=8, **kw), dev(ids.to(device), mask.to(device), K=8, **kw)
        out[name] = (a.logits - b.logits.float().cpu()).abs().max().item()
        carries[name] = (a.carry, b.carry)
    a = cpu(ids, mask, K=8, carry=carries["causal"][0])
    b = dev(ids.to(device), mask.to(device), K=8, carry=carries["causal"][1])
    out["second_turn"] = (a.logits - b.logits.cpu()).abs().max().item()
    ga, _ = cpu.generate(ids, mask, max_new_tokens=12, temperature=0.0, K=4)
    gb, _ = dev.generate(ids.to(device), mask.to(device), max_new_tokens=12, temperature=0.0, K=4)
    out["greedy_tokens_equal"] = bool(torch.equal(ga, gb.cpu()))
    return out


def linearity(rows: list[dict]) -> dict:
    """Least-squares t(K) = fixed + K * per_step over the timed Ks."""
    ks = [r["K"] for r in rows]
    ts = [r["ms_per_iter"] for r in rows]
    if len(ks) < 2:
        return {}
    mk, mt = statistics.fmean(ks), statistics.fmean(ts)
    per_step = sum((k - mk) * (t - mt) for k, t in zip(ks, ts)) / sum((k - mk) ** 2 for k in ks)
    fixed = mt - per_step * mk
    fit = [fixed + per_step * k for k in ks]
    ss_res = sum((t - f) ** 2 for t, f in zip(ts, fit))
    ss_tot = sum((t - mt) ** 2 for t in ts) or 1e-12
    return {"fixed_ms": fixed, "per_step_ms": per_step, "r2": 1 - ss_res / ss_tot,
            "max_rel_dev": max(abs(t - f) / t for t, f in zip(ts, fit))}


def main(args: Args) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    presets = args.presets or (("cpu-tiny", "cpu-small") if args.quick and not cuda else tuple(PRESETS))
    batch = args.batch or (64 if cuda else 4 if args.quick else 8)
    seq = args.seq or (256 if cuda else 32 if args.quick else 64)
    iters = args.iters or (20 if cuda else 3 if args.quick else 5)
    agreement = device_agreement(device) if device.type != "cpu" else None
    if agreement:
        print(f"CPU vs {device.type} agreement: {agreement}", flush=True)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ids = torch.randint(9, 100, (batch, seq + 1), device=device)
    rows, fits = [], {}
    for name in presets:
        for model_name, cfg in (("r3m", PRESETS[name]), ("dense-1x", dense_config_like(PRESETS[name]))):
            model = (R3M if model_name == "r3m" else DenseTransformer)(cfg).to(device)
            run = torch.compile(model) if args.compile and cuda else model
            ks = args.ks if model_name == "r3m" else (None,)
            point_rows = []
            for K in ks:
                row = {"preset": name, "model": model_name, "params": count_parameters(cfg),
                       "K": K, **time_point(run, ids, K, args, iters)}
                point_rows.append(row)
                print(f"{name:11s} {model_name:8s} K={K!s:4s} {row['ms_per_iter']:9.1f} ms "
                      f"{row['tokens_per_s']:10.0f} tok/s {row['peak_mem_mb']:8.0f} MB", flush=True)
            if model_name == "r3m":
                base = point_rows[0]["ms_per_iter"] if point_rows[0]["K"] == 1 else None
                for r in point_rows:
                    r["ratio_to_k1"] = r["ms_per_iter"] / base if base else None
                fits[name] = linearity(point_rows)
            rows += point_rows
            del model, run
    result = {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "quick": args.quick, "compile": bool(args.compile and cuda), "autocast": "bf16" if cuda else None,
        "batch": batch, "seq": seq, "iters": iters, "results": rows, "linearity": fits,
        "cpu_agreement": agreement,
    }
    folder = Path(args.out or ROOT / "bench/results" / ("quick" if args.quick else ""))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model_{device.type}{'_compile' if result['compile'] else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwrote {path}")
    return result


def table(result: dict) -> str:
    lines = [f"Device: {result['device']}; torch {result['torch']}; batch {result['batch']} x {result['seq']} "
             f"tokens; autocast {result['autocast']}; compile {result['compile']}; load avg {result['load_avg']}",
             "", "| preset | model | params | K | ms/iter | tokens/s | peak MB | t(K)/t(1) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        ratio = f"{r['ratio_to_k1']:.2f}" if r.get("ratio_to_k1") else "-"
        lines.append(f"| {r['preset']} | {r['model']} | {r['params']:,} | {r['K'] or '-'} | {r['ms_per_iter']:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['peak_mem_mb']:.0f} | {ratio} |")
    lines += ["", "| preset | fixed ms | ms per step | R^2 of t(K) = fixed + K per_step | max deviation |",
              "|---|---|---|---|---|"]
    for name, fit in result["linearity"].items():
        if fit:
            lines.append(f"| {name} | {fit['fixed_ms']:.1f} | {fit['per_step_ms']:.2f} | {fit['r2']:.4f} | "
                         f"{100 * fit['max_rel_dev']:.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(parse_args())
