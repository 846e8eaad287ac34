"""The shared attention test base: every implementation is checked by it.

A subclass sets ``implementation`` (passed to ``fa3_jax.attention``), may wrap
calls in ``context()`` (e.g. GPU interpret mode) and may narrow ``CASES`` /
``GRAD_CASES``. ``tests/conftest.py`` parametrizes the ``case`` and
``grad_case`` arguments from those lists.

Every check compares with the independent naive implementation in float64
(``naive.py``), on fresh random inputs, using FlashAttention's tolerance rule:
``err(impl) <= 2 * err(naive in the input's low precision) + atol``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np

import fa3_jax
from tests.fa3_jax.naive import naive_attention

ATOL = {jnp.float32: 2e-5, jnp.float16: 2e-3, jnp.bfloat16: 1e-2}
GRAD_ATOL = {jnp.float32: 1e-4, jnp.float16: 1e-2, jnp.bfloat16: 5e-2}


@dataclasses.dataclass(frozen=True)
class Case:
    """One attention configuration to test."""

    dtype: type = jnp.float32
    batch: int = 2
    seq_q: int = 128
    seq_k: int = 128
    heads_q: int = 4
    heads_kv: int = 4
    head_dim: int = 64
    head_dim_v: int | None = None
    causal: bool = False
    window: tuple = (None, None)
    alibi: str | None = None  # None, "head" ([H]) or "batch" ([B, H])
    softcap: float | None = None
    scale: float | None = None
    segments: str | None = None  # None, "shared" (one array) or "pair"
    block_sparse: tuple | None = None  # (block_q, block_k, density)
    masked_rows: bool = False  # plant queries that see no key

    @property
    def id(self) -> str:
        parts = [
            jnp.dtype(self.dtype).name,
            f"b{self.batch}",
            f"q{self.seq_q}k{self.seq_k}",
            f"h{self.heads_q}/{self.heads_kv}",
            f"d{self.head_dim}" + (f"v{self.head_dim_v}" if self.head_dim_v else ""),
        ]
        parts += ["causal"] * self.causal
        if self.window != (None, None):
            parts.append(f"win{self.window[0]},{self.window[1]}")
        parts += [f"alibi-{self.alibi}"] * bool(self.alibi)
        parts += [f"cap{self.softcap}"] * bool(self.softcap)
        parts += [f"scale{self.scale}"] * bool(self.scale)
        parts += [f"seg-{self.segments}"] * bool(self.segments)
        if self.block_sparse:
            parts.append("bs{}x{}@{}".format(*self.block_sparse))
        parts += ["masked-rows"] * self.masked_rows
        return "-".join(parts)


def make_inputs(case: Case, seed: int):
    """Fresh random inputs: ``(q, k, v, attention kwargs, naive kwargs)``."""
    rng = np.random.default_rng(seed)
    dv = case.head_dim_v or case.head_dim

    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    q = normal(case.batch, case.seq_q, case.heads_q, case.head_dim)
    k = normal(case.batch, case.seq_k, case.heads_kv, case.head_dim)
    v = normal(case.batch, case.seq_k, case.heads_kv, dv)
    kwargs = dict(
        causal=case.causal, window_size=case.window, softcap=case.softcap, softmax_scale=case.scale
    )
    naive = dict(causal=case.causal, window=case.window, softcap=case.softcap, scale=case.scale)
    if case.alibi:
        shape = (case.heads_q,) if case.alibi == "head" else (case.batch, case.heads_q)
        slopes = rng.uniform(0.01, 0.5, shape).astype(np.float32)
        kwargs["alibi_slopes"] = naive["alibi"] = slopes
    if case.segments:
        q_seg = _packed_ids(rng, case.batch, case.seq_q)
        kv_seg = q_seg if case.segments == "shared" else _packed_ids(rng, case.batch, case.seq_k)
        if case.masked_rows:
            q_seg = q_seg.copy()
            q_seg[:, : max(1, case.seq_q // 8)] = 1000  # no key has this id
        shared = case.segments == "shared" and not case.masked_rows
        kwargs["segment_ids"] = q_seg if shared else (q_seg, kv_seg)
        naive["q_seg"], naive["kv_seg"] = q_seg, kv_seg
    if case.block_sparse:
        bq, bk, density = case.block_sparse
        nq, nk = -(-case.seq_q // bq), -(-case.seq_k // bk)
        mask = rng.random((case.heads_q, nq, nk)) < density
        if case.masked_rows:
            mask[0, 0, :] = False
        kwargs["block_mask"] = fa3_jax.BlockMask(jnp.asarray(mask), bq, bk)
        naive["block"] = (mask[None], bq, bk)
    return q, k, v, kwargs, naive


def _packed_ids(rng, batch, seq):
    """Sorted document ids per row, as produced by sequence packing."""
    starts = rng.random((batch, seq)) < 4.0 / seq
    starts[:, 0] = False
    return np.cumsum(starts, axis=1).astype(np.int32)


CASES = [
    # dtypes x head dims, plain and causal, square
    *[
        Case(dtype=dt, head_dim=d, causal=c)
        for dt, d, c in itertools.product(
            (jnp.float16, jnp.bfloat16, jnp.float32), (64, 128, 256, 80), (False, True)
        )
    ],
    # lengths, seq_q != seq_k, odd sizes
    *[
        Case(seq_q=sq, seq_k=sk, causal=c)
        for (sq, sk), c in itertools.product(
            ((1, 1), (1, 17), (17, 17), (17, 300), (300, 128), (128, 300), (300, 300)),
            (False, True),
        )
    ],
    # GQA / MQA, head_dim_v != head_dim
    Case(heads_q=8, heads_kv=2, causal=True),
    Case(heads_q=8, heads_kv=1, seq_q=17, seq_k=300),
    Case(dtype=jnp.bfloat16, heads_q=6, heads_kv=3, head_dim=128, head_dim_v=64),
    # windows
    Case(window=(16, 0)),
    Case(window=(32, 8), seq_q=300, seq_k=300),
    Case(window=(None, 5), seq_q=17, seq_k=300),
    Case(window=(20, None), causal=True, seq_q=300, seq_k=128),
    # ALiBi, softcap, scale
    Case(alibi="head", causal=True),
    Case(alibi="batch", seq_q=17, seq_k=300, causal=True),
    Case(softcap=5.0),
    Case(softcap=2.0, alibi="head", scale=0.3, causal=True, dtype=jnp.bfloat16),
    # segments (packed documents)
    Case(segments="shared", causal=True),
    Case(segments="pair", seq_q=17, seq_k=300),
    Case(segments="shared", causal=True, alibi="head", window=(40, 0), seq_q=300, seq_k=300),
    # block-sparse masks
    Case(block_sparse=(64, 64, 0.5)),
    Case(block_sparse=(16, 32, 0.6), seq_q=300, seq_k=128, causal=True),
    Case(
        block_sparse=(64, 128, 0.5),
        segments="shared",
        softcap=4.0,
        dtype=jnp.float16,
        seq_q=300,
        seq_k=300,
    ),
    # everything at once, GQA, fp16
    Case(
        dtype=jnp.float16,
        heads_q=8,
        heads_kv=2,
        causal=True,
        window=(50, 0),
        alibi="batch",
        softcap=8.0,
        segments="shared",
        block_sparse=(32, 32, 0.7),
        seq_q=300,
        seq_k=300,
    ),
    # queries that see no key: empty segments, empty block rows, causal with seq_q > seq_k
    Case(segments="shared", masked_rows=True),
    Case(block_sparse=(32, 32, 0.5), masked_rows=True, seq_q=128, seq_k=300),
    Case(causal=True, seq_q=300, seq_k=17),
    Case(window=(0, 0), seq_q=17, seq_k=300, causal=True),
]

GRAD_CASES = [
    Case(dtype=jnp.float32, causal=True),
    Case(dtype=jnp.float16, seq_q=17, seq_k=300),
    Case(dtype=jnp.bfloat16, head_dim=128, causal=True),
    Case(heads_q=8, heads_kv=2, seq_q=300, seq_k=128, causal=True),
    Case(window=(16, 4), alibi="head"),
    Case(softcap=3.0, causal=True, alibi="batch"),
    Case(segments="shared", causal=True, masked_rows=True),
    Case(block_sparse=(32, 64, 0.6), segments="pair", seq_q=128, seq_k=300),
    Case(causal=True, seq_q=300, seq_k=17),
    Case(
        dtype=jnp.float16,
        heads_q=4,
        heads_kv=1,
        head_dim=80,
        causal=True,
        softcap=6.0,
        alibi="head",
        segments="shared",
        block_sparse=(64, 64, 0.7),
        window=(64, 0),
        seq_q=300,
        seq_k=300,
    ),
]


def max_err(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    finite = np.isfinite(x) & np.isfinite(ref)
    return float(np.max(np.abs(x[finite] - ref[finite]), initial=0.0))


def assert_close(x, truth, low_precision, atol, what):
    """FlashAttention's rule: err(x) <= 2 * err(low-precision baseline) + atol."""
    x, truth = np.asarray(x, np.float64), np.asarray(truth, np.float64)
    assert not np.isnan(x).any(), f"{what}: NaN in output"
    np.testing.assert_array_equal(np.isfinite(x), np.isfinite(truth), err_msg=f"{what}: inf")
    err, base = max_err(x, truth), max_err(low_precision, truth)
    assert err <= 2 * base + atol, f"{what}: error {err:.3g} > 2 * {base:.3g} + {atol:g}"


