"""ALiBi (Press et al., 2022): per-head linear distance penalties on the logits."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from fa3_jax.masks import MaskSpec

__all__ = ["alibi_slopes", "alibi_bias"]


def alibi_slopes(num_heads: int) -> np.ndarray:
    """The standard ALiBi slopes, float32 ``[num_heads]``.

    For a power of two ``n`` the slopes are ``2 ** (-8 (h + 1) / n)``. Otherwise
    the ``m = 2 ** floor(log2 n)`` slopes of ``m`` heads are followed by every
    other slope of ``2m`` heads, as in the ALiBi paper's reference code.
    """
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")

    def power_of_two(n):
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    m = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two(m) + power_of_two(2 * m)[0::2][: num_heads - m]
    return np.asarray(slopes, np.float32)


def alibi_bias(alibi_slopes, spec: MaskSpec):
    """ALiBi bias ``-slope * |i + seq_k - seq_q - j|``, float32 ``[B or 1, H, seq_q, seq_k]``.

    Args:
      alibi_slopes: float32 ``[heads_q]`` or ``[batch, heads_q]``.
      spec: gives seq_q, seq_k and the diagonal offset (bottom-right alignment).
    """
    slopes = jnp.asarray(alibi_slopes, jnp.float32)
    if slopes.ndim == 1:
        slopes = slopes[None]
    q_pos = jnp.arange(spec.seq_q)[:, None]
    k_pos = jnp.arange(spec.seq_k)[None, :]
    distance = jnp.abs(q_pos + spec.offset - k_pos).astype(jnp.float32)
    return -slopes[:, :, None, None] * distance
