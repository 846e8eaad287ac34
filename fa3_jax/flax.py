"""Flax adapters: an ``attention_fn`` for ``nnx.MultiHeadAttention`` and an NNX module.

Import explicitly (``from fa3_jax.flax import ...``): the core package does not
depend on Flax.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from fa3_jax.alibi import alibi_slopes as standard_alibi_slopes
from fa3_jax.api import attention

__all__ = ["make_attention_fn", "Attention"]


def make_attention_fn(
    *,
    causal: bool = False,
    window_size: tuple[int | None, int | None] = (None, None),
    alibi_slopes=None,
    softcap: float | None = None,
    implementation: str | None = None,
):
    """Returns an ``attention_fn`` for ``flax.nnx.MultiHeadAttention``.

    The returned function takes Flax's arguments (``query [batch, seq_q, heads,
    head_dim]``, ``key``, ``value``, ``is_causal``, ...) and runs
    :func:`fa3_jax.attention` with the features given here. Dense ``mask`` and
    ``bias`` arrays and dropout are not supported: pass ``causal``/``window_size``
    here (segment masks through :class:`Attention`).
    """

    def attention_fn(
        query,
        key,
        value,
        bias=None,
        mask=None,
        *,
        dropout_rate=0.0,
        deterministic=True,
        dtype=None,
        is_causal=False,
        module=None,
        **unused: Any,
    ):
        if bias is not None:
            raise ValueError("fa3_jax attention_fn takes no dense bias; use alibi_slopes/softcap")
        if mask is not None:
            raise ValueError(
                "fa3_jax attention_fn takes no dense mask: use make_attention_fn(causal=..., "
                "window_size=...) or fa3_jax.flax.Attention(segment_ids=...)"
            )
        if dropout_rate > 0.0 and not deterministic:
            raise NotImplementedError("fa3_jax attention has no attention dropout")
        if dtype is not None:
            query, key, value = (x.astype(dtype) for x in (query, key, value))
        return attention(
            query,
            key,
            value,
            causal=causal or is_causal,
            window_size=window_size,
            alibi_slopes=alibi_slopes,
            softcap=softcap,
            implementation=implementation,
        )

    return attention_fn


class Attention(nnx.Module):
    """Multi-head (GQA/MQA) self-attention through :func:`fa3_jax.attention`.

    ``__call__(x [batch, seq, features], segment_ids=None [batch, seq] int32)``
    returns ``[batch, seq, features]``. ``alibi=True`` uses the standard slopes
    for ``num_heads``.
    """

    def __init__(
        self,
        features: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        causal: bool = False,
        window_size: tuple[int | None, int | None] = (None, None),
        alibi: bool = False,
        softcap: float | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        num_kv_heads = num_kv_heads or num_heads
        head_dim = head_dim or features // num_heads
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
            )
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.causal, self.window_size, self.softcap = causal, window_size, softcap
        self.implementation, self.dtype = implementation, dtype
        self.alibi_slopes = standard_alibi_slopes(num_heads) if alibi else None
        dense = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, use_bias=False)
        self.q_proj = nnx.Linear(features, num_heads * head_dim, **dense)
        self.k_proj = nnx.Linear(features, num_kv_heads * head_dim, **dense)
        self.v_proj = nnx.Linear(features, num_kv_heads * head_dim, **dense)
        self.out_proj = nnx.Linear(num_heads * head_dim, features, **dense)

    def __call__(self, x_BSF: jax.Array, segment_ids=None) -> jax.Array:
        batch, seq, _ = x_BSF.shape
        q_BSHD = self.q_proj(x_BSF).reshape(batch, seq, self.num_heads, self.head_dim)
        k_BSHD = self.k_proj(x_BSF).reshape(batch, seq, self.num_kv_heads, self.head_dim)
        v_BSHD = self.v_proj(x_BSF).reshape(batch, seq, self.num_kv_heads, self.head_dim)
        out_BSHD = attention(
            q_BSHD,
            k_BSHD,
            v_BSHD,
            causal=self.causal,
            window_size=self.window_size,
            alibi_slopes=self.alibi_slopes,
            softcap=self.softcap,
            segment_ids=segment_ids,
            implementation=self.implementation,
        )
        return self.out_proj(out_BSHD.reshape(batch, seq, self.num_heads * self.head_dim))
