"""Pretraining: an ALiBi/SwiGLU decoder LM on SlimPajama mixtures, trained with JAX + Flax NNX.

Entry points: `python -m pretrain` (train), `python -m pretrain.demo` (`make train`),
`python -m pretrain.plot RUN_DIR`, `python -m pretrain.generate`, `python -m pretrain.benchmark`.
"""

from pretrain.config import (
    PRESETS,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    config_from_args,
    make_config,
    parse_overrides,
)
from pretrain.model import LM
from pretrain.step import TrainState, make_eval_step, make_train_step
from pretrain.train import NonFiniteLossError, build_state, train

__all__ = [
    "PRESETS",
    "LM",
    "ModelConfig",
    "NonFiniteLossError",
    "RunConfig",
    "TrainConfig",
    "TrainState",
    "apply_overrides",
    "build_state",
    "config_from_args",
    "make_config",
    "make_eval_step",
    "make_train_step",
    "parse_overrides",
    "train",
]
