"""FP8 (float8_e4m3fn) forward: the reference path, the Mosaic kernel in GPU interpret mode,
CUDA lowering and bad input.

The oracle is the naive float64 attention of the dequantized inputs (``x * descale``).
The kernel's low-precision baseline is the same naive attention with FP8's one lossy
step, P rounded to e4m3 before P·V, and the output rounded to bfloat16.
"""

from __future__ import annotations

import dataclasses
import zlib

import jax
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call

import fa3_jax
from fa3_jax import _mosaic
from fa3_jax._mosaic.api_forward import FP8_HEAD_DIMS, default_forward_config
from fa3_jax.config import check_forward_fits, forward_config
from fa3_jax.masks import MaskSpec
from tests.fa3_jax.attention_base import ATOL, Case, assert_close, make_inputs
from tests.fa3_jax.naive import naive_attention

F8 = jnp.float8_e4m3fn


def _fp8_inputs(case: Case, seed: int, descale: bool):
    """FP8 q, k, v (|x| up to ~8: e4m3's range used), their dequantized float64 values and
    the attention keywords (with random descales when ``descale``) and naive keywords."""
    q, k, v, kwargs, naive = make_inputs(case, seed)
    rng = np.random.default_rng(seed + 1)
    q8, k8, v8 = (jnp.asarray(2.0 * x, F8) for x in (q, k, v))
    real = [np.asarray(x, np.float64) for x in (q8, k8, v8)]
    if descale:
        scales = [rng.uniform(0.25, 1.5, (case.batch, case.heads_kv)) for _ in range(3)]
        group = case.heads_q // case.heads_kv
        real[0] = real[0] * np.repeat(scales[0], group, axis=1)[:, None, :, None]
        real[1] = real[1] * scales[1][:, None, :, None]
        real[2] = real[2] * scales[2][:, None, :, None]
        kwargs.update(
            descale_q=jnp.asarray(scales[0], jnp.float32),
            descale_k=jnp.asarray(scales[1], jnp.float32),
            descale_v=jnp.asarray(scales[2], jnp.float32),
        )
    return (q8, k8, v8), real, kwargs, naive


def _round_e4m3(p):
    return p.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)


def _bf16(x):
    return np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float64)


_KERNEL_CASES = [
    # dense, GQA, ragged lengths (a key tail inside the last tile; a partial 8-row tile)
    (Case(dtype=F8, batch=2, heads_q=4, heads_kv=2, seq_q=200, seq_k=301, head_dim=64), True),
    # causal packed documents (the dynamic order), no descales
    (Case(dtype=F8, batch=2, heads_q=2, heads_kv=2, seq_q=256, seq_k=256, head_dim=128,
          causal=True, segments="shared"), False),
    # window with softcap and ALiBi: the scale is applied before tanh, not folded into exp2
    (Case(dtype=F8, batch=1, heads_q=4, heads_kv=1, seq_q=333, seq_k=333, head_dim=128,
          window=(70, 20), softcap=20.0, alibi="batch"), True),
    # per-head block-sparse mask (64-row blocks: each warpgroup checks its block's bit)
    (Case(dtype=F8, batch=1, heads_q=2, heads_kv=1, seq_q=256, seq_k=320, head_dim=64,
          block_sparse=(64, 128, 0.5)), True),
    # head dim 256: one CTA per q tile, 64-key tiles
    (Case(dtype=F8, batch=1, heads_q=2, heads_kv=2, seq_q=130, seq_k=190, head_dim=256,
          causal=True), True),
]


@pytest.mark.parametrize("case,descale", _KERNEL_CASES,
                         ids=[f"{c.id}-descale{d:d}" for c, d in _KERNEL_CASES])
