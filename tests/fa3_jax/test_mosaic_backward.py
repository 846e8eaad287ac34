"""The Mosaic GPU backward kernels (dQ, dK/dV), checked by the shared attention test base.

On the CPU (CI) ``jax.grad`` through ``fa3_jax.attention(implementation='mosaic')``
runs the kernels in Mosaic GPU interpret mode at small shapes; every gradient
case asserts that the kernels really ran (no silent fallback to the
reference's backward). On a Hopper GPU (``pytest -m gpu``) they run compiled
at realistic sizes.
"""

from __future__ import annotations

import dataclasses
import zlib

import jax
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call

import fa3_jax
from fa3_jax import _mosaic
from fa3_jax._mosaic import backward as mosaic_backward
from fa3_jax._mosaic import partition as mosaic_partition
from fa3_jax.config import SMEM_LIMIT_BYTES, BackwardConfig, default_backward_config
from fa3_jax.flax import Attention
from fa3_jax.masks import BlockMask, MaskSpec
from fa3_jax.reference import attention_reference
from tests.fa3_jax.attention_base import (
    GRAD_ATOL,
    AttentionTestBase,
    Case,
    assert_close,
    make_inputs,
)
from tests.fa3_jax.naive import naive_attention

F16, BF16 = jnp.float16, jnp.bfloat16

# Small shapes for interpret mode; together they cover every feature and the
# combinations the kernels branch on (GQA walk, tails, partial tiles, empty rows).
INTERPRET_GRAD_CASES = [
    Case(dtype=F16, batch=1, heads_q=2, heads_kv=2, seq_q=17, seq_k=300),
    Case(dtype=BF16, batch=1, heads_q=2, heads_kv=1, head_dim=128, causal=True),
    Case(dtype=F16, batch=1, heads_q=2, heads_kv=1, seq_q=300, seq_k=128, causal=True),
    Case(dtype=F16, batch=1, heads_q=2, heads_kv=2, window=(16, 4), alibi="head"),
    Case(dtype=BF16, batch=2, heads_q=2, heads_kv=2, softcap=3.0, causal=True, alibi="batch"),
    # ALiBi as a query + a key term (causal): both diagonal offsets, ragged tiles
    Case(dtype=F16, batch=1, heads_q=2, heads_kv=1, seq_q=150, seq_k=300, causal=True,
         alibi="head"),
    Case(dtype=BF16, batch=1, heads_q=2, heads_kv=2, seq_q=300, seq_k=130, causal=True,
         alibi="batch"),
    Case(
        dtype=F16, batch=1, heads_q=2, heads_kv=1, segments="shared", causal=True, masked_rows=True
    ),
    Case(
        dtype=F16,
        batch=1,
        heads_q=2,
        heads_kv=2,
        block_sparse=(128, 128, 0.6),
        segments="pair",
        seq_q=128,
        seq_k=300,
    ),
    Case(
        dtype=BF16,
        batch=1,
        heads_q=2,
        heads_kv=2,
        block_sparse=(64, 64, 0.5),
        masked_rows=True,
        seq_q=128,
        seq_k=192,
    ),
    Case(dtype=F16, batch=1, heads_q=2, heads_kv=2, causal=True, seq_q=300, seq_k=17),
    Case(
        dtype=F16,
        batch=1,
        heads_q=4,
        heads_kv=1,
        causal=True,
        softcap=6.0,
        alibi="head",
        segments="shared",
        block_sparse=(128, 128, 0.7),
        window=(64, 0),
        seq_q=200,
        seq_k=200,
    ),
]


class _CountingBackward:
    """Wraps the backward entry the partitioning calls (``partition.mha_backward``) to prove
    the kernels ran."""

    def __init__(self, fn):
        self.fn, self.calls, self.kwargs = fn, 0, None

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.kwargs = kwargs
        return self.fn(*args, **kwargs)


class _MosaicBackwardBase(AttentionTestBase):
    implementation = "mosaic"
    # The forward kernel is checked by test_mosaic_forward.py; one case here.
    CASES = [Case(dtype=F16, batch=1, heads_q=2, heads_kv=1, seq_q=17, seq_k=130, causal=True)]

    def test_grad(self, grad_case, request, monkeypatch):
        spy = _CountingBackward(mosaic_partition.mha_backward)
        monkeypatch.setattr(mosaic_partition, "mha_backward", spy)
        super().test_grad(grad_case, request)
        assert spy.calls == 1, "the Mosaic backward did not run (fell back to the reference)"

    test_jit_and_vmap_match_eager = None  # forward-only; covered by test_mosaic_forward.py


class TestMosaicBackwardInterpret(_MosaicBackwardBase):
    """CI: the kernels in GPU interpret mode (no race detection: too slow for every case)."""

    GRAD_CASES = INTERPRET_GRAD_CASES

    def context(self):
        return plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams())


