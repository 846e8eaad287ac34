"""Entry points of the forward kernel: what it supports, and the call itself."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from fa3_jax import _platform
from fa3_jax._mosaic.forward import ForwardStatic, forward_kernel_call
from fa3_jax.config import ForwardConfig, check_forward_fits, forward_config
from fa3_jax.masks import BlockMask, MaskSpec, tile_metadata

__all__ = [
    "default_forward_config",
    "forward_unsupported_reason",
    "mha_forward",
    "SUPPORTED_HEAD_DIMS",
]

SUPPORTED_HEAD_DIMS = (64, 96, 128, 192, 256)
#: Head dims of the FP8 (e4m3) forward, FlashAttention-3's.
FP8_HEAD_DIMS = (64, 128, 256)


def _block_kv_for(config: ForwardConfig, block_k: int | None) -> ForwardConfig:
    """Shrinks block_kv so a block mask's key blocks (``block_k`` keys, None: no block
    mask) cover whole kv tiles."""
    if block_k is not None and block_k % config.block_kv:
        return dataclasses.replace(config, block_kv=64)
    return config


def default_forward_config(
    head_dim: int,
    dtype,
    spec: MaskSpec,
    *,
    has_segments: bool,
    block_k: int | None,
    interpret: bool = False,
) -> ForwardConfig:
    """The config :func:`mha_forward` runs when given none: the tuned or heuristic one for
    these masks (``block_k``: a block mask's key block, None without one), with 64-key tiles
    where the block mask's key blocks need them."""
    config = forward_config(
        head_dim,
        dtype,
        causal=spec.causal,
        window=spec.window_left is not None or spec.window_right is not None,
        masked=block_k is not None,
        segments=has_segments,
        seq_k=spec.seq_k,
        interpret=interpret,
    )
    return _block_kv_for(config, block_k)


def forward_unsupported_reason(
    q, k, v, *, spec: MaskSpec, softcap, has_alibi, has_segments, block_mask
) -> str | None:
    """Why the Mosaic forward kernel cannot serve these inputs, or None."""
    del spec, softcap, has_alibi, has_segments
    head_dim = q.shape[-1]
    if q.dtype == jnp.float8_e4m3fn:
        if head_dim not in FP8_HEAD_DIMS:
            return f"mosaic FP8 forward supports head_dim in {FP8_HEAD_DIMS}, got {head_dim}"
    elif q.dtype not in (jnp.float16, jnp.bfloat16):
        return f"mosaic kernels take fp16/bf16 (forward also float8_e4m3fn), got {q.dtype}"
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return f"mosaic forward supports head_dim in {SUPPORTED_HEAD_DIMS}, got {head_dim}"
    if v.shape[-1] != head_dim:
        return f"mosaic forward needs v's head_dim ({v.shape[-1]}) equal to q's ({head_dim})"
    config = _block_kv_for(
        forward_config(head_dim, q.dtype), None if block_mask is None else block_mask.block_k
    )
    if block_mask is not None and (block_mask.block_q % 64 or block_mask.block_k % 64):
        return (
            "mosaic forward needs block masks with block_q and block_k multiples of 64, got "
            f"({block_mask.block_q}, {block_mask.block_k})"
        )
    try:
        check_forward_fits(config, head_dim, q.dtype.itemsize)
    except ValueError as err:
        return str(err)
    return None


def mha_forward(
    q_BSHD,
    k_BSHD,
    v_BSHD,
    *,
    spec: MaskSpec,
    softmax_scale: float,
    softcap: float | None,
    alibi_slopes_BH,
    segment_ids,
    block_mask: BlockMask | None,
    config: ForwardConfig | None = None,
    descale_BG=None,
    with_lse: bool = True,
):
    """Mosaic GPU forward: ``(out_BSHD in q.dtype (bf16 for FP8), lse_BHS float32, natural
    log)``; lse is None with ``with_lse=False`` (the kernel then neither computes nor stores it).

    Args:
      q_BSHD: ``[batch, seq_q, heads_q, head_dim]`` fp16/bf16, or float8_e4m3fn.
      k_BSHD, v_BSHD: ``[batch, seq_k, heads_kv, head_dim]``, q's dtype.
      spec: positional masks; softmax_scale, softcap: logit transform.
      alibi_slopes_BH: float32 ``[batch or 1, heads_q]`` (or ``[heads_q]``) or None.
      segment_ids: ``(q_BS, kv_BS)`` int32 or None.
      block_mask: :class:`BlockMask` with block sizes multiples of 64, or None.
      config: kernel config; None picks the tuned/heuristic one.
      descale_BG: FP8 only: ``(descale_q, descale_k, descale_v)``, float32 ``[batch,
        heads_kv]`` each (the logits are ``q . k * descale_q * descale_k``, the output
        ``P V * descale_v``), or None (all 1).
    """
    fp8 = q_BSHD.dtype == jnp.float8_e4m3fn
    if descale_BG is not None and not fp8:
        raise ValueError(f"descale_BG is for float8_e4m3fn inputs, got {q_BSHD.dtype}")
    head_dim = q_BSHD.shape[-1]
    interpret = _platform.interpret_mode_active()
    if config is None:
        config = default_forward_config(
            head_dim,
            q_BSHD.dtype,
            spec,
            has_segments=segment_ids is not None,
            block_k=None if block_mask is None else block_mask.block_k,
            interpret=interpret,
        )
    elif interpret and not config.p_in_smem:
        raise ValueError("GPU interpret mode needs a ForwardConfig with p_in_smem=True")
    slopes = None
    if alibi_slopes_BH is not None:
        slopes = jnp.asarray(alibi_slopes_BH, jnp.float32)
        if slopes.ndim == 1:
            slopes = slopes[None]
    block_mask_int, element_block_mask = None, None
    if block_mask is not None and block_mask.block_q % config.tile_q:
        # Tiles then straddle q blocks: each warpgroup checks its own block's bit.
        mask = block_mask.mask if block_mask.mask.ndim == 4 else block_mask.mask[None]
        block_mask_int = mask.astype(jnp.int32)
        element_block_mask = (block_mask.block_q, block_mask.block_k)
    if segment_ids is not None and not isinstance(segment_ids, (tuple, list)):
        segment_ids = (segment_ids, segment_ids)
    meta = tile_metadata(
        spec, config.tile_q, config.block_kv, segment_ids=segment_ids, block_mask=block_mask
    )
    static = ForwardStatic(
        spec=spec,
        softmax_scale=float(softmax_scale),
        softcap=None if softcap is None else float(softcap),
        has_alibi=slopes is not None,
        alibi_per_batch=slopes is not None and slopes.shape[0] > 1,
        has_segments=segment_ids is not None,
        config=config,
        element_block_mask=element_block_mask,
        interpret=interpret,
        fp8=fp8,
        has_descale=descale_BG is not None,
        with_lse=with_lse,
    )
    return forward_kernel_call(
        static,
        q_BSHD,
        k_BSHD,
        v_BSHD,
        meta,
        segment_ids=segment_ids,
        alibi_slopes_BH=slopes,
        block_mask_int=block_mask_int,
        descale_BG=descale_BG,
    )
