"""Entry points of the Mosaic GPU attention backward (called by ``fa3_jax.api``).

``mha_backward`` pads ragged sequence tails to the kernels' tiles, computes
the per-row residuals, builds the per-tile metadata and runs the dK/dV kernel
(kv tile owns, q tiles walked; GQA sums in fp32 registers) and the dQ kernel
(q tile owns, kv tiles walked). Neither uses atomics, so gradients are
bit-identical run to run. ``BackwardConfig(dq='atomic')`` instead computes dQ
in the dK/dV kernel and adds it with fp32 reduce-adds (FA3's five GEMMs; the
order of the adds, hence the rounding, varies run to run): the heuristic's
choice for long unmasked inputs unless ``deterministic=True``.

Not differentiated: ALiBi slopes, masks and softcap are constants of the
backward (their cotangents are not computed).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from fa3_jax._mosaic.backward_dkdv import dkdv_kernel_call
from fa3_jax._mosaic.backward_dq import dq_kernel_call
from fa3_jax._mosaic.backward_preprocess import backward_residuals, pad_seq
from fa3_jax._mosaic.backward_scores import ScoreParams
from fa3_jax._platform import interpret_mode_active
from fa3_jax.config import (
    SMEM_LIMIT_BYTES,
    BackwardConfig,
    default_backward_config,
)
from fa3_jax.masks import BlockMask, MaskSpec, tile_metadata

__all__ = ["backward_unsupported_reason", "mha_backward"]

_HEAD_DIMS = (64, 128)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _seq_multiples(cfg: BackwardConfig) -> tuple[int, int]:
    """(q, kv) lengths every kernel that runs tiles exactly."""
    if cfg.dq != "kernel":
        return cfg.block_q_dkv, cfg.tile_kv_dkv
    return math.lcm(cfg.block_q_dkv, cfg.tile_q_dq), math.lcm(cfg.tile_kv_dkv, cfg.block_kv_dq)


def _kind(spec: MaskSpec, softcap, has_alibi: bool, has_segments: bool, block_mask) -> str:
    """The heuristic's input kind: ``'dense'`` (no mask, ALiBi or softcap), ``'block_sparse'``
    (a block mask and nothing else), ``'causal'`` (a causal mask and nothing else), ``'alibi'``
    (ALiBi, with or without masks) or ``'masked'``."""
    if has_alibi:
        return "alibi"
    lo, _ = spec.diagonal_bounds
    if spec.causal and math.isinf(lo) and not has_segments and softcap is None:
        return "causal" if block_mask is None else "masked"
    extras = softcap is not None or has_segments or spec.is_positional
    if extras:
        return "masked"
    return "dense" if block_mask is None else "block_sparse"


def _resolve_config(
    config, head_dim, block_mask, *, has_segments=False, itemsize=2, **heuristic
) -> BackwardConfig:
    """The config to run: the heuristic's unless given (``heuristic``: its ``seq_k``, ``kind``,
    ``deterministic``), adapted to interpret mode."""
    interpret = interpret_mode_active()
    cfg = config or default_backward_config(head_dim, block_mask, interpret=interpret, **heuristic)
    if (
        config is None
        and interpret
        and cfg.dq == "kernel"
        and cfg.block_kv_dq > 64
        and cfg.smem_bytes(head_dim, itemsize, segments=has_segments)["dq"] > SMEM_LIMIT_BYTES
    ):
        # The staged dS tile (interpret mode) next to the K/V ring and segment ids (head dim
        # 128): halve the dQ kernel's kv steps.
        cfg = dataclasses.replace(cfg, block_kv_dq=cfg.block_kv_dq // 2)
    if interpret and cfg.register_operands:
        # Interpret mode reads wgmma operand A only from SMEM.
        cfg = dataclasses.replace(cfg, register_operands=False)
    if interpret and cfg.dq == "atomic":
        # Interpret mode has no TMA reductions; 'partials' runs the same GEMMs.
        cfg = dataclasses.replace(cfg, dq="partials")
    return cfg


def backward_unsupported_reason(
    q,
    k,
    v,
    *,
    spec: MaskSpec,
    softcap,
    has_alibi: bool,
    has_segments: bool,
    block_mask: BlockMask | None,
    config: BackwardConfig | None = None,
    deterministic: bool = False,
) -> str | None:
    """Why the Mosaic backward cannot serve these inputs (None when it can)."""
    if q.dtype not in (jnp.float16, jnp.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return "mosaic kernels take fp16/bf16"
    head_dim = q.shape[-1]
    if v.shape[-1] != head_dim:
        return f"mosaic backward needs head_dim_v == head_dim, got {v.shape[-1]} != {head_dim}"
    if head_dim not in _HEAD_DIMS:
        return (
            f"mosaic backward supports head_dim {_HEAD_DIMS}, got {head_dim} (256 does not fit: "
            "fp32 dK+dV accumulators of a 64-row tile need 256 registers per thread)"
        )
    kind = _kind(spec, softcap, has_alibi, has_segments, block_mask)
    cfg = _resolve_config(
        config,
        head_dim,
        block_mask,
        has_segments=has_segments,
        itemsize=jnp.dtype(q.dtype).itemsize,
        seq_k=k.shape[1],
        kind=kind,
        deterministic=deterministic,
    )
    need = cfg.smem_bytes(head_dim, jnp.dtype(q.dtype).itemsize, segments=has_segments)
    for name, size in need.items():
        if (name == "dkdv" or cfg.dq == "kernel") and size > SMEM_LIMIT_BYTES:
            return f"mosaic backward {name} kernel needs {size} B of SMEM > {SMEM_LIMIT_BYTES}"
    if block_mask is not None:
        tq, tk = _seq_multiples(cfg)
        if block_mask.block_q % tq or block_mask.block_k % tk:
            return (
                f"mosaic backward needs block masks aligned to its tiles: block_q % {tq} == 0 "
                f"and block_k % {tk} == 0, got ({block_mask.block_q}, {block_mask.block_k})"
            )
    return None


def mha_backward(
    q,
    k,
    v,
    out,
    lse_BHS,
    dout,
    *,
    spec: MaskSpec,
    softmax_scale: float,
    dlse_BHS=None,
    softcap: float | None = None,
    alibi_slopes_BH=None,
    segment_ids=None,
    block_mask: BlockMask | None = None,
    config: BackwardConfig | None = None,
    deterministic: bool = False,
):
    """Gradients of attention w.r.t. q, k, v.

    Args:
      q, out, dout: ``[B, Sq, Hq, D]`` fp16/bf16.
      k, v: ``[B, Sk, Hkv, D]``, ``Hq % Hkv == 0``.
      lse_BHS: f32 ``[B, Hq, Sq]`` natural-log softmax normaliser from the forward
        (``-inf`` for fully masked rows, which get zero gradients).
      dlse_BHS: optional f32 ``[B, Hq, Sq]`` cotangent of the returned lse.
      spec: positional masks (``spec.seq_q == Sq``, ``spec.seq_k == Sk``).
      softmax_scale, softcap, alibi_slopes_BH (f32 ``[B or 1, Hq]``),
      segment_ids (int32 ``(q [B, Sq], kv [B, Sk])``), block_mask: as in the forward.
      config: tiling and dQ mode (default: :func:`default_backward_config`);
        under GPU interpret mode P/dS are always staged through SMEM and
        ``dq='atomic'`` runs as ``'partials'``.
      deterministic: without ``config``, keep dQ in its own kernel (bit-identical
        gradients run to run) where the heuristic would add it with fp32 atomics.

    Returns:
      ``(dq, dk, dv)`` shaped and typed like ``q, k, v``.
    """
    kind = _kind(spec, softcap, alibi_slopes_BH is not None, segment_ids is not None, block_mask)
    cfg = _resolve_config(
        config,
        q.shape[-1],
        block_mask,
        has_segments=segment_ids is not None,
        itemsize=jnp.dtype(q.dtype).itemsize,
        seq_k=k.shape[1],
        kind=kind,
        deterministic=deterministic,
    )
    reason = backward_unsupported_reason(
        q,
        k,
        v,
        spec=spec,
        softcap=softcap,
        has_alibi=alibi_slopes_BH is not None,
        has_segments=segment_ids is not None,
        block_mask=block_mask,
        config=cfg,
    )
    if reason is not None:
        raise NotImplementedError(reason)
    batch, seq_q, heads_q, head_dim = q.shape
    seq_k = k.shape[1]
    if (spec.seq_q, spec.seq_k) != (seq_q, seq_k):
        raise ValueError(f"spec lengths {(spec.seq_q, spec.seq_k)} != inputs {(seq_q, seq_k)}")
    tq, tk = _seq_multiples(cfg)
    seq_q_pad, seq_k_pad = _round_up(seq_q, tq), _round_up(seq_k, tk)

    lse2, delta = backward_residuals(out, dout, lse_BHS, dlse_BHS, seq_q_pad)
    q_p, do_p = pad_seq(q, 1, seq_q_pad), pad_seq(dout, 1, seq_q_pad)
    k_p, v_p = pad_seq(k, 1, seq_k_pad), pad_seq(v, 1, seq_k_pad)
    segments = None
    if segment_ids is not None:
        q_seg, kv_seg = segment_ids
        segments = (
            pad_seq(q_seg.astype(jnp.int32), 1, seq_q_pad, -1),
            pad_seq(kv_seg.astype(jnp.int32), 1, seq_k_pad, -2),
        )
    slopes = None if alibi_slopes_BH is None else jnp.asarray(alibi_slopes_BH, jnp.float32)
    params = ScoreParams(
        spec,
        float(softmax_scale),
        None if softcap is None else float(softcap),
        slopes is not None,
        segments is not None,
    )

    def metadata(tile_q, tile_k, transpose, partial_first=False):
        return tile_metadata(
            spec,
            tile_q,
            tile_k,
            segment_ids=segment_ids,
            block_mask=block_mask,
            transpose=transpose,
            partial_first=partial_first,
        )

    inputs = (q_p, k_p, v_p, do_p, lse2, delta)
    extras = dict(params=params, cfg=cfg, slopes=slopes, segments=segments)
    meta_t = metadata(cfg.block_q_dkv, cfg.tile_kv_dkv, True, cfg.split_partial)
    dk, dv, dq_f32 = dkdv_kernel_call(*inputs, meta_t, **extras)
    if dq_f32 is not None:
        dq = (dq_f32[:, :seq_q] * params.softmax_scale).astype(q.dtype)
    else:
        meta = metadata(cfg.tile_q_dq, cfg.block_kv_dq, False, cfg.split_partial)
        dq = dq_kernel_call(*inputs, meta, **extras)[:, :seq_q]
    return dq, dk[:, :seq_k], dv[:, :seq_k]
