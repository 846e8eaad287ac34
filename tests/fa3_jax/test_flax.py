"""The Flax adapters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fa3_jax
from fa3_jax.flax import Attention, make_attention_fn


def test_attention_fn_drops_into_nnx_multihead_attention():
    kwargs = dict(num_heads=4, in_features=32, qkv_features=32, decode=False)
    ours = nnx.MultiHeadAttention(
        **kwargs, rngs=nnx.Rngs(0), attention_fn=make_attention_fn(causal=True)
    )
    stock = nnx.MultiHeadAttention(**kwargs, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 24, 32))
    causal = nnx.make_causal_mask(jnp.ones((2, 24)))
    np.testing.assert_allclose(ours(x), stock(x, mask=causal), rtol=2e-5, atol=2e-5)


def test_attention_fn_rejects_dense_masks_and_dropout():
    fn = make_attention_fn()
    q = jnp.ones((1, 4, 2, 8))
    with pytest.raises(ValueError, match="no dense mask"):
        fn(q, q, q, mask=jnp.ones((1, 2, 4, 4), bool))
    with pytest.raises(ValueError, match="no dense bias"):
        fn(q, q, q, bias=jnp.ones((1, 2, 4, 4)))
    with pytest.raises(NotImplementedError, match="dropout"):
        fn(q, q, q, dropout_rate=0.1, deterministic=False)


def test_nnx_attention_module_matches_functional_call():
    layer = Attention(
        32,
        4,
        num_kv_heads=2,
        causal=True,
        alibi=True,
        window_size=(8, 0),
        softcap=20.0,
        rngs=nnx.Rngs(0),
    )
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 24, 32))
    seg = jnp.asarray(np.repeat([[1] * 10 + [2] * 14], 2, axis=0), jnp.int32)
    got = layer(x, segment_ids=seg)
    q = layer.q_proj(x).reshape(2, 24, 4, 8)
    k = layer.k_proj(x).reshape(2, 24, 2, 8)
    v = layer.v_proj(x).reshape(2, 24, 2, 8)
    want = fa3_jax.attention_reference(
        q,
        k,
        v,
        spec=fa3_jax.MaskSpec(24, 24, True, 8, 0),
        softmax_scale=8**-0.5,
        softcap=20.0,
        alibi_slopes=fa3_jax.alibi_slopes(4),
        segment_ids=seg,
    )[0]
    np.testing.assert_allclose(got, layer.out_proj(want.reshape(2, 24, 32)), rtol=1e-5, atol=1e-5)
    # Packed documents: the second document's outputs do not depend on the first's inputs.
    grad = jax.grad(lambda x: layer(x, segment_ids=seg)[:, 10:].sum())(x)
    np.testing.assert_array_equal(grad[:, :10], 0.0)