def _grads_direct(case: Case, seed: int, *, dlse: bool = False):
    """Inputs, reference forward residuals and ``mha_backward`` kwargs for a case (its masks,
    ALiBi slopes, segment ids and block mask in the forms ``mha_backward`` takes)."""
    q, k, v, kwargs, _ = make_inputs(case, seed)
    rng = np.random.default_rng(seed + 1)
    dt = case.dtype
    q, k, v = (jnp.asarray(x, dt) for x in (q, k, v))
    dout = jnp.asarray(rng.standard_normal(q.shape), dt)
    spec = MaskSpec(case.seq_q, case.seq_k, case.causal, *case.window)
    slopes_BH = segments = block_mask = None
    if "alibi_slopes" in kwargs:
        slopes_BH = jnp.asarray(kwargs["alibi_slopes"], jnp.float32).reshape(-1, case.heads_q)
    if "segment_ids" in kwargs:
        ids = kwargs["segment_ids"]
        pair = ids if isinstance(ids, tuple) else (ids, ids)
        segments = tuple(jnp.asarray(x, jnp.int32) for x in pair)
    if "block_mask" in kwargs:
        block_mask = kwargs["block_mask"].normalized(
            case.batch, case.heads_q, case.seq_q, case.seq_k
        )
    common = dict(
        spec=spec,
        softmax_scale=case.scale or 1.0 / np.sqrt(case.head_dim),
        softcap=case.softcap,
        segment_ids=segments,
        block_mask=block_mask,
    )
    ref_kwargs = dict(common, alibi_slopes=slopes_BH)
    out, lse = attention_reference(q, k, v, **ref_kwargs)
    dlse_BHS = jnp.asarray(rng.standard_normal(lse.shape), jnp.float32) if dlse else None
    bwd_kwargs = dict(common, alibi_slopes_BH=slopes_BH, dlse_BHS=dlse_BHS)
    return (q, k, v, out, lse, dout), bwd_kwargs, ref_kwargs


def _assert_matches_reference(grads, inputs, ref_kwargs, tol, dlse_BHS=None):
    """dQ, dK, dV within relative error ``tol`` of the f32 reference's (lse cotangent too)."""
    q, k, v, dout = (x.astype(jnp.float32) for x in inputs)
    (_, lse), vjp = jax.vjp(lambda q, k, v: attention_reference(q, k, v, **ref_kwargs), q, k, v)
    truth = vjp((dout, jnp.zeros_like(lse) if dlse_BHS is None else dlse_BHS))
    for name, g, t in zip("qkv", grads, truth, strict=True):
        err = float(jnp.linalg.norm(g.astype(jnp.float32) - t) / jnp.linalg.norm(t))
        assert err < tol, f"d{name}: relative error {err:.3g}"


def _flax_param_grads(implementation: str, batch: int, seq: int, features: int, heads: int):
    """Parameter gradients of a small NNX attention layer (bf16 compute, GQA, ALiBi, documents)."""
    layer = Attention(
        features,
        heads,
        num_kv_heads=heads // 2,
        head_dim=64,
        causal=True,
        alibi=True,
        dtype=BF16,
        implementation=implementation,
        rngs=nnx.Rngs(0),
    )
    x = jax.random.normal(jax.random.key(1), (batch, seq, features))
    seg = jnp.cumsum(jax.random.uniform(jax.random.key(2), (batch, seq)) < 3.0 / seq, axis=1)
    target = jax.random.normal(jax.random.key(3), (batch, seq, features))

    def loss(layer):
        out = layer(x, segment_ids=seg.astype(jnp.int32)).astype(jnp.float32)
        return jnp.mean((out - target) ** 2)

    return jax.tree.leaves(nnx.grad(loss)(layer))


def _assert_same_grads(got, want, tol):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        err = float(jnp.linalg.norm(g - w) / jnp.linalg.norm(w))
        assert err < tol, f"parameter gradient relative error {err:.3g}"


@pytest.mark.parametrize("deterministic", [False, True])
def test_deterministic_reaches_the_backward(monkeypatch, deterministic):
    """fa3_jax.attention(deterministic=...) is what the Mosaic backward gets."""
    spy = _CountingBackward(mosaic_partition.mha_backward)
    monkeypatch.setattr(mosaic_partition, "mha_backward", spy)
    q = jax.random.normal(jax.random.key(0), (1, 64, 2, 64), F16)

    def loss(q):
        out = fa3_jax.attention(q, q, q, implementation="mosaic", deterministic=deterministic)
        return jnp.sum(out.astype(jnp.float32))

    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
        jax.grad(loss)(q)
    assert spy.calls == 1 and spy.kwargs["deterministic"] is deterministic


