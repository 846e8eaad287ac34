"""``fa3_jax.attention``: validation, defaults, implementation choice, custom_vjp."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from fa3_jax import _platform
from fa3_jax.masks import BlockMask, MaskSpec
from fa3_jax.reference import attention_reference

__all__ = ["attention", "IMPLEMENTATIONS", "RESIDUAL_NAMES"]

# `jax.ad_checkpoint.checkpoint_name`s of the forward outputs the backward needs (out, lse).
RESIDUAL_NAMES = ("fa3_jax.out", "fa3_jax.lse")

IMPLEMENTATIONS = ("mosaic", "reference")
_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float8_e4m3fn)
_FP8 = jnp.float8_e4m3fn


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything about a call that is static under jit."""

    spec: MaskSpec
    softmax_scale: float
    softcap: float | None
    implementation: str
    deterministic: bool = False
    #: The caller wants the LSE; else the primal (not differentiated) Mosaic call skips it.
    return_lse: bool = True


def attention(
    q,
    k,
    v,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window_size: tuple[int | None, int | None] = (None, None),
    alibi_slopes=None,
    softcap: float | None = None,
    segment_ids=None,
    block_mask: BlockMask | None = None,
    return_lse: bool = False,
    implementation: str | None = None,
    deterministic: bool = False,
    descale_q=None,
    descale_k=None,
    descale_v=None,
):
    """Scaled dot-product attention (FlashAttention conventions).

    Args:
      q: ``[batch, seq_q, heads_q, head_dim]``, float16, bfloat16, float32 or
        float8_e4m3fn (FP8: forward only, output in bfloat16; see ``descale_q``).
      k: ``[batch, seq_k, heads_kv, head_dim]``, same dtype; ``heads_q % heads_kv
        == 0`` (GQA/MQA: query head ``h`` uses kv head ``h // (heads_q // heads_kv)``).
      v: ``[batch, seq_k, heads_kv, head_dim_v]``, same dtype.
      causal: query ``i`` sees keys ``j <= i + seq_k - seq_q`` (bottom-right
        aligned when ``seq_q != seq_k``).
      softmax_scale: multiplies ``q . k``; defaults to ``1 / sqrt(head_dim)``.
      window_size: ``(left, right)``: query ``i`` sees keys in
        ``[i + seq_k - seq_q - left, i + seq_k - seq_q + right]``; ``None`` is
        unlimited on that side. Combines with ``causal``.
      alibi_slopes: float32 ``[heads_q]`` or ``[batch, heads_q]``; adds
        ``-slope * |i + seq_k - seq_q - j|`` to the scaled (and soft-capped) logits.
      softcap: logits become ``softcap * tanh(logits / softcap)``; ``None`` is off.
        Order: scale -> softcap -> + ALiBi -> masks.
      segment_ids: int ``[batch, seq]`` (needs ``seq_q == seq_k``) or
        ``(q_segment_ids [batch, seq_q], kv_segment_ids [batch, seq_k])``: a query
        attends only to keys with the same id (packed documents).
      block_mask: :class:`fa3_jax.BlockMask`; False blocks are skipped. Combines
        (AND) with every other mask.
      return_lse: also return the natural-log log-sum-exp ``[batch, heads_q,
        seq_q]`` in float32. Without it, a call that is not differentiated (inference)
        runs the Mosaic forward without computing or storing the LSE.
      implementation: ``None`` (fastest available: ``'mosaic'`` on Hopper GPUs
        when it serves the inputs, else ``'reference'``), ``'mosaic'`` (Pallas
        Mosaic GPU kernels; also runs under GPU interpret mode) or ``'reference'``
        (pure JAX).
      deterministic: the Mosaic backward gives bit-identical gradients run to run.
        False (the default, as in FlashAttention): from 4096 keys, inputs (block masks of
        128-multiple blocks; at head dim 128 only unmasked, block-sparse and plain causal
        ones, the last from 8192 keys; plain causal head dim 64 and unmasked head dim 128
        from 2048) get dQ added by the dK/dV kernel with fp32 atomics, 1-21% faster on an
        H100 (``fa3_jax.config.default_backward_config``); their
        order varies, so gradients differ run to run at fp32 rounding. The forward is
        always deterministic.
      descale_q, descale_k, descale_v: float8_e4m3fn inputs only (FlashAttention-3's
        FP8 API): float32 ``[batch, heads_kv]`` dequantization scales, None for 1. The
        inputs stand for ``q * descale_q`` etc. (a query head takes its kv head's scale):
        the logits are ``softmax_scale * (q . k) * descale_q * descale_k`` and the output
        ``P V * descale_v``.

    Returns:
      ``out [batch, seq_q, heads_q, head_dim_v]`` in q's dtype (bfloat16 for FP8),
      or ``(out, lse)`` with ``return_lse``. A query with no visible key gets output
      0 and lse ``-inf``. Differentiable in ``q``, ``k``, ``v`` (not in the slopes,
      masks or softcap; FP8 inputs are not differentiable).

    Sharding: under ``jit`` the Mosaic kernels run on each device's shard of the
    batch and heads of q (heads only when both head counts divide the head
    sharding); sharded sequence or head_dim axes are gathered first.
    """
    q, k, v = (_as_array(x, name) for x, name in ((q, "q"), (k, "k"), (v, "v")))
    _check_qkv(q, k, v)
    batch, seq_q, heads_q, head_dim = q.shape
    seq_k = k.shape[1]
    spec = MaskSpec(seq_q, seq_k, bool(causal), *_check_window(window_size))
    scale = _check_positive("softmax_scale", softmax_scale, default=1.0 / math.sqrt(head_dim))
    softcap = _check_positive("softcap", softcap, default=None)
    slopes = _check_alibi(alibi_slopes, batch, heads_q)
    segments = _check_segments(segment_ids, batch, seq_q, seq_k)
    descale = _check_descale((descale_q, descale_k, descale_v), q.dtype, batch, k.shape[2])
    if block_mask is not None:
        if not isinstance(block_mask, BlockMask):
            raise TypeError(
                f"block_mask must be a fa3_jax.BlockMask, got {type(block_mask).__name__}"
            )
        block_mask = block_mask.normalized(batch, heads_q, seq_q, seq_k)
    for name, flag in (("return_lse", return_lse), ("deterministic", deterministic)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    static = _Static(spec, scale, softcap, "reference", deterministic, return_lse)
    impl = _choose_implementation(implementation, static, q, k, v, slopes, segments, block_mask)
    static = dataclasses.replace(static, implementation=impl)
    out, lse = _attention(static, q, k, v, slopes, segments, block_mask, descale)
    return (out, lse) if return_lse else out


def _as_array(x, name):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    return jnp.asarray(x)


def _check_qkv(q, k, v):
    for x, name, layout in (
        (q, "q", "[batch, seq_q, heads_q, head_dim]"),
        (k, "k", "[batch, seq_k, heads_kv, head_dim]"),
        (v, "v", "[batch, seq_k, heads_kv, head_dim_v]"),
    ):
        if x.ndim != 4:
            raise ValueError(f"{name} must have rank 4 {layout}, got shape {x.shape}")
        if x.dtype not in _DTYPES:
            raise TypeError(
                f"{name} must be float16, bfloat16, float32 or float8_e4m3fn, got {x.dtype}"
            )
        if 0 in x.shape:
            raise ValueError(f"{name} has an empty dimension: shape {x.shape}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(
            f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    if not q.shape[0] == k.shape[0] == v.shape[0]:
        raise ValueError(f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[3] != q.shape[3]:
        raise ValueError(f"k's head_dim {k.shape[3]} must equal q's head_dim {q.shape[3]}")
    if v.shape[1] != k.shape[1]:
        raise ValueError(f"v's seq_k {v.shape[1]} must equal k's seq_k {k.shape[1]}")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"v's heads_kv {v.shape[2]} must equal k's heads_kv {k.shape[2]}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"heads_q ({q.shape[2]}) must be a multiple of heads_kv ({k.shape[2]})")


def _check_window(window_size):
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise ValueError(f"window_size must be a pair (left, right), got {window_size!r}")
    for side, value in zip(("left", "right"), window_size, strict=True):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"window_size {side} must be None or an int, got {value!r}")
        if value < 0:
            raise ValueError(
                f"window_size {side} must be >= 0 (use None for unlimited), got {value}"
            )
    return tuple(None if x is None else int(x) for x in window_size)


def _check_positive(name, value, *, default):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a Python float (static), got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)


def _check_alibi(slopes, batch, heads_q):
    if slopes is None:
        return None
    slopes = jnp.asarray(slopes)
    if slopes.shape not in ((heads_q,), (batch, heads_q)):
        raise ValueError(
            f"alibi_slopes must have shape [{heads_q}] or [{batch}, {heads_q}], got {slopes.shape}"
        )
    if not jnp.issubdtype(slopes.dtype, jnp.floating):
        raise TypeError(f"alibi_slopes must be floating point (float32), got {slopes.dtype}")
    return slopes.astype(jnp.float32).reshape(-1, heads_q)


def _check_segments(segment_ids, batch, seq_q, seq_k):
    if segment_ids is None:
        return None
    if isinstance(segment_ids, (tuple, list)):
        if len(segment_ids) != 2:
            raise ValueError("segment_ids must be one array or a pair (q_ids, kv_ids)")
        q_seg, kv_seg = (jnp.asarray(x) for x in segment_ids)
    else:
        if seq_q != seq_k:
            raise ValueError(
                f"a single segment_ids array needs seq_q == seq_k (got {seq_q} and {seq_k}); "
                "pass (q_segment_ids, kv_segment_ids)"
            )
        q_seg = kv_seg = jnp.asarray(segment_ids)
    for x, name, shape in ((q_seg, "q", (batch, seq_q)), (kv_seg, "kv", (batch, seq_k))):
        if x.shape != shape:
            raise ValueError(f"{name} segment_ids must have shape {list(shape)}, got {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"{name} segment_ids must be integers (int32), got {x.dtype}")
    return q_seg.astype(jnp.int32), kv_seg.astype(jnp.int32)


def _check_descale(descales, dtype, batch, heads_kv):
    """(descale_q, descale_k, descale_v) as float32 ``[batch, heads_kv]`` (missing ones 1),
    or None when all are None."""
    names = ("descale_q", "descale_k", "descale_v")
    if all(x is None for x in descales):
        return None
    if dtype != _FP8:
        given = next(n for n, x in zip(names, descales, strict=True) if x is not None)
        raise ValueError(f"{given} is for float8_e4m3fn inputs only, got {dtype} inputs")
    checked = []
    for name, x in zip(names, descales, strict=True):
        if x is None:
            checked.append(jnp.ones((batch, heads_kv), jnp.float32))
            continue
        x = jnp.asarray(x)
        if x.shape != (batch, heads_kv):
            raise ValueError(f"{name} must have shape [{batch}, {heads_kv}], got {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must be floating point (float32), got {x.dtype}")
        checked.append(x.astype(jnp.float32))
    return tuple(checked)


def _mosaic_reason(static, q, k, v, slopes, segments, block_mask) -> str | None:
    """Why the Mosaic kernels cannot serve these inputs, or None."""
    if not _platform.mosaic_available():
        return (
            "implementation='mosaic' needs a Hopper GPU (sm_90: H100/H200) or GPU interpret "
            f"mode (jax.experimental.pallas.mosaic_gpu.force_gpu_interpret_mode); "
            f"found {_platform.device_description()}"
        )
    from fa3_jax import _mosaic

    return _mosaic.forward_unsupported_reason(
        q,
        k,
        v,
        spec=static.spec,
        softcap=static.softcap,
        has_alibi=slopes is not None,
        has_segments=segments is not None,
        block_mask=block_mask,
    )


def _choose_implementation(implementation, static, *args) -> str:
    if implementation is None:
        return "mosaic" if _mosaic_reason(static, *args) is None else "reference"
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be None or one of {IMPLEMENTATIONS}, got {implementation!r}"
        )
    if implementation == "mosaic":
        reason = _mosaic_reason(static, *args)
        if reason is not None:
            raise ValueError(f"implementation='mosaic' cannot serve these inputs: {reason}")
    return implementation


def _kwargs(static: _Static, slopes, segments, block_mask) -> dict[str, Any]:
    """Keyword arguments of the chosen implementation's forward/backward."""
    slopes_name = "alibi_slopes_BH" if static.implementation == "mosaic" else "alibi_slopes"
    return {
        "spec": static.spec,
        "softmax_scale": static.softmax_scale,
        "softcap": static.softcap,
        slopes_name: slopes,
        "segment_ids": segments,
        "block_mask": block_mask,
    }


def _forward(static: _Static, q, k, v, slopes, segments, block_mask, descale, *, with_lse):
    """``(out, lse)``; the Mosaic kernel gives lse None when not ``with_lse``."""
    kwargs = _kwargs(static, slopes, segments, block_mask)
    if descale is not None:
        kwargs["descale_BG"] = descale
    if static.implementation == "mosaic":
        from fa3_jax import _mosaic

        return _mosaic.sharded_forward(q, k, v, **kwargs, with_lse=with_lse)
    return attention_reference(q, k, v, **kwargs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(static: _Static, q, k, v, slopes, segments, block_mask, descale):
    """``(out, lse)``; differentiable in q, k, v (and through lse) unless FP8."""
    out, lse = _forward(
        static, q, k, v, slopes, segments, block_mask, descale, with_lse=static.return_lse
    )
    if lse is None:
        # Not asked for and not differentiated: the kernel skipped it (H100: 0-3% faster,
        # benchmarks/NOTES.md "Session 20"); the caller drops this stand-in.
        batch, seq_q, heads_q, _ = q.shape
        lse = jnp.zeros((batch, heads_q, seq_q), jnp.float32)
    return out, lse


def _attention_fwd(static, q, k, v, slopes, segments, block_mask, descale):
    out, lse = _forward(static, q, k, v, slopes, segments, block_mask, descale, with_lse=True)
    # Named so that a remat policy can keep them (see RESIDUAL_NAMES) instead of re-running the
    # forward kernel in the backward pass.
    out = checkpoint_name(out, RESIDUAL_NAMES[0])
    lse = checkpoint_name(lse, RESIDUAL_NAMES[1])
    return (out, lse), (q, k, v, slopes, segments, block_mask, out, lse)


def _attention_bwd(static, residuals, cotangents):
    q, k, v, slopes, segments, block_mask, out, lse = residuals
    if q.dtype == _FP8:
        raise NotImplementedError(
            "float8_e4m3fn attention is forward-only (as FlashAttention-3's FP8 path): "
            "differentiate a float16/bfloat16 call instead"
        )
    dout, dlse = cotangents
    kwargs = _kwargs(static, slopes, segments, block_mask)
    extras = (slopes, segments, block_mask)
    use_kernel = static.implementation == "mosaic"
    if use_kernel and _mosaic_backward_reason(static, q, k, v, *extras) is None:
        from fa3_jax import _mosaic

        dq, dk, dv = _mosaic.sharded_backward(
            q, k, v, out, lse, dout, dlse_BHS=dlse, deterministic=static.deterministic, **kwargs
        )
    else:
        # The reference's backward: also serves inputs the Mosaic backward does not.
        ref_static = dataclasses.replace(static, implementation="reference")
        ref_kwargs = _kwargs(ref_static, slopes, segments, block_mask)
        _, vjp = jax.vjp(lambda q, k, v: attention_reference(q, k, v, **ref_kwargs), q, k, v)
        dq, dk, dv = vjp((dout, dlse))
    return dq, dk, dv, None, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _mosaic_backward_reason(static, q, k, v, slopes, segments, block_mask) -> str | None:
    """Why the Mosaic backward cannot serve these inputs (then the reference's runs)."""
    from fa3_jax import _mosaic

    return _mosaic.backward_unsupported_reason(
        q,
        k,
        v,
        spec=static.spec,
        softcap=static.softcap,
        has_alibi=slopes is not None,
        has_segments=segments is not None,
        block_mask=block_mask,
        deterministic=static.deterministic,
    )
