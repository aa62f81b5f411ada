import random

import numpy as np
import pytest
import torch
from torch import nn

from r3m_agent import (
    DenseConfig, DenseTransformer, R3M, R3MConfig, load_checkpoint, model_from_checkpoint, save_checkpoint,
)
from r3m_agent.checkpoint import unwrap

R3M_CFG = R3MConfig(d_model=32, n_heads=2, mem_slots=4, semantic_slots=16, K=3)
DENSE_CFG = DenseConfig(d_model=32, n_layers=2, n_heads=2)




def ids():
    return torch.randint(9, 100, (2, 7), generator=torch.Generator().manual_seed(0))


def trained(cls, cfg, seed=0):
    torch.manual_seed(seed)
    model = cls(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(ids()).logits.pow(2).mean().backward()
    opt.step()
    return model, opt


COMPILE_IMPORT = pytest.mark.filterwarnings("ignore:.*jit.script_method.*:DeprecationWarning")  # torch internals


@COMPILE_IMPORT
@pytest.mark.parametrize("cls, cfg", [(R3M, R3M_CFG), (DenseTransformer, DENSE_CFG)])
def test_round_trip_identical_logits(tmp_path, cls, cfg):
    model, opt = trained(cls, cfg)
    path = save_checkpoint(tmp_path / "run" / "ckpt.pt", torch.compile(model), opt, step=7, extra={"note": "x"})
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary file left behind
    other, other_opt = trained(cls, cfg, seed=1)
    payload = load_checkpoint(path, other, other_opt)
    assert payload["step"] == 7 and payload["extra"] == {"note": "x"}
    assert not any(k.startswith(("_orig_mod", "module")) for k in payload["model"])
    with torch.no_grad():
        torch.testing.assert_close(other(ids()).logits, model(ids()).logits, atol=0, rtol=0)
        torch.testing.assert_close(model_from_checkpoint(path)(ids()).logits, model(ids()).logits, atol=0, rtol=0)
    for a, b in zip(opt.state_dict()["state"].values(), other_opt.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


@COMPILE_IMPORT
def test_unwrap_nested_wrappers():
    model = DenseTransformer(DENSE_CFG)
    assert unwrap(torch.compile(nn.DataParallel(model))) is model
    assert unwrap(nn.DataParallel(torch.compile(model))) is model


def test_config_mismatch_names_fields(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", R3M(R3M_CFG))
    other = R3M(R3MConfig(d_model=64, n_heads=2, mem_slots=4, semantic_slots=16, K=5))
    with pytest.raises(ValueError) as err:
        load_checkpoint(path, other)
    message = str(err.value)
    assert "d_model: checkpoint 32, model 64" in message and "K: checkpoint 3, model 5" in message
    assert "mem_slots" not in message
    with pytest.raises(ValueError, match="holds a R3M, not a DenseTransformer"):
        load_checkpoint(path, DenseTransformer(DENSE_CFG))


def test_rng_states_restored(tmp_path):
    path = save_checkpoint(tmp_path / "r.pt", DenseTransformer(DENSE_CFG))

    def draw():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    first = draw()
    load_checkpoint(path, restore_rng=True)
    assert draw() == first


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    model = DenseTransformer(DENSE_CFG)
    path = save_checkpoint(tmp_path / "a.pt", model, step=1)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


class OrderedThing:  # an object a weights-only load refuses
    pass


def test_a_damaged_file_gets_one_readable_reason(tmp_path):
    """Random bytes, a text file, a truncated archive, pickled objects: each message names the file
    and says why in a whole clause (never cut mid-word), with no torch warning before it."""
    import os
    import warnings

    from r3m_agent.checkpoint import CheckpointError, read_checkpoint

    torch.save({"a": OrderedThing()}, tmp_path / "objects.pt")
    torch.save({"a": torch.zeros(3)}, tmp_path / "whole.pt")
    whole = (tmp_path / "whole.pt").read_bytes()
    files = {"random.pt": os.urandom(2048), "text.pt": b"not a checkpoint at all", "cut.pt": whole[: len(whole) // 2]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    expected = {"random.pt": "not the zip archive torch.save writes", "text.pt": "not the zip archive",
                "cut.pt": "zip archive", "objects.pt": "objects other than tensors"}
    for name, phrase in expected.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(CheckpointError) as err:
                read_checkpoint(tmp_path / name)
        message = str(err.value)
        assert phrase in message and name in message and message.endswith(")")
        assert len(message) < 300
