"""`fa3_jax.remat_policy`: attention's out/lse are kept under remat, gradients unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

import fa3_jax


def _loss(q_BSHD, k_BSHD, v_BSHD):
    out_BSHD = fa3_jax.attention(jnp.sin(q_BSHD), k_BSHD, v_BSHD, causal=True)
    return jnp.sum(jnp.cos(out_BSHD))


def _named(policy, *args):
    saved = saved_residuals(jax.checkpoint(_loss, policy=policy), *args)
    return sorted(desc.split("'")[1] for _, desc in saved if "named" in desc)


@pytest.fixture
def qkv():
    keys = jax.random.split(jax.random.key(3), 3)
    return [jax.random.normal(k, (2, 40, 4, 16), jnp.float32) for k in keys]


def test_policy_saves_attention_residuals(qkv):
    assert _named(fa3_jax.remat_policy(), *qkv) == sorted(fa3_jax.RESIDUAL_NAMES)
    # the base policy alone keeps neither, so the forward would run again in the backward
    assert _named(jax.checkpoint_policies.dots_with_no_batch_dims_saveable, *qkv) == []


def test_policy_keeps_gradients(qkv):
    plain = jax.grad(_loss, argnums=(0, 1, 2))(*qkv)
    remat = jax.grad(jax.checkpoint(_loss, policy=fa3_jax.remat_policy()), argnums=(0, 1, 2))(*qkv)
    for a, b in zip(plain, remat, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
