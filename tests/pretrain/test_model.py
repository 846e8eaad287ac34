import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fa3_jax
from pretrain.attention import alibi_bias_HSS, causal_alibi_attention
from pretrain.config import make_config
from pretrain.model import LM
from tests.pretrain.helpers import SMALL_MODEL


def _model(seed=0, **overrides):
    cfg = make_config("tiny", {**SMALL_MODEL, "attention": "reference", **overrides}).model
    return LM(cfg, rngs=nnx.Rngs(seed))


def _naive_attention(q, k, v, segments, slopes, scale):
    """float64 NumPy: causal, same document, bias -slope·(i - j)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    seq = q.shape[1]
    i, j = np.arange(seq)[:, None], np.arange(seq)[None, :]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    logits -= np.asarray(slopes, np.float64)[None, :, None, None] * (i - j)
    seg = np.asarray(segments)
    visible = (j <= i)[None, None] & (seg[:, None, :, None] == seg[:, None, None, :])
    logits = np.where(visible, logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.parametrize("heads", [4, 6, 12])
def test_alibi_bias_matches_the_formula(heads):
    slopes = fa3_jax.alibi_slopes(heads)
    m = 2 ** int(np.floor(np.log2(heads)))
    expected = [2 ** (-8 * (h + 1) / m) for h in range(m)]
    expected += [2 ** (-8 * (h + 1) / (2 * m)) for h in range(0, 2 * m, 2)][: heads - m]
    np.testing.assert_allclose(slopes, expected, rtol=1e-6)
    bias = np.asarray(alibi_bias_HSS(jnp.asarray(slopes), 9))
    for h, i, j in [(0, 5, 2), (heads - 1, 8, 0), (1, 3, 3), (2, 1, 7)]:
        np.testing.assert_allclose(bias[h, i, j], -slopes[h] * abs(i - j), rtol=1e-6)


@pytest.mark.parametrize("implementation", ["reference", "xla"])
def test_attention_matches_naive_alibi_with_documents(implementation):
    keys = jax.random.split(jax.random.key(1), 3)
    shape = (2, 24, 4, 16)
    q, k, v = (jax.random.normal(key, shape, jnp.float32) for key in keys)
    segments = jnp.asarray([[1] * 10 + [2] * 14, [1] * 3 + [2] * 5 + [3] * 16], jnp.int32)
    slopes = jnp.asarray(fa3_jax.alibi_slopes(4))
    out = causal_alibi_attention(
        q,
        k,
        v,
        segment_ids_BS=segments,
        slopes_H=slopes,
        softmax_scale=0.25,
        implementation=implementation,
    )
    expected = _naive_attention(q, k, v, segments, slopes, 0.25)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5)


@functools.cache
def _input_gradients(segments: tuple[int, ...]) -> np.ndarray:
    """|d(sum of logits at position i) / d(input embedding at j)| summed over d_model: [i, j]."""
    model = _model()
    tokens = jax.random.randint(jax.random.key(2), (1, len(segments)), 0, 4096)
    x = model.embed_tokens(tokens)
    seg = jnp.asarray([segments], jnp.int32)

    def f(x):
        return model.logits_from_embeddings(x, seg)[0, :, :4096].sum(-1)

    jacobian = jax.jit(jax.jacrev(f))(x)  # [seq_out, 1, seq_in, d_model]
    return np.abs(np.asarray(jacobian)[:, 0]).sum(-1)


@pytest.mark.parametrize("out_pos", [0, 7, 15])
def test_causality_through_gradients(out_pos):
    grads = _input_gradients((1,) * 16)[out_pos]
    assert np.all(grads[: out_pos + 1] > 0)
    assert np.all(grads[out_pos + 1 :] == 0)


@pytest.mark.parametrize("out_pos", [2, 9, 13])
def test_no_gradient_across_packed_documents(out_pos):
    segments = (1,) * 5 + (2,) * 6 + (3,) * 5  # documents at positions 0-4, 5-10, 11-15
    start = max(s for s in (0, 5, 11) if s <= out_pos)
    grads = _input_gradients(segments)[out_pos]
    assert np.all(grads[start : out_pos + 1] > 0)
    assert np.all(grads[:start] == 0) and np.all(grads[out_pos + 1 :] == 0)


def _logits(model, tokens, segments):
    return nnx.jit(lambda m, t, s: m(t, s))(model, tokens, segments)


@pytest.mark.parametrize("remat", ["none", "full", "dots", "dots_attention"])
def test_attention_implementations_and_remat_agree(remat):
    tokens = jax.random.randint(jax.random.key(3), (2, 20), 0, 4096)
    segments = jnp.asarray([[1] * 12 + [2] * 8, [1] * 20], jnp.int32)
    ref = _logits(_model(remat=remat, attention="reference"), tokens, segments)
    xla = _logits(_model(remat=remat, attention="xla"), tokens, segments)
    np.testing.assert_allclose(np.asarray(ref[..., :4096]), np.asarray(xla[..., :4096]), atol=1e-4)
    assert np.all(np.isneginf(np.asarray(ref[..., 4096:])))


def test_mup_multipliers_scale_embeddings_and_logits():
    tokens = jax.random.randint(jax.random.key(4), (1, 8), 0, 4096)
    base = _model()
    scaled = _model(embedding_multiplier=3.0, output_multiplier=0.5)
    np.testing.assert_allclose(
        np.asarray(scaled.embed_tokens(tokens)),
        3.0 * np.asarray(base.embed_tokens(tokens)),
        rtol=1e-6,
    )
    assert make_config("tiny", {"attention_scale": "inverse"}).model.softmax_scale == 1 / 32


def test_bad_inputs_are_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match="tokens must be"):
        model(jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="segment_ids shape"):
        model(jnp.ones((1, 8), jnp.int32), jnp.ones((1, 7), jnp.int32))


@pytest.mark.parametrize("attention", ["reference", "xla"])
def test_no_segment_ids_means_one_document_per_row(attention):
    model = _model(attention=attention)
    tokens = jax.random.randint(jax.random.key(6), (2, 12), 0, 4096)
    without = _logits(model, tokens, None)
    with_ones = _logits(model, tokens, jnp.ones((2, 12), jnp.int32))
    np.testing.assert_allclose(np.asarray(without), np.asarray(with_ones), atol=1e-5)
