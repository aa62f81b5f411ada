"""The R3M model: a recurrent refinement core with episodic and semantic memory, halting and a tool
head; and a dense Transformer baseline with the same interface. The model only: acting and
training live in ``r3m.learn``.

    from r3m_agent import R3M, R3MConfig, Tokenizer
    tok = Tokenizer()
    ids, mask = tok.batch_encode(["2+3="], add_bos=True)
    out = R3M(R3MConfig())(ids, mask, K=16)          # ModelOutput: logits [B, T, V], halt_probs, ...

A forward pass reads in three files: ``r3m.py`` (the refinement loop, halting, readouts),
``blocks.py`` (the Transformer block, masks and positions) and ``memory.py`` (episodic and
semantic memory).
"""

from r3m_agent.blocks import GROUP_NAMES, ModelOutput
from r3m_agent.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint, unwrap
from r3m_agent.dense import DenseConfig, DenseTransformer
from r3m_agent.memory import Carry, reset_carry
from r3m_agent.presets import (
    PRESETS, build_model, count_parameters, dense_compute_like, dense_config_like, dense_preset,
)
from r3m_agent.r3m import R3M, R3MConfig, RefineState, halting_distribution, threshold_steps
from r3m_agent.tokenizer import Tokenizer

__all__ = [
    "GROUP_NAMES", "PRESETS", "Carry", "DenseConfig", "DenseTransformer", "ModelOutput", "R3M", "R3MConfig", "RefineState",
    "Tokenizer", "build_model", "count_parameters", "dense_compute_like", "dense_config_like", "dense_preset", "halting_distribution",
    "load_checkpoint", "model_from_checkpoint", "reset_carry", "save_checkpoint", "threshold_steps", "unwrap",
]