def test_flax_model_grad_matches_reference():
    """jax.grad of a Flax layer through the Mosaic kernels matches the reference path."""
    sizes = dict(batch=1, seq=130, features=128, heads=2)
    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
        spy = _CountingBackward(mosaic_partition.mha_backward)
        mosaic_partition.mha_backward, original = spy, mosaic_partition.mha_backward
        try:
            got = _flax_param_grads("mosaic", **sizes)
        finally:
            mosaic_partition.mha_backward = original
    assert spy.calls == 1
    _assert_same_grads(got, _flax_param_grads("reference", **sizes), 2e-2)


# GQA walk over a ragged causal window: partial tiles, tails, empty tiles.
_WALK_CASE = Case(dtype=F16, batch=1, heads_q=2, heads_kv=1, seq_q=150, seq_k=270, causal=True,
                  window=(100, 0), softcap=8.0)


@pytest.mark.parametrize("dq", ["kernel", "partials"])
def test_deterministic_bit_identical(dq):
    """Two runs of the deterministic dQ modes give bit-identical dQ, dK, dV (GQA sums too)."""
    case = Case(dtype=F16, batch=1, heads_q=4, heads_kv=1, seq_q=130, seq_k=200, causal=True)
    args, kwargs, _ = _grads_direct(case, 3)
    cfg = BackwardConfig(dq=dq)
    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
        first = _mosaic.mha_backward(*args, **kwargs, config=cfg)
        second = _mosaic.mha_backward(*args, **kwargs, config=cfg)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "head_dim,wgs,stages,split,q_rows,static",
    [(64, 2, 2, False, False, False), (64, 2, 3, False, False, False),
     (128, 2, 2, False, False, False), (64, 1, 2, False, False, False),
     (128, 1, 2, False, False, False), (128, 2, 2, True, False, False),
     (128, 2, 2, True, True, False), (64, 2, 3, False, True, False),
     (128, 2, 2, True, True, True)],
    ids=["d64-2wg-swizzle64", "d64-2wg-3stages", "d128-2wg", "d64-1wg", "d128-1wg",
         "d128-2wg-split", "d128-2wg-split-q-rows", "d64-2wg-3stages-q-rows",
         "d128-2wg-split-q-rows-static-wg"],
)
def test_fused_dq_layouts_race_free(head_dim, wgs, stages, split, q_rows, static):
    """Fused dQ (each consumer's column block over every consumer's dS^T, or dS with q rows
    as the score tiles' M; at D64 with two consumers the 64-byte swizzle; three ring slots,
    the D64 default; partial tiles in a loop of their own) with race detection, against the
    f32 reference."""
    case = dataclasses.replace(_WALK_CASE, dtype=BF16, softcap=None, head_dim=head_dim)
    (q, k, v, out, lse, dout), kwargs, ref_kwargs = _grads_direct(case, 17)
    cfg = BackwardConfig(dq="partials", compute_wgs=wgs, stages=stages, split_partial=split,
                         q_rows=q_rows, static_warpgroups=static)
    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams(detect_races=True)):
        grads = _mosaic.mha_backward(q, k, v, out, lse, dout, **kwargs, config=cfg)
        jax.block_until_ready(grads)
    assert not interpret_pallas_call.get_races().races_found, "race detected in fused dQ"
    _assert_matches_reference(grads, (q, k, v, dout), ref_kwargs, 2e-2)


@pytest.mark.parametrize("q_rows", [False, True], ids=["kv-rows", "q-rows"])
@pytest.mark.parametrize(
    "extra",
    [dict(alibi="head", segments="pair"), dict(alibi="batch", softcap=8.0, head_dim=128)],
    ids=["d64-alibi-segments", "d128-alibi-softcap"],
)
def test_fused_dq_with_alibi_segments_softcap(extra, q_rows):
    """Fused dQ ('partials', the interpret-mode stand-in for 'atomic') with ALiBi, segment
    ids and softcap (the heuristic sends such walks to it at head dim 64; head dim 128
    runs it when asked), in both score orientations, against the f32 reference."""
    case = dataclasses.replace(_WALK_CASE, **dict(dtype=BF16, softcap=None, head_dim=64) | extra)
    (q, k, v, out, lse, dout), kwargs, ref_kwargs = _grads_direct(case, 23)
    cfg = BackwardConfig(dq="partials", q_rows=q_rows)
    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
        grads = _mosaic.mha_backward(q, k, v, out, lse, dout, **kwargs, config=cfg)
    _assert_matches_reference(grads, (q, k, v, dout), ref_kwargs, 2e-2)


@pytest.mark.parametrize("head_dim,causal,static", [(64, True, False), (128, False, False),
                                                    (128, False, True)])
