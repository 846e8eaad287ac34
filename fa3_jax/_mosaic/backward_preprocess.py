"""Backward preprocessing: ``delta = rowsum(dO * O)``, lse in base 2, tail padding.

Memory-bound elementwise work that XLA fuses into one pass each; the kernels
then read lse/delta as f32 ``[B, H, S_pad]`` rows with 1-D TMA copies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fa3_jax._mosaic.backward_scores import prepare_lse

__all__ = ["row_delta", "pad_seq", "backward_residuals"]


def row_delta(out_BSHD: jax.Array, dout_BSHD: jax.Array) -> jax.Array:
    """f32 ``[B, H, S]``: ``sum_d dO * O`` per query row, accumulated in f32."""
    return jnp.einsum("bshd,bshd->bhs", out_BSHD.astype(jnp.float32), dout_BSHD.astype(jnp.float32))


def pad_seq(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
    """Pads ``axis`` of ``x`` up to ``size`` with ``value`` (no copy when already there)."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def backward_residuals(out_BSHD, dout_BSHD, lse_BHS, dlse_BHS, seq_q_pad: int):
    """``(lse2_BHS, delta_BHS)`` padded to ``seq_q_pad``.

    ``delta = rowsum(dO * O) - dlse``: the lse cotangent enters ``dS = P (dP - delta)``
    because ``d lse / d s = P``. Padded rows get ``lse2 = +inf`` (zero
    probabilities) and ``delta = 0``.
    """
    lse2 = pad_seq(prepare_lse(lse_BHS), 2, seq_q_pad, jnp.inf)
    delta = row_delta(out_BSHD, dout_BSHD)
    if dlse_BHS is not None:
        delta = delta - dlse_BHS.astype(jnp.float32)
    return lse2, pad_seq(delta, 2, seq_q_pad)
