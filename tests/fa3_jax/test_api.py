"""fa3_jax.attention: bad input errors, implementation choice, transformations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import fa3_jax
from fa3_jax import BlockMask, attention
from tests.fa3_jax.attention_base import Case, make_inputs
from tests.fa3_jax.naive import naive_attention


def _qkv(dtype=jnp.float32, b=2, sq=16, sk=16, hq=4, hk=2, d=32, dv=None):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((b, sq, hq, d)), dtype)
    k = jnp.asarray(rng.standard_normal((b, sk, hk, d)), dtype)
    v = jnp.asarray(rng.standard_normal((b, sk, hk, dv or d)), dtype)
    return q, k, v


BAD_INPUTS = [
    (dict(q=np.ones((2, 16, 4))), ValueError, "q must have rank 4"),
    (dict(k=np.ones((2, 16, 2, 32, 1))), ValueError, "k must have rank 4"),
    (dict(q="not an array"), TypeError, "q must be an array"),
    (
        dict(q=np.ones((2, 16, 4, 32), np.int32)),
        TypeError,
        "q must be float16, bfloat16, float32 or float8_e4m3fn",
    ),
    (dict(v=np.ones((2, 16, 2, 32), np.float16)), TypeError, "share one dtype"),
    (dict(k=np.ones((3, 16, 2, 32), np.float32)), ValueError, "batch sizes differ"),
    (dict(k=np.ones((2, 16, 2, 16), np.float32)), ValueError, "head_dim 16 must equal"),
    (dict(v=np.ones((2, 15, 2, 32), np.float32)), ValueError, "v's seq_k 15"),
    (dict(v=np.ones((2, 16, 1, 32), np.float32)), ValueError, "v's heads_kv 1"),
    (
        dict(k=np.ones((2, 16, 3, 32), np.float32), v=np.ones((2, 16, 3, 32), np.float32)),
        ValueError,
        r"heads_q \(4\) must be a multiple of heads_kv \(3\)",
    ),
    (dict(window_size=(-1, 0)), ValueError, "window_size left must be >= 0"),
    (dict(window_size=(4,)), ValueError, "window_size must be a pair"),
    (dict(window_size=(1.5, None)), TypeError, "window_size left must be None or an int"),
    (dict(softcap=0.0), ValueError, "softcap must be a positive finite number"),
    (dict(softcap=-1.0), ValueError, "softcap must be a positive"),
    (dict(softmax_scale=0.0), ValueError, "softmax_scale must be a positive"),
    (dict(softmax_scale=float("nan")), ValueError, "softmax_scale must be a positive"),
    (
        dict(softmax_scale=jnp.float32(0.1) * jnp.ones(())),
        TypeError,
        "softmax_scale must be a Python float",
    ),
    (
        dict(alibi_slopes=np.ones(3, np.float32)),
        ValueError,
        r"alibi_slopes must have shape \[4\] or \[2, 4\]",
    ),
    (dict(alibi_slopes=np.ones(4, np.int32)), TypeError, "alibi_slopes must be floating point"),
    (
        dict(segment_ids=np.ones((2, 15), np.int32)),
        ValueError,
        r"q segment_ids must have shape \[2, 16\]",
    ),
    (dict(segment_ids=np.ones((2, 16), np.float32)), TypeError, "segment_ids must be integers"),
    (dict(segment_ids=(np.ones((2, 16), np.int32),)), ValueError, "one array or a pair"),
    (
        dict(
            k=np.ones((2, 8, 2, 32), np.float32),
            v=np.ones((2, 8, 2, 32), np.float32),
            segment_ids=np.ones((2, 16), np.int32),
        ),
        ValueError,
        "needs seq_q == seq_k",
    ),
    (
        dict(block_mask=np.ones((4, 1, 1), bool)),
        TypeError,
        "block_mask must be a fa3_jax.BlockMask",
    ),
    (
        dict(block_mask=BlockMask(jnp.ones((4, 2, 1), bool), 16, 16)),
        ValueError,
        r"block_mask.mask has shape \(4, 2, 1\)",
    ),
    (
        dict(block_mask=BlockMask(jnp.ones((3, 1, 1), bool), 16, 16)),
        ValueError,
        "block_mask.mask has shape",
    ),
    (
        dict(block_mask=BlockMask(jnp.ones((1, 1), bool), 16, 16)),
        ValueError,
        "must have rank 3 or 4",
    ),
    (dict(block_mask=BlockMask(jnp.ones((4, 1, 1), jnp.int32), 16, 16)), TypeError, "must be bool"),
    (dict(return_lse="yes"), TypeError, "return_lse must be a bool"),
    (dict(deterministic=1), TypeError, "deterministic must be a bool"),
    (dict(implementation="cuda"), ValueError, "implementation must be None or one of"),
]


@pytest.mark.parametrize("override,error,match", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_raises_clear_error(override, error, match):
    q, k, v = _qkv()
    args = dict(q=q, k=k, v=v)
    for name in ("q", "k", "v"):
        if name in override:
            args[name] = override.pop(name)
    with pytest.raises(error, match=match):
        attention(args["q"], args["k"], args["v"], **override)


def test_mosaic_without_hopper_or_interpret_mode_is_a_clear_error():
    if fa3_jax.api._platform.mosaic_available():
        pytest.skip("a Hopper GPU is present: the CPU-only message does not apply")
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="needs a Hopper GPU"):
        attention(q, k, v, implementation="mosaic")


def test_default_implementation_on_cpu_is_reference():
    if fa3_jax.api._platform.mosaic_available():
        pytest.skip("a Hopper GPU is present")
    q, k, v = _qkv()
    np.testing.assert_array_equal(
        attention(q, k, v, causal=True), attention(q, k, v, causal=True, implementation="reference")
    )


def test_softmax_scale_default_and_explicit():
    q, k, v = _qkv()
    np.testing.assert_allclose(
        attention(q, k, v), attention(q, k, v, softmax_scale=32**-0.5), rtol=1e-6
    )
    truth, _ = naive_attention(*(np.asarray(x, np.float64) for x in (q, k, v)), scale=0.7)
    np.testing.assert_allclose(attention(q, k, v, softmax_scale=0.7), truth, atol=2e-5)


def test_grad_through_lse():
    """The lse output is differentiable too (d lse / d logits = softmax)."""
    q, k, v = _qkv(sq=12, sk=20)

    def f(q, k):
        return attention(q, k, v, causal=True, return_lse=True)[1].sum()

    def g(q, k):
        return naive_attention(q, k, v, xp=jnp, causal=True)[1].sum()

    for got, want in zip(jax.grad(f, (0, 1))(q, k), jax.grad(g, (0, 1))(q, k), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fully_masked_rows_have_finite_zero_gradients():
    case = Case(segments="shared", masked_rows=True, causal=True)
    q, k, v, kwargs, _ = make_inputs(case, 3)
    grads = jax.grad(lambda q, k, v: attention(q, k, v, **kwargs).sum(), (0, 1, 2))(q, k, v)
    assert all(bool(jnp.isfinite(g).all()) for g in grads)
    masked = np.asarray(kwargs["segment_ids"][0]) == 1000  # [batch, seq_q]
    np.testing.assert_array_equal(np.asarray(grads[0])[masked], 0.0)


def test_grad_under_jit_and_shard_map():
    """Data-parallel attention inside shard_map over a 1-D mesh of the local devices."""
    q, k, v = _qkv(b=len(jax.devices()) * 2)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    spec = P("data")

    def loss(q, k, v):
        def local(q, k, v):
            return attention(q, k, v, causal=True, alibi_slopes=fa3_jax.alibi_slopes(4))

        out = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec)(q, k, v)
        return jnp.sum(out**2)

    def plain(q, k, v):
        return jnp.sum(attention(q, k, v, causal=True, alibi_slopes=fa3_jax.alibi_slopes(4)) ** 2)

    for got, want in zip(
        jax.jit(jax.grad(loss, (0, 1, 2)))(q, k, v),
        jax.grad(plain, (0, 1, 2))(q, k, v),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 6, 8, 12, 16, 24, 32])
def test_alibi_slopes_formula(heads):
    slopes = fa3_jax.alibi_slopes(heads)
    assert slopes.shape == (heads,) and slopes.dtype == np.float32
    m = 2 ** int(np.floor(np.log2(heads)))
    base = 2.0 ** (-8.0 / m)
    np.testing.assert_allclose(slopes[:m], base ** np.arange(1, m + 1), rtol=1e-6)
    if heads > m:
        extra = (2.0 ** (-4.0 / m)) ** np.arange(1, 2 * (heads - m), 2)
        np.testing.assert_allclose(slopes[m:], extra, rtol=1e-6)
    assert np.all(np.diff(slopes[:m]) < 0)
