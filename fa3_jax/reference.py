"""Pure-JAX attention with every feature: the test oracle and the CPU path.

Exact (no tiling): materializes the ``[batch, heads, seq_q, seq_k]`` logits and
accumulates in float32 at HIGHEST matmul precision (float64 when given float64
inputs with x64 enabled). Conventions are those of :func:`fa3_jax.attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fa3_jax.alibi import alibi_bias
from fa3_jax.masks import BlockMask, MaskSpec, dense_mask

__all__ = ["attention_reference"]


def attention_reference(
    q_BSHD,
    k_BSHD,
    v_BSHD,
    *,
    spec: MaskSpec,
    softmax_scale: float,
    softcap: float | None = None,
    alibi_slopes=None,
    segment_ids=None,
    block_mask: BlockMask | None = None,
    descale_BG=None,
):
    """Reference attention.

    Args:
      q_BSHD: ``[batch, seq_q, heads_q, head_dim]``.
      k_BSHD: ``[batch, seq_k, heads_kv, head_dim]``, ``heads_q % heads_kv == 0``.
      v_BSHD: ``[batch, seq_k, heads_kv, head_dim_v]``.
      spec: positional masks (seq lengths, causal, window).
      softmax_scale: multiplies ``q . k``.
      softcap: if set, logits become ``softcap * tanh(logits / softcap)``.
      alibi_slopes: float32 ``[heads_q]`` or ``[batch, heads_q]``.
      segment_ids: ``[batch, seq]`` or ``(q_ids [batch, seq_q], kv_ids [batch, seq_k])``.
      block_mask: :class:`BlockMask`.
      descale_BG: float8_e4m3fn inputs only: ``(descale_q, descale_k, descale_v)``,
        float32 ``[batch, heads_kv]`` each: q, k and v are dequantized by them (a query
        head uses its kv head's q scale); None: all 1.

    Returns:
      ``(out [batch, seq_q, heads_q, head_dim_v] in q's dtype (bfloat16 for
      float8_e4m3fn), lse [batch, heads_q, seq_q] float32)``; a row with no visible
      key has output 0 and lse ``-inf``.
    """
    batch, seq_q, heads_q, head_dim = q_BSHD.shape
    heads_kv = k_BSHD.shape[2]
    group = heads_q // heads_kv
    fp8 = q_BSHD.dtype == jnp.float8_e4m3fn
    acc_dtype = jnp.float32 if fp8 else jnp.promote_types(q_BSHD.dtype, jnp.float32)
    out_dtype = jnp.bfloat16 if fp8 else q_BSHD.dtype
    q = q_BSHD.astype(acc_dtype).reshape(batch, seq_q, heads_kv, group, head_dim)
    k = k_BSHD.astype(acc_dtype)
    v = v_BSHD.astype(acc_dtype)
    if descale_BG is not None:
        descale_q, descale_k, descale_v = (jnp.asarray(x, acc_dtype) for x in descale_BG)
        q = q * descale_q[:, None, :, None, None]
        k = k * descale_k[:, None, :, None]
        v = v * descale_v[:, None, :, None]
    hi = jax.lax.Precision.HIGHEST
    # logits [batch, heads_kv, group, seq_q, seq_k] -> [batch, heads_q, seq_q, seq_k]
    s = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, precision=hi)
    s = s.reshape(batch, heads_q, seq_q, spec.seq_k) * softmax_scale
    if softcap is not None:
        s = softcap * jnp.tanh(s / softcap)
    if alibi_slopes is not None:
        s = s + alibi_bias(alibi_slopes, spec).astype(acc_dtype)
    mask = dense_mask(spec, segment_ids=segment_ids, block_mask=block_mask)
    s = jnp.where(mask, s, -jnp.inf)
    # A shift constant (stop_gradient) keeps exp finite; rows with no visible
    # key get shift 0, p = 0, output 0 and lse -inf.
    row_max = jax.lax.stop_gradient(s.max(-1, keepdims=True))
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.exp(s - row_max)
    denom = p.sum(-1, keepdims=True)
    safe_denom = jnp.where(denom > 0, denom, 1.0)
    p = p / safe_denom
    p = p.reshape(batch, heads_kv, group, seq_q, spec.seq_k)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", p, v, precision=hi)
    out = out.reshape(batch, seq_q, heads_q, v.shape[-1]).astype(out_dtype)
    lse = jnp.where(denom > 0, jnp.log(safe_denom) + row_max, -jnp.inf)[..., 0]
    return out, lse.astype(jnp.promote_types(jnp.float32, acc_dtype))
