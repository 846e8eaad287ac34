"""fa3-jax: FlashAttention-3 for JAX on Hopper GPUs (Pallas Mosaic GPU kernels).

``attention`` is the entry point; ``attention_reference`` the pure-JAX oracle;
masks are described by ``MaskSpec``/``BlockMask`` and turned into per-tile
metadata by ``tile_metadata``; ``quantize_fp8`` makes the FP8 forward's inputs.
"""

from fa3_jax.alibi import alibi_bias, alibi_slopes
from fa3_jax.api import IMPLEMENTATIONS, RESIDUAL_NAMES, attention
from fa3_jax.fp8 import quantize_fp8
from fa3_jax.masks import BlockMask, MaskSpec, TileMetadata, dense_mask, tile_metadata
from fa3_jax.reference import attention_reference
from fa3_jax.remat import remat_policy

__all__ = [
    "attention",
    "attention_reference",
    "alibi_slopes",
    "alibi_bias",
    "BlockMask",
    "MaskSpec",
    "TileMetadata",
    "dense_mask",
    "tile_metadata",
    "IMPLEMENTATIONS",
    "RESIDUAL_NAMES",
    "remat_policy",
    "quantize_fp8",
]