def test_fused_dq_with_block_mask(head_dim, causal, static):
    """Fused dQ over per-head block-sparse walks (128 x 128 blocks, a query block that sees no
    key, GQA, odd lengths; at head dim 64 with causal element masks, at head dim 128 also with
    per-warpgroup consumer bodies, as the heuristic runs them): skipped tiles add nothing,
    against the f32 reference."""
    case = Case(dtype=BF16, batch=1, heads_q=2, heads_kv=1, seq_q=300, seq_k=350,
                head_dim=head_dim, causal=causal, block_sparse=(128, 128, 0.6), masked_rows=True)
    (q, k, v, out, lse, dout), kwargs, ref_kwargs = _grads_direct(case, 29)
    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
        grads = _mosaic.mha_backward(
            q, k, v, out, lse, dout, **kwargs,
            config=BackwardConfig(dq="partials", static_warpgroups=static),
        )
    _assert_matches_reference(grads, (q, k, v, dout), ref_kwargs, 2e-2)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dq,branch,split,q_rows", [("kernel", True, False, False),
                                                     ("atomic", True, False, False),
                                                     ("kernel", False, False, False),
                                                     ("kernel", True, True, False),
                                                     ("atomic", True, True, False),
                                                     ("atomic", True, True, True),
                                                     ("kernel", True, False, True)])
@pytest.mark.parametrize("static", [False, True], ids=["wg-traced", "wg-static"])
def test_backward_lowers_for_cuda(head_dim, dq, branch, split, q_rows, static):
    """The GPU configs (P/dS in registers unless q rows; TMA reduce-add for 'atomic', which
    interpret mode cannot run) pass Mosaic GPU's lowering and layout inference."""
    b, s, h = 1, 256, 2
    q = jax.ShapeDtypeStruct((b, s, h, head_dim), BF16)
    lse = jax.ShapeDtypeStruct((b, h, s), jnp.float32)
    cfg = dataclasses.replace(default_backward_config(head_dim), dq=dq, branch_masks=branch,
                              split_partial=split, q_rows=q_rows, static_warpgroups=static)
    assert cfg.register_operands

    def backward(q, k, v, o, lse, do):
        return _mosaic.mha_backward(
            q,
            k,
            v,
            o,
            lse,
            do,
            spec=MaskSpec(s, s, True),
            softmax_scale=0.1,
            softcap=5.0,
            alibi_slopes_BH=jnp.full((1, h), 0.1, jnp.float32),
            config=cfg,
        )

    text = jax.jit(backward).trace(q, q, q, q, lse, q).lower(lowering_platforms=("cuda",))
    assert "mosaic_gpu" in text.as_text()


@pytest.mark.parametrize(
    "cfg",
    [
        BackwardConfig(defer_release=True, block_kv_dq=128, stages=3),
        BackwardConfig(defer_release=True, block_q_dkv=128, compute_wgs=1),
        BackwardConfig(overlap=True, block_kv_dq=128),
        BackwardConfig(tile_order="batch"),
        BackwardConfig(branch_masks=False),
        BackwardConfig(branch_masks=False, overlap=True, block_kv_dq=128),
        BackwardConfig(split_partial=True),
        BackwardConfig(split_partial=True, overlap=True, block_kv_dq=128),
        BackwardConfig(split_partial=True, dq="partials"),
        BackwardConfig(q_rows=True),
        BackwardConfig(q_rows=True, block_q_dkv=128, compute_wgs=1, split_partial=True),
        BackwardConfig(static_warpgroups=True),
        BackwardConfig(static_warpgroups=True, dq="partials", q_rows=True),
    ],
    ids=["defer-kv128-stages3", "defer-q128-wgs1", "overlap-kv128", "batch-order",
         "select-masks", "select-masks-overlap", "split-partial", "split-partial-overlap",
         "split-partial-fused", "q-rows", "q-rows-q128-wgs1-split", "static-wg",
         "static-wg-fused-q-rows"],
)
def test_config_variants(cfg):
    """Non-default tilings give the same gradients (masks, GQA and tails on)."""
    case = _WALK_CASE
    (q, k, v, out, lse, dout), kwargs, ref_kwargs = _grads_direct(case, 13)
    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
        grads = _mosaic.mha_backward(q, k, v, out, lse, dout, **kwargs, config=cfg)
    _assert_matches_reference(grads, (q, k, v, dout), ref_kwargs, 5e-3)


