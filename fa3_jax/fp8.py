"""FP8 (e4m3) quantization for :func:`fa3_jax.attention`'s FP8 forward.

FlashAttention-3's FP8 path takes ``float8_e4m3fn`` q, k, v and one dequantization scale
per (batch, kv head) each; :func:`quantize_fp8` makes both from a float array.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["E4M3_MAX", "quantize_fp8"]

#: The largest finite ``float8_e4m3fn`` value.
E4M3_MAX = 448.0


def quantize_fp8(x_BSHD, *, heads_kv: int | None = None):
    """Scales ``x`` per (batch, kv head) so its largest magnitude is e4m3's largest value.

    Args:
      x_BSHD: ``[batch, seq, heads, head_dim]`` floating point (q, k or v).
      heads_kv: the kv head count the scales are per: for q, k's head count (the query
        heads of one kv head's group share a scale, as :func:`fa3_jax.attention`'s
        ``descale_q`` does); None: ``x``'s own heads (k and v).

    Returns:
      ``(x8, descale)``: ``x8`` float8_e4m3fn ``[batch, seq, heads, head_dim]`` and
      ``descale`` float32 ``[batch, heads_kv]``, with ``x ~= x8 * descale`` (an all-zero
      group gets descale 1). Pass ``descale`` as ``descale_q``/``descale_k``/``descale_v``.
    """
    x = jnp.asarray(x_BSHD)
    if x.ndim != 4:
        raise ValueError(f"x_BSHD must have rank 4 [batch, seq, heads, head_dim], got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x_BSHD must be floating point, got {x.dtype}")
    batch, seq, heads, head_dim = x.shape
    heads_kv = heads if heads_kv is None else heads_kv
    if heads_kv <= 0 or heads % heads_kv:
        raise ValueError(f"heads_kv ({heads_kv}) must divide x's head count ({heads})")
    # [batch, seq, heads_kv, group, head_dim]: a kv head's group of heads shares one scale
    grouped = x.astype(jnp.float32).reshape(batch, seq, heads_kv, heads // heads_kv, head_dim)
    amax = jnp.max(jnp.abs(grouped), axis=(1, 3, 4))
    descale = jnp.where(amax > 0, amax / E4M3_MAX, 1.0)
    scaled = grouped / descale[:, None, :, None, None]
    # clipped: float rounding may land a hair above the largest value, which e4m3fn makes NaN
    x8 = jnp.clip(scaled, -E4M3_MAX, E4M3_MAX).astype(jnp.float8_e4m3fn)
    return x8.reshape(x.shape), descale
