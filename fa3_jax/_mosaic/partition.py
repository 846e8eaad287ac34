"""Sharding of the Mosaic kernels under ``jit``: batch and heads split, sequences whole.

A Pallas call is an opaque custom call to XLA's SPMD partitioner, which would
gather its operands onto every device and run the whole batch everywhere. The
kernels are independent per (batch, head), so :func:`batch_head_partitioned`
wraps one in ``custom_partitioning``: each device runs it on its own batch rows
and heads. The batch split is q's batch sharding; the head split is q's head
sharding when the query and kv head counts both divide it (GQA groups then stay
on one device). Sequence and head_dim axes are gathered: attention over a
sharded sequence needs ring attention, which this library does not do.

Operands and results are described by a string of axis letters, one per axis:
``b`` batch (always the first axis), ``h`` query heads, ``g`` kv heads; any other
letter is kept whole. A ``b``/``h`` axis of size 1 (a broadcast slope or mask) is
kept whole too. ``custom_partitioning`` has no batching rule, so ``jax.vmap`` is
served by folding the mapped axis into the batch axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import (
    ArrayMapping,
    SdyShardingRule,
    custom_partitioning,
)
from jax.sharding import NamedSharding, PartitionSpec

from fa3_jax import _platform
from fa3_jax._mosaic.api_forward import mha_forward
from fa3_jax._mosaic.backward import mha_backward
from fa3_jax.masks import BlockMask

__all__ = ["batch_head_partitioned", "sharded_backward", "sharded_forward"]

_SPLIT = "bhg"  # letters of the axes that may be split across devices


def _axes(entry) -> tuple[str, ...]:
    """Mesh axis names of one PartitionSpec entry."""
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _size(mesh, axes: Sequence[str]) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def _spec_entry(axes: tuple[str, ...]):
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def _split_axes(mesh, q_info, batch: int, heads_q: int, heads_kv: int) -> dict[str, tuple]:
    """Mesh axes for the batch and head letters, from q's sharding ([b, s, h, d])."""
    sharding = q_info.sharding
    spec = tuple(sharding.spec) + (None,) * 4 if sharding is not None else (None,) * 4
    batch_axes = _axes(spec[0])
    if batch % _size(mesh, batch_axes):
        batch_axes = ()
    head_axes = tuple(a for a in _axes(spec[2]) if a not in batch_axes)
    n_heads = _size(mesh, head_axes)
    if heads_q % n_heads or heads_kv % n_heads:
        head_axes = ()
    return {"b": batch_axes, "h": head_axes, "g": head_axes}


def _sharding(mesh, letters: str, shape, split: dict[str, tuple]) -> NamedSharding:
    entries = [
        _spec_entry(split[c]) if c in _SPLIT and size > 1 else None
        for c, size in zip(letters, shape, strict=True)
    ]
    return NamedSharding(mesh, PartitionSpec(*entries))


def _mapping(letters: str, shape, operand: int) -> ArrayMapping:
    """Shardy factors: split letters are shared factors; broadcast (size-1) ones are private."""
    return ArrayMapping(
        *(
            c if c not in _SPLIT or size > 1 else f"{c}_one{operand}_{i}"
            for i, (c, size) in enumerate(zip(letters, shape, strict=True))
        )
    )