def test_interpret_default_fits_segments_at_head_dim_128(monkeypatch):
    """Interpret mode stages dS in the dQ kernel; with segment ids at head dim 128 the default
    halves that kernel's kv steps to stay within SMEM instead of rejecting the inputs."""
    case = Case(dtype=BF16, batch=1, heads_q=2, heads_kv=1, seq_q=150, seq_k=150, head_dim=128,
                causal=True, segments="shared")
    (q, k, v, out, lse, dout), kwargs, ref_kwargs = _grads_direct(case, 37)
    used = []
    dq_call = mosaic_backward.dq_kernel_call
    monkeypatch.setattr(mosaic_backward, "dq_kernel_call",
                        lambda *a, cfg, **kw: used.append(cfg) or dq_call(*a, cfg=cfg, **kw))
    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
        grads = _mosaic.mha_backward(q, k, v, out, lse, dout, **kwargs)
    assert [c.block_kv_dq for c in used] == [64]
    _assert_matches_reference(grads, (q, k, v, dout), ref_kwargs, 2e-2)


@pytest.mark.parametrize("alibi", [None, "head"], ids=["softcap", "alibi-split"])
def test_no_races_and_lse_cotangent(alibi, monkeypatch):
    """Race detection on one GQA causal config (with ALiBi: partial tiles in their own loop,
    the default there); the lse cotangent is honoured."""
    case = Case(dtype=BF16, batch=1, heads_q=2, heads_kv=1, seq_q=70, seq_k=130, causal=True,
                softcap=4.0, alibi=alibi)
    (q, k, v, out, lse, dout), kwargs, ref_kwargs = _grads_direct(case, 5, dlse=True)
    used = []
    dkdv = mosaic_backward.dkdv_kernel_call
    monkeypatch.setattr(mosaic_backward, "dkdv_kernel_call",
                        lambda *a, cfg, **kw: used.append(cfg) or dkdv(*a, cfg=cfg, **kw))
    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams(detect_races=True)):
        grads = _mosaic.mha_backward(q, k, v, out, lse, dout, **kwargs)
    assert [c.split_partial for c in used] == [alibi is not None]
    assert not interpret_pallas_call.get_races().races_found, "race detected in the backward"
    _assert_matches_reference(grads, (q, k, v, dout), ref_kwargs, 2e-2, kwargs["dlse_BHS"])