def test_fp8_kernel_interpret(case, descale):
    """The Mosaic FP8 forward in GPU interpret mode (race detection on) against the oracle."""
    seed = zlib.crc32(case.id.encode())
    (q8, k8, v8), real, kwargs, naive = _fp8_inputs(case, seed, descale)
    interpret_pallas_call.reset_gpu_interpret_mode_state()
    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams(detect_races=True)):
        out, lse = fa3_jax.attention(q8, k8, v8, implementation="mosaic", return_lse=True,
                                     **kwargs)
    assert not interpret_pallas_call.get_races().races_found
    assert out.dtype == jnp.bfloat16 and lse.dtype == jnp.float32
    truth_out, truth_lse = naive_attention(*real, **naive)
    low_out, low_lse = naive_attention(*real, round_p=_round_e4m3, **naive)
    assert_close(out, truth_out, _bf16(low_out), ATOL[jnp.bfloat16], "out")
    # lse sees no FP8 rounding past the inputs': float32 logits in both
    assert_close(lse, truth_lse, low_lse, 1e-4, "lse")


def test_fp8_reference_is_the_dequantized_attention():
    """The CPU path: float32 attention of the dequantized inputs, output in bfloat16."""
    case = Case(dtype=F8, batch=2, heads_q=4, heads_kv=2, seq_q=70, seq_k=90, head_dim=64,
                causal=True, alibi="head")
    (q8, k8, v8), real, kwargs, naive = _fp8_inputs(case, 7, descale=True)
    out, lse = fa3_jax.attention(q8, k8, v8, return_lse=True, **kwargs)
    assert out.dtype == jnp.bfloat16
    truth_out, truth_lse = naive_attention(*real, **naive)
    assert_close(out, truth_out, _bf16(truth_out), ATOL[jnp.bfloat16], "out")
    assert_close(lse, truth_lse, truth_lse, 1e-5, "lse")
    # descales of 1 are the same as none
    ones = {name: jnp.ones((2, 2), jnp.float32) for name in ("descale_q", "descale_k")}
    plain = fa3_jax.attention(q8, k8, v8, causal=True)
    same = fa3_jax.attention(q8, k8, v8, causal=True, **ones)
    np.testing.assert_array_equal(np.asarray(plain, np.float32), np.asarray(same, np.float32))


