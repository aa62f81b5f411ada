"""R3M: recurrent refinement with episodic/semantic memory, halting and a tool head; and a dense baseline.

    from r3m_agent import R3M, R3MConfig, Tokenizer
    tok = Tokenizer()
    ids, mask = tok.batch_encode(["2+3="], add_bos=True)
    out = R3M(R3MConfig())(ids, mask, K=16)          # ModelOutput: logits [B, T, V], halt_probs, ...
"""

from r3m_agent.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from r3m_agent.dense import DenseConfig, DenseTransformer
from r3m_agent.halting import PonderLoss, halting_distribution, halting_kl, ponder_loss, threshold_steps
from r3m_agent.layers import GROUP_NAMES, ModelOutput
from r3m_agent.memory import Carry, reset_carry, write_budget_penalty
from r3m_agent.presets import PRESETS, build_model, count_parameters, dense_config_like, dense_preset
from r3m_agent.r3m import R3M, STAGE_GROUPS, R3MConfig
from r3m_agent.tokenizer import Tokenizer

__all__ = [
    "GROUP_NAMES", "PRESETS", "STAGE_GROUPS", "Carry", "DenseConfig", "DenseTransformer", "ModelOutput",
    "PonderLoss", "R3M", "R3MConfig", "Tokenizer", "build_model", "count_parameters", "dense_config_like",
    "dense_preset", "halting_distribution", "halting_kl", "load_checkpoint", "model_from_checkpoint",
    "ponder_loss", "reset_carry", "save_checkpoint", "threshold_steps", "write_budget_penalty",
]