@pytest.mark.parametrize(
    "dtype,head_dim,head_dim_v,block,match",
    [
        (jnp.float32, 64, 64, None, "fp16/bf16"),
        (F16, 256, 256, None, "head_dim"),
        (F16, 80, 80, None, "head_dim"),
        (BF16, 128, 64, None, "head_dim_v"),
        (F16, 64, 64, (32, 64), "aligned"),
    ],
)
def test_unsupported_reasons(dtype, head_dim, head_dim_v, block, match):
    q = jnp.zeros((1, 128, 2, head_dim), dtype)
    v = jnp.zeros((1, 128, 2, head_dim_v), dtype)
    spec = MaskSpec(128, 128)
    block_mask = None
    if block is not None:
        block_mask = BlockMask(jnp.ones((1, 2, 128 // block[0], 128 // block[1]), bool), *block)
    reason = _mosaic.backward_unsupported_reason(
        q, q, v, spec=spec, softcap=None, has_alibi=False, has_segments=False, block_mask=block_mask
    )
    assert reason is not None and match in reason
    with pytest.raises(NotImplementedError, match=match):
        _mosaic.mha_backward(
            q,
            q,
            v,
            q,
            jnp.zeros((1, 2, 128)),
            q,
            spec=spec,
            softmax_scale=0.1,
            block_mask=block_mask,
        )


def test_config_validation_and_heuristic():
    with pytest.raises(ValueError, match="block_q_dkv"):
        BackwardConfig(block_q_dkv=48)
    with pytest.raises(ValueError, match="compute_wgs"):
        BackwardConfig(compute_wgs=3)
    with pytest.raises(ValueError, match="stages"):
        BackwardConfig(stages=0)
    with pytest.raises(ValueError, match="overlap"):
        BackwardConfig(overlap=True, stages=1)
    with pytest.raises(ValueError, match="dq must be one of"):
        BackwardConfig(dq="fused")
    with pytest.raises(ValueError, match="tile_order must be one of"):
        BackwardConfig(tile_order="heads")
    with pytest.raises(ValueError, match="neither overlap nor defer_release"):
        BackwardConfig(dq="atomic", defer_release=True)
    with pytest.raises(ValueError, match="q_rows does not support overlap"):
        BackwardConfig(q_rows=True, overlap=True)
    with pytest.raises(ValueError, match="producer_registers must be a multiple of 8"):
        BackwardConfig(producer_registers=20)
    with pytest.raises(ValueError, match="need 66560 > 65536"):
        BackwardConfig(producer_registers=24, consumer_registers=248)
    # (consumer, producer): FA3's 24/240 split where the dK/dV kernel also computes dQ
    assert BackwardConfig().registers == (232, 40)
    assert BackwardConfig(dq="atomic").registers == (240, 24)
    assert BackwardConfig(compute_wgs=1).registers == (240, 40)
    assert BackwardConfig(dq="atomic", producer_registers=40).registers == (232, 40)
    # 128-row q steps for unmasked head dim 64 on the two kernels only
    assert default_backward_config(64, kind="dense").block_q_dkv == 128
    assert default_backward_config(64, kind="masked").block_q_dkv == 64
    assert default_backward_config(128, kind="dense").block_q_dkv == 64
    fused = default_backward_config(64, kind="dense", seq_k=4096, deterministic=False)
    assert (fused.dq, fused.block_q_dkv, fused.stages) == ("atomic", 64, 3)
    assert default_backward_config(128).dq == "kernel"
    assert default_backward_config(128).compute_wgs == 2
    bm = BlockMask(jnp.ones((1, 1, 2, 2), bool), 64, 64)
    assert default_backward_config(128, bm).compute_wgs == 1
    with pytest.raises(ValueError, match="kind must be one of"):
        default_backward_config(128, kind="window")


@pytest.mark.parametrize("head_dim,seq_k,kind,block,deterministic,dq", [
    (128, 4096, "dense", 0, False, "atomic"),
    (64, 16384, "masked", 0, False, "atomic"),  # causal D64: fused wins
    (128, 4096, "dense", 0, True, "kernel"),  # asked for determinism
    (128, 2048, "dense", 0, False, "atomic"),  # D128 dense from 2k (q rows, static wgs)
    (128, 1024, "dense", 0, False, "kernel"),  # short: the two kernels
    (64, 2048, "dense", 0, False, "kernel"),
    (128, 8192, "causal", 0, False, "atomic"),  # D128 plain causal from 8k
    (128, 4096, "causal", 0, False, "kernel"),
    (128, 16384, "masked", 0, False, "kernel"),  # D128 window/documents: the two kernels
    (64, 4096, "causal", 0, False, "atomic"),
    (64, 2048, "causal", 0, False, "atomic"),  # plain causal D64 from 2k
    (64, 1024, "causal", 0, False, "kernel"),
    (64, 4096, "masked", 0, False, "atomic"),  # D64 window: fused wins
    (64, 4096, "alibi", 0, False, "atomic"),  # D64 ALiBi: fused wins
    (128, 4096, "alibi", 0, False, "kernel"),
    (128, 4096, "masked", 0, False, "kernel"),  # D128 causal/window/documents: fused loses
    (64, 2048, "masked", 0, False, "kernel"),
    (64, 4096, "masked", 128, False, "atomic"),  # block mask + causal at D64: as masked D64
    (128, 4096, "block_sparse", 128, False, "atomic"),  # tile-aligned blocks: no element masks
    (128, 4096, "block_sparse", 128, True, "kernel"),
    (128, 4096, "block_sparse", 64, False, "kernel"),  # 64-row blocks: one consumer, two kernels
    (128, 4096, "masked", 128, False, "kernel"),  # block mask + causal at D128
    (128, None, "dense", 0, False, "kernel"),
])
def test_default_backward_config_fuses_dq_where_measured(head_dim, seq_k, kind, block,
                                                          deterministic, dq):
    bm = BlockMask(jnp.ones((1, 1, 2, 2), bool), block, block) if block else None
    cfg = default_backward_config(head_dim, bm, seq_k=seq_k, kind=kind,
                                  deterministic=deterministic)
    assert cfg.dq == dq
    fused_d128 = dq == "atomic" and head_dim == 128 and kind in ("dense", "causal")
    # Partial tiles get their own loop on ALiBi walks of the two kernels and on the fused
    # path's causal head dim 128 walks.
    assert cfg.split_partial == ((kind == "alibi" and dq == "kernel")
                                 or (fused_d128 and kind == "causal"))
    # q rows as the score tiles' M: fused D128 dense/causal; per-warpgroup consumer bodies:
    # also on fused D128 block-sparse walks.
    assert cfg.q_rows == fused_d128
    fused_sparse_d128 = dq == "atomic" and head_dim == 128 and kind == "block_sparse"
    assert cfg.static_warpgroups == (fused_d128 or fused_sparse_d128)


@pytest.mark.parametrize("spec_kw,extras,kind", [
    (dict(), {}, "dense"),
    (dict(causal=True), {}, "causal"),
    (dict(causal=True, window_left=64), {}, "masked"),
    (dict(window_left=64, window_right=0), {}, "masked"),
    (dict(causal=True), dict(softcap=5.0), "masked"),
    (dict(), dict(has_alibi=True), "alibi"),
    (dict(causal=True), dict(has_alibi=True, has_segments=True), "alibi"),
    (dict(causal=True), dict(has_segments=True), "masked"),
    (dict(causal=True), dict(block_mask=BlockMask(jnp.ones((1, 1, 2, 2), bool), 128, 128)),
     "masked"),
])
def test_backward_kind(spec_kw, extras, kind):
    args = dict(softcap=None, has_alibi=False, has_segments=False, block_mask=None) | extras
    assert mosaic_backward._kind(MaskSpec(256, 256, **spec_kw), **args) == kind


def test_backward_config_memory():
    staged = BackwardConfig().smem_bytes(128, 2)
    in_registers = BackwardConfig(register_operands=True).smem_bytes(128, 2)
    assert in_registers["dkdv"] < staged["dkdv"] and in_registers["dq"] < staged["dq"]
    fused = BackwardConfig(dq="atomic", register_operands=True).smem_bytes(128, 2)["dkdv"]
    assert in_registers["dkdv"] < fused
    for sizes in (staged, BackwardConfig(dq="atomic").smem_bytes(128, 2)):
        assert 0 < sizes["dkdv"] <= 227 * 1024 and 0 < sizes["dq"] <= 227 * 1024
    # Measured on the H100: the fused D128 kernel with q rows compiles without segment ids
    # and exceeds Mosaic's SMEM with them (1 KiB of segment-id buffers more).
    q_rows = BackwardConfig(dq="atomic", register_operands=True, q_rows=True)
    assert q_rows.smem_bytes(128, 2)["dkdv"] <= SMEM_LIMIT_BYTES
    assert q_rows.smem_bytes(128, 2, segments=True)["dkdv"] > SMEM_LIMIT_BYTES


def test_backward_module_exports():
    assert _mosaic.mha_backward is mosaic_backward.mha_backward
    assert "mha_backward" in _mosaic.__all__ and "backward_unsupported_reason" in _mosaic.__all__


# ---------------------------------------------------------------- GPU (pytest -m gpu)

GPU_GRAD_CASES = [
    Case(
        dtype=BF16,
        batch=2,
        seq_q=2048,
        seq_k=2048,
        heads_q=8,
        heads_kv=8,
        head_dim=128,
        causal=True,
    ),
    Case(dtype=F16, batch=1, seq_q=4096, seq_k=4096, heads_q=8, heads_kv=2, head_dim=64),
    Case(
        dtype=F16,
        batch=2,
        seq_q=1000,
        seq_k=1500,
        heads_q=4,
        heads_kv=4,
        head_dim=128,
        causal=True,
        window=(256, 0),
        alibi="batch",
        softcap=10.0,
    ),
    Case(
        dtype=BF16,
        batch=2,
        seq_q=2048,
        seq_k=2048,
        heads_q=4,
        heads_kv=2,
        head_dim=64,
        segments="shared",
        causal=True,
        block_sparse=(128, 128, 0.6),
    ),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_GRAD_CASES, ids=[c.id for c in GPU_GRAD_CASES])
def test_gpu_grad_realistic(case):
    """Compiled kernels at realistic sizes vs the naive gradients (f32 on the GPU)."""
    seed = zlib.crc32(case.id.encode())
    q, k, v, kwargs, naive = make_inputs(case, seed)
    dt = case.dtype
    ql, kl, vl = (jnp.asarray(x, dt) for x in (q, k, v))
    dl = jnp.asarray(np.random.default_rng(seed).standard_normal(ql.shape), dt)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * dl.astype(jnp.float32))

    spy = _CountingBackward(mosaic_partition.mha_backward)
    mosaic_partition.mha_backward, original = spy, mosaic_partition.mha_backward
    try:
        grads = jax.jit(
            jax.grad(
                loss(lambda q, k, v: fa3_jax.attention(q, k, v, implementation="mosaic", **kwargs)),
                argnums=(0, 1, 2),
            )
        )(ql, kl, vl)
    finally:
        mosaic_partition.mha_backward = original
    assert spy.calls == 1
    low = jax.grad(
        loss(lambda q, k, v: naive_attention(q, k, v, xp=jnp, **naive)[0]), argnums=(0, 1, 2)
    )(ql, kl, vl)
    f32 = [x.astype(jnp.float32) for x in (ql, kl, vl)]
    truth = jax.grad(
        loss(lambda q, k, v: naive_attention(q, k, v, xp=jnp, **naive)[0]), argnums=(0, 1, 2)
    )(*f32)
    for name, g, t, lo in zip("qkv", grads, truth, low, strict=True):
        assert_close(g, t, lo, GRAD_ATOL[dt], f"d{name}")


@pytest.mark.gpu
def test_gpu_flax_model_grad_matches_reference():
    sizes = dict(batch=2, seq=2048, features=512, heads=8)
    _assert_same_grads(
        _flax_param_grads("mosaic", **sizes), _flax_param_grads("reference", **sizes), 2e-2
    )


@pytest.mark.gpu
def test_gpu_deterministic():
    """deterministic=True where the heuristic would otherwise add dQ with atomics (causal
    D64, 4k keys): two runs bit-identical."""
    case = dataclasses.replace(GPU_GRAD_CASES[1], causal=True)
    args, kwargs, _ = _grads_direct(case, 11)
    run = jax.jit(lambda *a: _mosaic.mha_backward(*a, **kwargs, deterministic=True))
    first, second = run(*args), run(*args)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _assert_equal_up_to_summation_order(got, want):
    """(dq, dk, dv) of the fused dQ against the two-kernel path: fp32 adds in another order."""
    for name, a, e in zip("qkv", got, want, strict=True):
        a, e = np.asarray(a, np.float32), np.asarray(e, np.float32)
        err = np.linalg.norm(a - e) / np.linalg.norm(e)
        assert err < 5e-3, f"d{name}: relative difference {err:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize(
    "head_dim,masks",
    [
        (64, {}),
        (128, {}),
        (64, dict(window=(700, 0), alibi="head", segments="pair", softcap=20.0)),
    ],
    ids=["d64", "d128", "d64-window-alibi-segments-softcap"],
)
def test_gpu_atomic_dq_matches_the_two_kernel_path(head_dim, masks):
    """dq='atomic' (TMA reduce-adds: compiled only on the GPU) against the default
    two-kernel path: equal up to rounding (fp32 summation order)."""
    case = Case(
        dtype=BF16,
        batch=2,
        seq_q=1500,
        seq_k=1500,
        heads_q=8,
        heads_kv=2,
        head_dim=head_dim,
        causal=True,
        **masks,
    )
    args, kwargs, _ = _grads_direct(case, 19)
    cfg = BackwardConfig(register_operands=True, dq="atomic")
    atomic = jax.jit(lambda *a: _mosaic.mha_backward(*a, **kwargs, config=cfg))(*args)
    exact = jax.jit(lambda *a: _mosaic.mha_backward(*a, **kwargs, deterministic=True))(*args)
    _assert_equal_up_to_summation_order(atomic, exact)


@pytest.mark.gpu
@pytest.mark.parametrize("kind,head_dim,seq", [("dense", 128, 4096), ("block_sparse", 128, 4096),
                                              ("masked", 64, 4096), ("causal", 64, 2048)])
def test_gpu_default_fused_dq_matches_deterministic(kind, head_dim, seq):
    """The default for 4k unmasked or block-sparse keys (and causal ones at head dim 64, with
    three ring slots; plain causal from 2k) adds dQ with fp32 atomics: equal to the
    deterministic two-kernel path up to the summation order."""
    case = Case(dtype=BF16, batch=1, seq_q=seq, seq_k=seq, heads_q=4, heads_kv=2,
                head_dim=head_dim, causal=kind in ("masked", "causal"),
                block_sparse=(128, 128, 0.5) if kind == "block_sparse" else None)
    args, kwargs, _ = _grads_direct(case, 31)
    chosen = mosaic_backward._resolve_config(None, head_dim, kwargs["block_mask"], seq_k=seq,
                                             kind=kind, deterministic=False)
    assert (chosen.dq, chosen.stages) == ("atomic", 3 if head_dim == 64 else 2)
    assert chosen.static_warpgroups == (head_dim == 128)
    fast = jax.jit(lambda *a: _mosaic.mha_backward(*a, **kwargs))(*args)
    exact = jax.jit(lambda *a: _mosaic.mha_backward(*a, **kwargs, deterministic=True))(*args)
    _assert_equal_up_to_summation_order(fast, exact)


def test_unsupported_backward_falls_back_to_the_reference(monkeypatch):
    """Head dim 96: Mosaic forward, reference backward; gradients still right."""
    spy = _CountingBackward(mosaic_partition.mha_backward)
    monkeypatch.setattr(mosaic_partition, "mha_backward", spy)
    case = Case(
        dtype=F16, batch=1, heads_q=2, heads_kv=1, head_dim=96, seq_q=64, seq_k=64, causal=True
    )
    q, k, v, kwargs, naive = make_inputs(case, 11)
    q, k, v = (jnp.asarray(x, F16) for x in (q, k, v))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) ** 2)

    with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
        got = jax.grad(
            loss(lambda q, k, v: fa3_jax.attention(q, k, v, implementation="mosaic", **kwargs)),
            (0, 1, 2),
        )(q, k, v)
    want = jax.grad(
        loss(lambda q, k, v: fa3_jax.attention(q, k, v, implementation="reference", **kwargs)),
        (0, 1, 2),
    )(q, k, v)
    assert spy.calls == 0
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(
            np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=2e-2, atol=2e-2
        )