def test_fp8_bad_input():
    q8 = jnp.ones((2, 16, 4, 64), F8)
    kv8 = jnp.ones((2, 16, 2, 64), F8)
    with pytest.raises(ValueError, match=r"descale_k must have shape \[2, 2\]"):
        fa3_jax.attention(q8, kv8, kv8, descale_k=jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="descale_v must be floating"):
        fa3_jax.attention(q8, kv8, kv8, descale_v=jnp.ones((2, 2), jnp.int32))
    bf = jnp.ones((2, 16, 4, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="descale_q is for float8_e4m3fn inputs only"):
        fa3_jax.attention(bf, bf, bf, descale_q=jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="must share one dtype"):
        fa3_jax.attention(q8, kv8.astype(jnp.bfloat16), kv8)
    with pytest.raises(TypeError, match="float8_e4m3fn, got float8_e5m2"):
        e5 = q8.astype(jnp.float8_e5m2)
        fa3_jax.attention(e5, e5, e5)
    with pytest.raises(NotImplementedError, match="forward-only"):
        jax.grad(lambda q: fa3_jax.attention(q, kv8, kv8).astype(jnp.float32).sum())(q8)


def test_fp8_kernel_choice():
    """Head dims FlashAttention-3's FP8 path has; others go to the reference, with why."""
    for head_dim in (64, 96, 128, 256):
        x = jnp.ones((1, 128, 2, head_dim), F8)
        reason = _mosaic.forward_unsupported_reason(
            x, x, x, spec=MaskSpec(128, 128), softcap=None, has_alibi=False,
            has_segments=False, block_mask=None)
        assert (reason is None) == (head_dim in FP8_HEAD_DIMS), (head_dim, reason)
    # bf16 output buffers next to the FP8 Q buffers, P staged in SMEM: every default fits
    for head_dim in FP8_HEAD_DIMS:
        for causal in (False, True):
            for seq_k in (1024, 16384):
                config = forward_config(head_dim, F8, causal=causal, segments=causal,
                                        seq_k=seq_k)
                assert config.p_in_smem
                check_forward_fits(config, head_dim, 1, segments=causal)


@pytest.mark.parametrize("head_dim,causal", [(64, False), (128, True), (256, True)])
@pytest.mark.parametrize("p_in_smem", [True, False])
def test_fp8_lowers_for_cuda(head_dim, causal, p_in_smem):
    """The GPU path (V^T in K-major tiles; P staged in SMEM, or in registers relabelled in the
    8-bit A layout) lowers to Mosaic GPU on the CPU, with segment ids and descales."""
    b, s, h, h_kv = 2, 1000, 4, 2
    spec = MaskSpec(s, s, causal=causal)
    q = jax.ShapeDtypeStruct((b, s, h, head_dim), F8)
    kv = jax.ShapeDtypeStruct((b, s, h_kv, head_dim), F8)
    ids = jax.ShapeDtypeStruct((b, s), jnp.int32)
    scale = jax.ShapeDtypeStruct((b, h_kv), jnp.float32)
    config = dataclasses.replace(
        default_forward_config(head_dim, F8, spec, has_segments=True, block_k=None),
        p_in_smem=p_in_smem)

    def forward(q, k, v, ids, *descale):
        return _mosaic.mha_forward(q, k, v, spec=spec, softmax_scale=head_dim**-0.5,
                                   softcap=None, alibi_slopes_BH=None, segment_ids=ids,
                                   block_mask=None, descale_BG=descale, config=config)

    lowered = jax.jit(forward).trace(q, kv, kv, ids, scale, scale, scale)
    assert "mosaic_gpu" in lowered.lower(lowering_platforms=("cuda",)).as_text()


def test_fp8_key_order_matches_the_wgmma_layouts():
    """_FP8_KEY_ORDER is where the WGMMA layout puts the bytes the 8-bit A layout reads: the
    element a thread holds at register position (16-key block, r) in the 8-bit layout is the
    one it holds at 8-key block 2 * block + r // 2, vector slot r % 2, in the WGMMA layout;
    fp8_key_order (a transpose) reorders V^T's keys the same way."""
    from jax.experimental.mosaic import gpu as mgpu

    from fa3_jax._mosaic.forward import _FP8_KEY_ORDER, fp8_key_order

    assert mgpu.WGMMA_LAYOUT.vector_length == 2 and mgpu.WGMMA_LAYOUT_8BIT.vector_length == 4
    assert mgpu.WGMMA_LAYOUT.tiling.tile_shape((64, 16))[-3:] == (8, 4, 2)
    assert mgpu.WGMMA_LAYOUT_8BIT.tiling.tile_shape((64, 16))[-3:] == (8, 4, 4)
    for c in range(4):  # lane % 4
        wgmma = {(blk, v): blk * 8 + c * 2 + v for blk in range(2) for v in range(2)}
        for r in range(4):
            logical = c * 4 + r  # the 8-bit layout's key for slot r
            physical = wgmma[(r // 2, r % 2)]
            assert _FP8_KEY_ORDER[logical] == physical
    assert sorted(_FP8_KEY_ORDER) == list(range(16))
    v_t = np.arange(2 * 3 * 64).reshape(2, 3, 64)
    order = np.arange(64) // 16 * 16 + np.tile(_FP8_KEY_ORDER, 4)
    np.testing.assert_array_equal(np.asarray(fp8_key_order(jnp.asarray(v_t))), v_t[..., order])


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim,causal,segments,seq,p_in_smem", [
    (64, False, False, 2047, True), (64, True, False, 4097, True), (128, True, False, 2047, True),
    (128, True, True, 2047, True), (256, True, False, 2047, True),
    (64, False, False, 2047, False), (64, True, False, 4097, False),
    (128, True, True, 2047, False), (256, True, False, 2047, False)])
def test_fp8_kernel_gpu(head_dim, causal, segments, seq, p_in_smem, monkeypatch):
    """Realistic sizes on a Hopper GPU (the dynamic order with two and three consumers, the
    grid and the balanced order), a ragged length, descales; P staged in SMEM or kept in
    registers (relabelled in wgmma's 8-bit A layout, V^T's keys reordered to match)."""
    default = default_forward_config
    monkeypatch.setattr(
        _mosaic.api_forward, "default_forward_config",
        lambda *a, **kw: dataclasses.replace(default(*a, **kw), p_in_smem=p_in_smem))
    case = Case(dtype=F8, batch=1, heads_q=4, heads_kv=2, seq_q=seq, seq_k=seq,
                head_dim=head_dim, causal=causal, segments="shared" if segments else None)
    (q8, k8, v8), real, kwargs, naive = _fp8_inputs(case, head_dim + causal, descale=True)
    out = fa3_jax.attention(q8, k8, v8, implementation="mosaic", **kwargs)
    assert out.dtype == jnp.bfloat16
    truth_out, _ = naive_attention(*real, **naive)
    low_out, _ = naive_attention(*real, round_p=_round_e4m3, **naive)
    assert_close(out, truth_out, _bf16(low_out), ATOL[jnp.bfloat16], "out")


def test_quantize_fp8_round_trip_and_attention():
    """quantize_fp8: per (batch, kv head) scales (a GQA group's query heads share one), the
    amax lands on e4m3's largest value, x8 * descale is within e4m3's rounding of x, and
    attention of the quantized inputs with their descales is attention of x8 * descale."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 64, 4, 64)).astype(np.float32)
    q[1, :, 2:] *= 10.0  # batch 1, kv head 1: a larger scale
    k, v = (rng.standard_normal((2, 64, 2, 64)).astype(np.float32) for _ in range(2))
    q8, dq = fa3_jax.quantize_fp8(q, heads_kv=2)
    assert q8.dtype == F8 and q8.shape == q.shape and dq.shape == (2, 2)
    np.testing.assert_allclose(dq[1, 1], np.abs(q[1, :, 2:]).max() / 448.0, rtol=1e-6)
    assert float(jnp.abs(q8.astype(jnp.float32)).max()) == 448.0
    back = np.asarray(q8, np.float32) * np.repeat(np.asarray(dq), 2, axis=1)[:, None, :, None]
    # e4m3: 3 mantissa bits (relative step 1/8 -> error <= 1/16), subnormals below 2^-6
    np.testing.assert_array_less(np.abs(back - q), np.abs(q) / 16 + 2**-9 * float(dq.max()) + 1e-7)
    # attention of the FP8 inputs with their descales is attention of what they stand for
    k8, dk = fa3_jax.quantize_fp8(k)
    v8, dv = fa3_jax.quantize_fp8(v)
    out = fa3_jax.attention(q8, k8, v8, causal=True, descale_q=dq, descale_k=dk, descale_v=dv)
    k_back = np.asarray(k8, np.float32) * np.asarray(dk)[:, None, :, None]
    v_back = np.asarray(v8, np.float32) * np.asarray(dv)[:, None, :, None]
    want = fa3_jax.attention(back, k_back, v_back, causal=True)
    err = np.abs(np.asarray(out, np.float32) - np.asarray(want)).max()
    assert err <= 2**-8 * np.abs(np.asarray(want)).max(), err  # the bf16 output's rounding
    zero8, one = fa3_jax.quantize_fp8(np.zeros((1, 8, 2, 64), np.float32))
    assert not np.asarray(zero8, np.float32).any() and np.all(np.asarray(one) == 1.0)
    with pytest.raises(ValueError, match=r"heads_kv \(3\) must divide"):
        fa3_jax.quantize_fp8(q, heads_kv=3)
    with pytest.raises(ValueError, match="rank 4"):
        fa3_jax.quantize_fp8(q[0])
