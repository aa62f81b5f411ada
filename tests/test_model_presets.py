import pytest
import torch

import r3m_agent.presets as presets
from r3m_agent import PRESETS, DenseConfig, R3M, R3MConfig, build_model, count_parameters, dense_config_like


@pytest.mark.parametrize("cfg", [PRESETS["cpu-tiny"], DenseConfig(d_model=32, n_layers=3, n_heads=2),
                                 R3MConfig(memory=False, semantic_slots=0, d_model=32, n_heads=2, h_init="learned")])
def test_count_matches_built_model(cfg):
    assert count_parameters(cfg) == sum(p.numel() for p in build_model(cfg).parameters())


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("ratio", [1.0, 2.0])
def test_dense_baseline_matches_parameter_count(name, ratio):
    cfg = PRESETS[name]
    dense = dense_config_like(cfg, ratio)
    target = ratio * count_parameters(cfg)
    assert abs(count_parameters(dense) - target) / target < 0.005
    assert dense.d_model == cfg.d_model and dense.tool_names == cfg.tool_names and 2.0 < dense.mlp_ratio < 6.0


def test_gpu_preset_is_trm_sized_and_docstring_table_is_current():
    assert 5e6 <= count_parameters(PRESETS["gpu-sudoku"]) <= 7e6
    assert presets.parameter_table() in presets.__doc__


def test_tiny_preset_runs():
    torch.manual_seed(0)
    out = R3M(PRESETS["cpu-tiny"])(torch.randint(9, 100, (2, 5)), K=2)
    assert out.logits.shape == (2, 5, PRESETS["cpu-tiny"].vocab_size)