class AttentionTestBase:
    """Checks one implementation of ``fa3_jax.attention`` against the naive one."""

    implementation: str | None = None
    CASES = CASES
    GRAD_CASES = GRAD_CASES

    def context(self):
        return contextlib.nullcontext()

    def attention(self, q, k, v, **kwargs):
        with self.context():
            return fa3_jax.attention(q, k, v, implementation=self.implementation, **kwargs)

    def test_forward(self, case, request):
        seed = zlib.crc32(request.node.name.encode())
        q, k, v, kwargs, naive = make_inputs(case, seed)
        dt = case.dtype
        ql, kl, vl = (jnp.asarray(x, dt) for x in (q, k, v))
        out, lse = self.attention(ql, kl, vl, return_lse=True, **kwargs)
        assert out.shape == (case.batch, case.seq_q, case.heads_q, case.head_dim_v or case.head_dim)
        assert out.dtype == dt and lse.dtype == jnp.float32
        assert lse.shape == (case.batch, case.heads_q, case.seq_q)
        as64 = [np.asarray(x, np.float64) for x in (ql, kl, vl)]
        truth_out, truth_lse = naive_attention(*as64, **naive)
        low_out, low_lse = naive_attention(ql, kl, vl, xp=jnp, **naive)
        assert_close(out, truth_out, low_out, ATOL[dt], "out")
        assert_close(lse, truth_lse, low_lse, ATOL[dt] * 10, "lse")
        if case.masked_rows or (case.causal and case.seq_q > case.seq_k):
            empty = np.isneginf(truth_lse)
            assert empty.any(), "case was meant to have fully masked rows"
            np.testing.assert_array_equal(np.asarray(out).transpose(0, 2, 1, 3)[empty], 0.0)

    def test_grad(self, grad_case, request):
        case = grad_case
        seed = zlib.crc32(request.node.name.encode())
        q, k, v, kwargs, naive = make_inputs(case, seed)
        rng = np.random.default_rng(seed + 1)
        dout = rng.standard_normal(
            (case.batch, case.seq_q, case.heads_q, case.head_dim_v or case.head_dim)
        )
        dt = case.dtype
        ql, kl, vl, dl = (jnp.asarray(x, dt) for x in (q, k, v, dout))

        def loss(fn):
            return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * dl.astype(jnp.float32))

        # The custom_vjp backward is traced inside jax.grad: the context spans it too.
        with self.context():
            grads = jax.grad(
                loss(lambda q, k, v: self.attention(q, k, v, **kwargs)), argnums=(0, 1, 2)
            )(ql, kl, vl)
        naive_fn = loss(lambda q, k, v: naive_attention(q, k, v, xp=jnp, **naive)[0])
        low = jax.grad(naive_fn, argnums=(0, 1, 2))(ql, kl, vl)
        with jax.enable_x64(True):
            as64 = [jnp.asarray(np.asarray(x, np.float64)) for x in (ql, kl, vl, dl)]
            truth = jax.grad(
                lambda q, k, v: jnp.sum(naive_attention(q, k, v, xp=jnp, **naive)[0] * as64[3]),
                argnums=(0, 1, 2),
            )(*as64[:3])
            truth = [np.asarray(t) for t in truth]
        for name, g, t, lo in zip("qkv", grads, truth, low, strict=True):
            assert g.dtype == dt and g.shape == t.shape
            assert_close(g, t, lo, GRAD_ATOL[dt], f"d{name}")

    def test_jit_and_vmap_match_eager(self):
        case = Case(causal=True, seq_q=17, seq_k=300, alibi="head", segments="pair")
        q, k, v, kwargs, _ = make_inputs(case, 7)
        eager = self.attention(q, k, v, **kwargs)
        jitted = jax.jit(lambda q, k, v: self.attention(q, k, v, **kwargs))(q, k, v)
        np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
        single = {key: val for key, val in kwargs.items() if key != "segment_ids"}
        mapped = jax.vmap(lambda q, k, v: self.attention(q, k, v, **single))(
            q[:, None], k[:, None], v[:, None]
        )
        looped = [
            self.attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], **single)
            for i in range(case.batch)
        ]
        np.testing.assert_allclose(mapped[:, 0], np.concatenate(looped), rtol=1e-5, atol=1e-5)
