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

With explicit sharding (``jax.sharding.AxisType.Explicit``, the default of
``jax.make_mesh``) the array types carry the sharding, so the split is decided
at trace time instead: the call runs under ``jax.shard_map`` with the same
batch/head rule, its operands resharded to it first.
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
from jax.sharding import AxisType, NamedSharding, PartitionSpec

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


def _split_axes(mesh, spec, batch: int, heads_q: int, heads_kv: int) -> dict[str, tuple]:
    """Mesh axes for the batch and head letters, from q's PartitionSpec ([b, s, h, d])."""
    spec = tuple(spec or ()) + (None,) * 4
    batch_axes = _axes(spec[0])
    if batch % _size(mesh, batch_axes):
        batch_axes = ()
    head_axes = tuple(a for a in _axes(spec[2]) if a not in batch_axes)
    n_heads = _size(mesh, head_axes)
    if heads_q % n_heads or heads_kv % n_heads:
        head_axes = ()
    return {"b": batch_axes, "h": head_axes, "g": head_axes}


def _spec(letters: str, shape, split: dict[str, tuple]) -> PartitionSpec:
    return PartitionSpec(
        *(
            _spec_entry(split[c]) if c in _SPLIT and size > 1 else None
            for c, size in zip(letters, shape, strict=True)
        )
    )


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
    """``fn(*arrays) -> tuple of arrays``, partitioned over batch and heads under ``jit``:
    by ``custom_partitioning`` at compile time, or by ``jax.shard_map`` at trace time when
    q's type carries an explicit sharding.

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

    def split_of(mesh, q_spec, arrays):
        q_shape = arrays[0].shape
        heads_kv = arrays[kv_arg].shape[arg_letters[kv_arg].index("g")]
        return _split_axes(mesh, q_spec, q_shape[0], q_shape[2], heads_kv)

    def shard_mapped(mesh, arrays):
        """The call under shard_map over an explicit mesh (operands resharded to the rule)."""
        split = split_of(mesh, jax.typeof(arrays[0]).sharding.spec, arrays)
        in_specs = tuple(_spec(s, x.shape, split) for s, x in zip(arg_letters, arrays, strict=True))
        # shapes only: evaluated without the operands' (explicit) shardings
        out_avals = jax.eval_shape(fn, *(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in arrays))
        out_specs = tuple(
            _spec(s, o.shape, split) for s, o in zip(out_letters, out_avals, strict=True)
        )
        arrays = [jax.sharding.reshard(x, spec) for x, spec in zip(arrays, in_specs, strict=True)]
        mapped = jax.shard_map(
            fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )
        return mapped(*arrays)

    # custom_partitioning rejects a traced function with constants; jit keeps them inside
    wrapped = custom_partitioning(jax.jit(fn))

    def partition(mesh, arg_shapes, result_shape):
        q_sharding = arg_shapes[0].sharding
        split = split_of(mesh, None if q_sharding is None else q_sharding.spec, arg_shapes)
        arg_shardings = tuple(
            NamedSharding(mesh, _spec(s, a.shape, split))
            for s, a in zip(arg_letters, arg_shapes, strict=True)
        )
        results = result_shape if isinstance(result_shape, (tuple, list)) else (result_shape,)
        out_shardings = tuple(
            NamedSharding(mesh, _spec(s, r.shape, split))
            for s, r in zip(out_letters, results, strict=True)
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
        mesh = jax.typeof(arrays[0]).sharding.mesh
        if AxisType.Explicit in mesh.axis_types:
            return shard_mapped(mesh, arrays)
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


def sharded_forward(
    q_BSHD,
    k_BSHD,
    v_BSHD,
    *,
    alibi_slopes_BH,
    segment_ids,
    block_mask,
    descale_BG=None,
    with_lse=True,
    **static,
):
    """:func:`mha_forward` split over batch and heads under ``jit``; same arguments and results."""
    named = [("q", q_BSHD, "bshd"), ("k", k_BSHD, "btgd"), ("v", v_BSHD, "btge")]
    named += _extras(alibi_slopes_BH, segment_ids, block_mask, q_BSHD.shape[2])
    if descale_BG is not None:
        named += [(f"descale_{x}", d, "bg") for x, d in zip("qkv", descale_BG, strict=True)]

    def kernel(local):
        extra = _extra_kwargs(local, block_mask)
        if descale_BG is not None:
            extra["descale_BG"] = tuple(local[f"descale_{x}"] for x in "qkv")
        out, lse = mha_forward(
            local["q"], local["k"], local["v"], **extra, with_lse=with_lse, **static
        )
        return (out, lse) if with_lse else (out,)

    if with_lse:
        return _run(kernel, named, ("bshe", "bhs"))
    (out,) = _run(kernel, named, ("bshe",))
    return out, None


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
