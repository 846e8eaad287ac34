"""Pallas Mosaic GPU (Hopper) kernels behind ``attention(implementation="mosaic")``.

``forward_unsupported_reason`` says why the forward kernel cannot serve some
inputs (None when it can); ``mha_forward`` runs it, with ``default_forward_config`` when
given no config. ``backward_unsupported_reason``
and ``mha_backward`` are the same pair for the dQ/dK/dV kernels.
``sharded_forward`` and ``sharded_backward`` take the same arguments and split
the work over the batch and head shardings of their inputs under ``jit``.
"""

from fa3_jax._mosaic.api_forward import (
    default_forward_config,
    forward_unsupported_reason,
    mha_forward,
)
from fa3_jax._mosaic.backward import backward_unsupported_reason, mha_backward
from fa3_jax._mosaic.partition import sharded_backward, sharded_forward

__all__ = [
    "backward_unsupported_reason",
    "default_forward_config",
    "forward_unsupported_reason",
    "mha_backward",
    "mha_forward",
    "sharded_backward",
    "sharded_forward",
]
