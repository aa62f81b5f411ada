"""Named model sizes, parameter counts, and dense baselines matched to an R3M config.

``python -c "from r3m_agent.presets import parameter_table as t; print(t())"`` prints this table
(a test checks that it matches the code):

| preset | R3M params | dense (1x) | dense (1x) params | dense (2x) | dense (2x) params |
|---|---|---|---|---|---|
| cpu-micro | 43,285 | d32 L3 mlp3.88 | 43,298 | d32 L6 mlp4.44 | 86,498 |
| cpu-tiny | 150,037 | d64 L3 mlp3.52 | 149,954 | d64 L6 mlp3.80 | 299,714 |
| cpu-small | 800,069 | d128 L4 mlp3.88 | 800,130 | d128 L8 mlp3.99 | 1,600,898 |
| gpu-sudoku | 6,784,645 | d448 L3 mlp3.55 | 6,785,858 | d448 L6 mlp3.59 | 13,570,370 |

Counts are without tools or task views; the scripts add, per registered tool, a tool-head class, a
choice embedding and its readout scale and shift (4 d_model + 1 parameters), and a task view's
symbols and coordinates (d_model parameters each).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from r3m_agent.dense import DenseConfig, DenseTransformer
from r3m_agent.r3m import R3M, R3MConfig

PRESETS: dict[str, R3MConfig] = {
    # the default run's model: prefix parity under its bits view needs no more, and the dense
    # baselines matched to it (a 16-layer compute-matched one too) fit the run in ten CPU minutes
    "cpu-micro": R3MConfig(d_model=32, n_heads=2, prelude_layers=0, core_layers=2, mem_slots=8,
                           semantic_slots=64),
    # a few seconds per hundred steps on 2 CPU cores: tests, smoke runs, level-1 tasks
    "cpu-tiny": R3MConfig(d_model=64, n_heads=2, prelude_layers=0, core_layers=2, mem_slots=8,
                          semantic_slots=64),
    # the default CPU research model
    "cpu-small": R3MConfig(d_model=128, n_heads=4, prelude_layers=1, core_layers=2, mem_slots=16,
                           semantic_slots=256),
    # TRM-sized (5-7M parameters: TRM's Sudoku model has 2 layers and ~5M parameters)
    "gpu-sudoku": R3MConfig(d_model=448, n_heads=8, prelude_layers=0, core_layers=2, mem_slots=16,
                            semantic_slots=512, K=16),
}


def build_model(cfg: R3MConfig | DenseConfig) -> nn.Module:
    if isinstance(cfg, R3MConfig):
        return R3M(cfg)
    if isinstance(cfg, DenseConfig):
        return DenseTransformer(cfg)
    raise TypeError(f"not a model config: {type(cfg).__name__}")


def count_parameters(cfg: R3MConfig | DenseConfig) -> int:
    """Parameter count of the model ``cfg`` builds (built on the meta device: no memory, fast)."""
    with torch.device("meta"):
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters())


def dense_config_like(cfg: R3MConfig, param_ratio: float = 1.0) -> DenseConfig:
    """A DenseConfig of ``cfg``'s width whose parameter count is ``param_ratio`` times R3M's.

    Depth is chosen so the MLP ratio stays closest to 4; the MLP width then matches the count
    to within one hidden unit per layer (count is linear in the hidden width).
    """
    if param_ratio <= 0:
        raise ValueError(f"param_ratio must be > 0, got {param_ratio}")
    target = param_ratio * count_parameters(cfg)
    base = DenseConfig(vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=1,
                       mlp_ratio=1.0, rope_base=cfg.rope_base, tool_names=cfg.tool_names, symbols=cfg.symbols,
                       coords=cfg.coords)
    c11 = count_parameters(base)
    per_layer = count_parameters(dataclasses.replace(base, n_layers=2)) - c11
    per_unit = count_parameters(dataclasses.replace(base, mlp_ratio=2.0)) - c11  # per d_model hidden units
    fixed = c11 - per_layer
    best = None
    for n_layers in range(1, 257):
        layer_fixed = per_layer - per_unit  # a layer without its MLP hidden units
        ratio = (target - fixed - n_layers * layer_fixed) / (n_layers * per_unit)
        hidden = round(ratio * cfg.d_model)
        if hidden < 1:
            break
        score = abs(ratio - 4.0)
        if best is None or score < best[0]:
            best = (score, n_layers, hidden / cfg.d_model)
    if best is None:
        raise ValueError(f"no dense config of width {cfg.d_model} reaches {target:.0f} parameters")
    return dataclasses.replace(base, n_layers=best[1], mlp_ratio=best[2])


def dense_compute_like(cfg: R3MConfig, K: int) -> DenseConfig:
    """A DenseConfig of ``cfg``'s width and MLP ratio that applies as many blocks per sample as R3M
    at K steps: ``prelude_layers + K * core_layers`` distinct layers (K times the core's parameters)."""
    return DenseConfig(vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_heads=cfg.n_heads,
                       n_layers=cfg.prelude_layers + K * cfg.core_layers, mlp_ratio=cfg.mlp_ratio,
                       rope_base=cfg.rope_base, tool_names=cfg.tool_names, symbols=cfg.symbols, coords=cfg.coords)


def dense_preset(name: str, param_ratio: float = 1.0) -> DenseConfig:
    return dense_config_like(PRESETS[name], param_ratio)


def parameter_table() -> str:
    """Markdown table of every preset's count and its 1x and 2x dense baselines."""
    lines = ["| preset | R3M params | dense (1x) | dense (1x) params | dense (2x) | dense (2x) params |",
             "|---|---|---|---|---|---|"]
    for name, cfg in PRESETS.items():
        cells = [name, f"{count_parameters(cfg):,}"]
        for ratio in (1.0, 2.0):
            d = dense_config_like(cfg, ratio)
            cells += [f"d{d.d_model} L{d.n_layers} mlp{d.mlp_ratio:.2f}", f"{count_parameters(d):,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
