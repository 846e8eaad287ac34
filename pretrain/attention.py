"""Causal ALiBi attention over packed documents, with a choice of implementation.

`auto` and `reference` go through `fa3_jax.attention` (the Mosaic kernel on Hopper for `auto`, the
pure-JAX reference elsewhere). `cudnn` and `xla` go through `jax.nn.dot_product_attention` with a
materialised ALiBi bias and a document mask, as baselines for the benchmark.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import fa3_jax

__all__ = ["causal_alibi_attention", "alibi_bias_HSS"]


def alibi_bias_HSS(slopes_H: jax.Array, seq_len: int) -> jax.Array:
    """Dense ALiBi bias `-slope_h · |i - j|`, float32 [heads, seq, seq]."""
    pos_S = jnp.arange(seq_len, dtype=jnp.float32)
    distance_SS = jnp.abs(pos_S[:, None] - pos_S[None, :])
    return -slopes_H.astype(jnp.float32)[:, None, None] * distance_SS


def causal_alibi_attention(
    q_BSHD: jax.Array,
    k_BSHD: jax.Array,
    v_BSHD: jax.Array,
    *,
    segment_ids_BS: jax.Array | None,
    slopes_H: jax.Array,
    softmax_scale: float,
    implementation: str,
) -> jax.Array:
    """Causal attention with ALiBi where query i sees key j iff j <= i and both share a segment id.

    Args:
      q_BSHD, k_BSHD, v_BSHD: [batch, seq, heads, head_dim], one dtype (bf16 or fp32).
      segment_ids_BS: int32 [batch, seq], the packed document of every token; None = one
        document per row.
      slopes_H: float32 [heads], ALiBi slopes.
      softmax_scale: multiplies q·k before the bias.
      implementation: 'auto' | 'reference' | 'cudnn' | 'xla'.
    Returns:
      [batch, seq, heads, head_dim] in q's dtype.
    """
    if implementation in ("auto", "reference"):
        return fa3_jax.attention(
            q_BSHD,
            k_BSHD,
            v_BSHD,
            causal=True,
            softmax_scale=softmax_scale,
            alibi_slopes=slopes_H,
            segment_ids=segment_ids_BS,
            implementation=None if implementation == "auto" else "reference",
        )
    if implementation in ("cudnn", "xla"):
        seq_len = q_BSHD.shape[1]
        bias_1HSS = alibi_bias_HSS(slopes_H, seq_len)[None].astype(q_BSHD.dtype)
        same_doc_B1SS = None
        if segment_ids_BS is not None:
            same_doc_B1SS = segment_ids_BS[:, None, :, None] == segment_ids_BS[:, None, None, :]
        return jax.nn.dot_product_attention(
            q_BSHD,
            k_BSHD,
            v_BSHD,
            bias=bias_1HSS,
            mask=same_doc_B1SS,
            scale=softmax_scale,
            is_causal=True,
            implementation=implementation,
        )
    raise ValueError(
        f"implementation must be 'auto', 'reference', 'cudnn' or 'xla', got {implementation!r}"
    )