def batch_head_partitioned(
    fn: Callable, arg_letters: Sequence[str], out_letters: Sequence[str]
) -> Callable:
    """``fn(*arrays) -> tuple of arrays``, partitioned over batch and heads under ``jit``.

    Args:
      fn: a kernel call on local (per-device) arrays; closes over everything static.
        Its first argument must be q ``[batch, seq_q, heads_q, head_dim]`` (letters
        ``"bshd"``) and some argument must carry kv heads (letter ``g``).
      arg_letters: one axis-letter string per positional argument (see the module).
      out_letters: one per result.
    Returns:
      A function of the same arrays (all positional, none None) returning fn's tuple,
      vmappable; ``fn`` itself under GPU interpret mode, whose host callbacks XLA
      cannot split.
    """
    arg_letters, out_letters = tuple(arg_letters), tuple(out_letters)
    if _platform.interpret_mode_active():
        # The interpreter's host callbacks cannot be lowered per device; it runs unsplit.
        return fn
    if not all(s[0] == "b" for s in arg_letters + out_letters):
        raise ValueError(f"every operand and result must lead with a batch axis: {arg_letters}")
    kv_arg = next(i for i, s in enumerate(arg_letters) if "g" in s)
    # custom_partitioning rejects a traced function with constants; jit keeps them inside
    wrapped = custom_partitioning(jax.jit(fn))

    def partition(mesh, arg_shapes, result_shape):
        q_shape = arg_shapes[0].shape
        heads_kv = arg_shapes[kv_arg].shape[arg_letters[kv_arg].index("g")]
        split = _split_axes(mesh, arg_shapes[0], q_shape[0], q_shape[2], heads_kv)
        arg_shardings = tuple(
            _sharding(mesh, s, a.shape, split) for s, a in zip(arg_letters, arg_shapes, strict=True)
        )
        results = result_shape if isinstance(result_shape, (tuple, list)) else (result_shape,)
        out_shardings = tuple(
            _sharding(mesh, s, r.shape, split) for s, r in zip(out_letters, results, strict=True)
        )
        return mesh, fn, out_shardings, arg_shardings

    def sharding_rule(mesh, value_types, result_types):
        del mesh
        letters = arg_letters + out_letters
        types = tuple(value_types) + tuple(result_types)
        mappings = [
            _mapping(s, t.shape, i) for i, (s, t) in enumerate(zip(letters, types, strict=True))
        ]
        operands, results = tuple(mappings[: len(arg_letters)]), tuple(mappings[len(arg_letters) :])
        # in order of first appearance: Shardy wants special factors sorted by index
        factors = dict.fromkeys(f for m in mappings for f in m)
        whole = tuple(f for f in factors if f not in _SPLIT)
        return SdyShardingRule(operands, results, need_replication_factors=whole)

    wrapped.def_partition(partition=partition, sharding_rule=sharding_rule)

    @jax.custom_batching.custom_vmap
    def call(*arrays):
        return wrapped(*arrays)

    @call.def_vmap
    def _fold_vmap(axis_size, in_batched, *arrays):
        q = arrays[0]
        batch = q.shape[1] if in_batched[0] else q.shape[0]
        folded = [
            _fold(x, mapped, axis_size, batch) for x, mapped in zip(arrays, in_batched, strict=True)
        ]
        outs = call(*folded)
        unfolded = tuple(o.reshape(axis_size, o.shape[0] // axis_size, *o.shape[1:]) for o in outs)
        return unfolded, (True,) * len(outs)

    return call


def _fold(x, mapped: bool, axis_size: int, batch: int):
    """[axis_size, b, ...] (or unmapped [b, ...]) -> [axis_size * batch, ...], or unchanged
    [1, ...] when unmapped and broadcast over the batch."""
    if not mapped:
        if x.shape[0] == 1:
            return x
        x = jnp.broadcast_to(x[None], (axis_size, *x.shape))
    x = jnp.broadcast_to(x, (axis_size, batch, *x.shape[2:]))
    return x.reshape(axis_size * batch, *x.shape[2:])


def _extras(alibi_slopes_BH, segment_ids, block_mask, heads_q: int) -> list:
    """(name, array, letters) of the optional kernel operands that are present."""
    named = []
    if alibi_slopes_BH is not None:
        slopes_BH = jnp.asarray(alibi_slopes_BH, jnp.float32).reshape(-1, heads_q)
        named.append(("slopes", slopes_BH, "bh"))
    if segment_ids is not None:
        q_seg, kv_seg = (
            segment_ids if isinstance(segment_ids, (tuple, list)) else (segment_ids, segment_ids)
        )
        named += [("q_seg", q_seg, "bs"), ("kv_seg", kv_seg, "bt")]
    if block_mask is not None:
        named.append(("mask", block_mask.mask, "bhmn"))
    return named


def _extra_kwargs(local: dict, block_mask: BlockMask | None) -> dict:
    """The kernels' optional keyword arguments, rebuilt from per-device arrays."""
    segments = (local["q_seg"], local["kv_seg"]) if "q_seg" in local else None
    mask = None
    if block_mask is not None:
        mask = BlockMask(local["mask"], block_mask.block_q, block_mask.block_k)
    return {"alibi_slopes_BH": local.get("slopes"), "segment_ids": segments, "block_mask": mask}


def _run(kernel: Callable, named: list, out_letters: tuple[str, ...]):
    """Calls ``kernel({name: per-device array})`` partitioned over batch and heads."""
    names = [name for name, _, _ in named]

    def local(*arrays):
        return tuple(kernel(dict(zip(names, arrays, strict=True))))

    fn = batch_head_partitioned(local, [letters for _, _, letters in named], out_letters)
    return fn(*(array for _, array, _ in named))


def sharded_forward(q_BSHD, k_BSHD, v_BSHD, *, alibi_slopes_BH, segment_ids, block_mask, **static):
    """:func:`mha_forward` split over batch and heads under ``jit``; same arguments and results."""
    named = [("q", q_BSHD, "bshd"), ("k", k_BSHD, "btgd"), ("v", v_BSHD, "btge")]
    named += _extras(alibi_slopes_BH, segment_ids, block_mask, q_BSHD.shape[2])

    def kernel(local):
        extra = _extra_kwargs(local, block_mask)
        return mha_forward(local["q"], local["k"], local["v"], **extra, **static)

    return _run(kernel, named, ("bshe", "bhs"))


def sharded_backward(
    q,
    k,
    v,
    out,
    lse_BHS,
    dout,
    *,
    dlse_BHS=None,
    alibi_slopes_BH=None,
    segment_ids=None,
    block_mask=None,
    **static,
):
    """:func:`mha_backward` split over batch and heads under ``jit``; same arguments and results."""
    named = [("q", q, "bshd"), ("k", k, "btgd"), ("v", v, "btge"), ("out", out, "bshe")]
    named += [("lse", lse_BHS, "bhs"), ("dout", dout, "bshe")]
    if dlse_BHS is not None:
        named.append(("dlse", dlse_BHS, "bhs"))
    named += _extras(alibi_slopes_BH, segment_ids, block_mask, q.shape[2])

    def kernel(local):
        core = (local[name] for name in ("q", "k", "v", "out", "lse", "dout"))
        extra = _extra_kwargs(local, block_mask)
        return mha_backward(*core, dlse_BHS=local.get("dlse"), **extra, **static)

    return _run(kernel, named, ("bshd", "btgd", "btge"))
