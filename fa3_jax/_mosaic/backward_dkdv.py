"""dK/dV kernel: each CTA owns a kv tile and walks the q tiles that see it.

Grid: (batch, kv heads, kv tiles), see ``BackwardConfig.tile_order``.
A producer warpgroup streams Q, dO, lse,
delta (and q segment ids) of every visited q tile of every query head in the
GQA group through a ring of SMEM slots with TMA; ``compute_wgs`` consumer
warpgroups each own ``block_kv_dkv`` kv rows and accumulate dK and dV in fp32
registers over the whole walk, so GQA sums and the q-tile order are fixed.

Per visited q tile, a consumer computes (transposed so kv rows are the
wgmma M dimension):  S^T = K Q^T,  dP^T = V dO^T,  P^T = exp2(S^T - lse),
dS^T = P^T (dP^T - delta),  dV += P^T dO,  dK += dS^T Q.  With ``cfg.q_rows``
the score tiles are S = Q K^T and dP = dO V^T instead (q rows as M, FA3's
orientation; per-query vectors are then cheap in registers), and P, dS reach
the dV/dK GEMMs through SMEM as transposed A operands.

With ``cfg.dq != 'kernel'`` the kernel also produces dQ (FA3's five GEMMs).
Consumer ``w`` computes columns ``[w*Dw, (w+1)*Dw)`` (``Dw = D / compute_wgs``)
of dQ_tile = dS K from every consumer's dS^T (staged in SMEM) and K rows, and
adds that fp32 block into ``dq_acc`` with a TMA reduce-add (``'atomic'``) or
stores it to this kv tile's own slot (``'partials'``); dQ leaves unscaled.
Each consumer computes the dQ of step t during step t+1, right after issuing
that step's dV/dK GEMMs: the other consumers' dS^T of step t are ready by
then, so the consumers are not forced into lockstep (a ring of three dS^T
buffers; a consumer announces "step t done" only after its dQ GEMM of step
t-1, which read the buffer step t+2 will overwrite). K, Q and dS^T share a
swizzle as wide as one Dw-column block (wgmma gives both SMEM operands one).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from fa3_jax._mosaic.backward_scores import ScoreParams, probs_and_dlogits
from fa3_jax._mosaic.common import (
    LOG2E,
    TileLists,
    alibi_splits,
    multiple_of,
    needs_element_masks,
    run_consumers,
    tile_list_operands,
)
from fa3_jax.config import BackwardConfig

__all__ = ["dkdv_kernel_call", "smem_transforms"]

_DQ_CHUNK = 64  # dQ columns per wgmma accumulator (32 fp32 registers per thread)
#: fp32 dQ columns per block of the fused path's accumulator (one 128-byte swizzle row): it is
#: laid out ``[B, Hq, D / 32, S, 32]``, so each TMA box a consumer adds is contiguous.
_DQ_BLOCK = 32


def smem_transforms(itemsize: int, cols: int | None = None):
    """Tiling + swizzle; ``cols``: the narrowest column block a wgmma reads (128 B max)."""
    swizzle = 128 if cols is None else min(128, cols * itemsize)
    return (plgpu.TilingTransform((8, swizzle // itemsize)), plgpu.SwizzleTransform(swizzle))


@dataclasses.dataclass(frozen=True)
class _Shapes:
    """Static sizes the kernel body needs (meta_*/slope_b: 1 when broadcast)."""

    head_dim: int
    group: int  # query heads per kv head
    dq_cols: int  # dQ columns each consumer computes (fused dQ only)
    kv_tiles: int  # the grid's kv axis
    n_cols: int  # q tiles per row of the metadata
    meta_operands: int  # metadata arrays passed (0: static lists, see TileLists)
    meta_b: int
    meta_h: int
    slope_b: int


def _kernel(*refs, params: ScoreParams, cfg: BackwardConfig, shp: _Shapes, dtype, masked):
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = refs[:6]
    tiles, rest = TileLists.take(list(refs[6:]), shp.meta_operands, shp.n_cols)
    slope_ref = rest.pop(0) if params.has_alibi else None
    qseg_ref, kseg_ref = (rest.pop(0), rest.pop(0)) if params.has_segments else (None, None)
    fused = cfg.dq != "kernel"
    dq_ref = rest.pop(0) if fused else None
    dk_ref, dv_ref, scratch, barriers = rest

    k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem = scratch[:6]
    qseg_smem, kseg_smem, p_smem, ds_smem, dq_smem = scratch[6:]
    kv_bar, full_bar, consumed_bar, step_bar, end_bar = barriers

    bq, bk, stages, wgs = cfg.block_q_dkv, cfg.block_kv_dkv, cfg.stages, cfg.compute_wgs
    group = shp.group
    # Score tiles: [kv, q] (S^T), or [q, kv] (S) with q_rows. ``q_dim``: their q axis.
    q_dim = 0 if cfg.q_rows else 1
    k_dim = 1 - q_dim
    tile_shape = (bq, bk) if cfg.q_rows else (bk, bq)
    # Look-ahead scores need a second pair of score tiles in registers next to
    # the fp32 dK/dV accumulators: only affordable at head_dim 64.
    overlap = cfg.overlap and shp.head_dim <= 64
    kv_tile = lax.axis_index("kv")
    h_kv = lax.axis_index("head")
    b = lax.axis_index("batch")
    wg = lax.axis_index("wg")
    mb = b if shp.meta_b > 1 else 0

    def head_q(g):
        return h_kv * group + g

    def meta_h(g):
        return head_q(g) if shp.meta_h > 1 else 0

    def walk(body, init, masked=False):
        """Runs ``body(g, t, step, carry, mask)`` over (group head, visited q tile);
        ``mask``: see ``TileLists.walk_row`` and ``issue_dkdv``."""

        def per_head(g, carry):
            def per_tile(t, carry, mask):
                step, inner = carry
                return step + 1, body(g, t, step, inner, mask)

            return tiles.walk_row(mb, meta_h(g), kv_tile, per_tile, carry, masked=masked)

        return lax.fori_loop(0, group, per_head, (jnp.int32(0), init))

    @pl.when(wg == wgs)
    def _producer():
        plgpu.set_max_registers(cfg.registers[1], action="decrease")

        def load(step, hq, qi):
            slot = lax.rem(step, stages)

            @pl.when(step >= stages)
            def _():
                plgpu.barrier_wait(consumed_bar.at[slot])

            rows = pl.ds(qi * bq, bq)
            bar = full_bar.at[slot]
            plgpu.copy_gmem_to_smem(q_ref.at[b, rows, hq], q_smem.at[slot], bar)
            plgpu.copy_gmem_to_smem(do_ref.at[b, rows, hq], do_smem.at[slot], bar)
            plgpu.copy_gmem_to_smem(lse_ref.at[b, hq, rows], lse_smem.at[slot], bar)
            plgpu.copy_gmem_to_smem(delta_ref.at[b, hq, rows], delta_smem.at[slot], bar)
            if params.has_segments:
                plgpu.copy_gmem_to_smem(qseg_ref.at[b, rows], qseg_smem.at[slot], bar)

        def issue(g, t, step, _, mask):
            load(step, head_q(g), tiles.index(mb, meta_h(g), kv_tile, t))
            return 0

        steps, _ = walk(issue, 0)
        n_loads = steps
        if overlap:
            # One extra, in-bounds q tile: the consumers' look-ahead past the walk.
            load(steps, head_q(0), tiles.index(mb, meta_h(0), kv_tile, 0))
            n_loads = steps + 1

        # Observe the consumers' last release of every slot before exiting.
        @pl.loop(jnp.maximum(n_loads - stages, 0), n_loads)
        def _(step):
            plgpu.barrier_wait(consumed_bar.at[lax.rem(step, stages)])

    def consumer(wg):
        """One consumer warpgroup's body; ``wg``: its index, traced or a Python int."""
        plgpu.set_max_registers(cfg.registers[0], action="increase")
        kv_base = (kv_tile * wgs + wg) * bk
        kv_rows = pl.ds(kv_base, bk)
        plgpu.copy_gmem_to_smem(k_ref.at[b, kv_rows, h_kv], k_smem.at[wg], kv_bar.at[wg])
        plgpu.copy_gmem_to_smem(v_ref.at[b, kv_rows, h_kv], v_smem.at[wg], kv_bar.at[wg])
        if params.has_segments:
            plgpu.copy_gmem_to_smem(kseg_ref.at[b, kv_rows], kseg_smem.at[wg], kv_bar.at[wg])
        plgpu.barrier_wait(kv_bar.at[wg])

        layout = plgpu.Layout.WGMMA
        # Layouts of per-query / per-key vectors of a score tile.
        q_vec, k_vec = layout.reduce(k_dim), layout.reduce(q_dim)
        k_pos = kv_base + plgpu.broadcasted_iota(jnp.int32, tile_shape, k_dim, layout=layout)
        k_seg = plgpu.load(kseg_smem.at[wg], layout=k_vec) if params.has_segments else None

        signed = params.has_alibi and alibi_splits(params.spec)
        if signed:
            q_iota = plgpu.broadcasted_iota(jnp.int32, (bq,), 0, layout=q_vec)
            k_iota = plgpu.broadcasted_iota(jnp.int32, (bk,), 0, layout=k_vec)
            k_iota = k_iota.astype(jnp.float32)

        score_accs = (plgpu.ACC(tile_shape, jnp.float32), plgpu.ACC(tile_shape, jnp.float32))

        def issue_scores(slot, s_acc, dp_acc):
            if cfg.q_rows:
                plgpu.wgmma(s_acc, q_smem.at[slot], k_smem.at[wg].T)
                plgpu.wgmma(dp_acc, do_smem.at[slot], v_smem.at[wg].T)
            else:
                plgpu.wgmma(s_acc, k_smem.at[wg], q_smem.at[slot].T)
                plgpu.wgmma(dp_acc, v_smem.at[wg], do_smem.at[slot].T)

        def with_scores(slot, use):
            """Issues S^T, dP^T; ``use(qk, dp)`` gets S^T once ready and dP^T as a function
            (its wgmma may still run while ``use`` starts on S^T)."""

            def run(accs):
                issue_scores(slot, *accs)
                qk = plgpu.wgmma_accumulator_load(accs[0], wait_n=1)
                return use(qk, lambda: accs[1][...])

            return pl.run_scoped(run, score_accs)

        def scores_now(slot):
            def run(accs):
                issue_scores(slot, *accs)
                return accs[0][...], accs[1][...]

            return pl.run_scoped(run, score_accs)

        def issue_dkdv(dk_acc, dv_acc, g, t, slot, qk, dp, mask, ds_dst=None):
            """Softmax recomputation and dS^T of one step; issues dV, dK wgmmas (no wait).

            ``mask``: the step's element-mask mode (see ``TileLists.walk_row``).
            ``ds_dst``: SMEM tile that must receive dS^T (dS with ``q_rows``; for the fused
            dQ GEMMs).
            """
            hq = head_q(g)
            qi = tiles.index(mb, meta_h(g), kv_tile, t)
            part = tiles.partial_arg(mb, meta_h(g), kv_tile, t, mask)
            lse2_q = plgpu.load(lse_smem.at[slot], layout=q_vec)
            slope = slope_ref[b if shp.slope_b > 1 else 0, hq] if params.has_alibi else None
            alibi2 = None
            if signed:
                # lse2 + c * (q + offset - kv_base); key term c * (k - kv_base).
                c = slope * LOG2E
                q_from_kv = qi * bq + params.spec.offset - kv_base + q_iota
                lse2_q = lse2_q + c * q_from_kv.astype(jnp.float32)
                alibi2 = lax.broadcast_in_dim(c * k_iota, tile_shape, [k_dim])
            lse2 = lax.broadcast_in_dim(lse2_q, tile_shape, [q_dim])
            delta = lax.broadcast_in_dim(
                plgpu.load(delta_smem.at[slot], layout=q_vec), tile_shape, [q_dim]
            )
            q_pos = qi * bq + plgpu.broadcasted_iota(jnp.int32, tile_shape, q_dim, layout=layout)

            def segments():
                q_seg = plgpu.load(qseg_smem.at[slot], layout=q_vec)
                return (
                    lax.broadcast_in_dim(q_seg, tile_shape, [q_dim]),
                    lax.broadcast_in_dim(k_seg, tile_shape, [k_dim]),
                )

            p, ds = probs_and_dlogits(
                params,
                qk,
                dp,
                lse2,
                delta,
                q_pos,
                k_pos,
                slope=slope,
                alibi2=alibi2,
                segments=segments,
                partial=part,
                branch=cfg.branch_masks,
            )
            p_op, ds_op = p.astype(dtype), ds.astype(dtype)
            # q rows: P and dS (not their transposes) are the tiles, so they go through SMEM
            # and the dV/dK GEMMs read them transposed.
            staged = cfg.q_rows or not cfg.register_operands
            if ds_dst is None and staged:
                ds_dst = ds_smem.at[wg]
            if ds_dst is not None:
                ds_dst[...] = ds_op
                ds_op = ds_dst if staged else ds_op
            if staged:
                p_smem.at[wg][...] = p_op
                p_op = p_smem.at[wg]
            if ds_dst is not None:
                plgpu.commit_smem()
            if cfg.q_rows:
                p_op, ds_op = p_op.T, ds_op.T
            plgpu.wgmma(dv_acc, p_op, do_smem.at[slot])
            plgpu.wgmma(dk_acc, ds_op, q_smem.at[slot])

        def accumulate_plain(dk_acc, dv_acc):
            def step_body(g, t, step, prev_slot, mask):
                slot = lax.rem(step, stages)
                plgpu.barrier_wait(full_bar.at[slot])

                def use(qk, dp):
                    if cfg.defer_release:
                        # Reading S^T waited for every earlier wgmma, including the
                        # previous step's dV/dK: its slot can be released now.
                        @pl.when(step > 0)
                        def _():
                            plgpu.barrier_arrive(consumed_bar.at[prev_slot])

                    issue_dkdv(dk_acc, dv_acc, g, t, slot, qk, dp, mask)

                with_scores(slot, use)
                if not cfg.defer_release:
                    plgpu.wgmma_wait(0)
                    plgpu.barrier_arrive(consumed_bar.at[slot])
                return slot

            steps, last_slot = walk(step_body, jnp.int32(0), masked)
            dk, dv = dk_acc[...], dv_acc[...]
            if cfg.defer_release:

                @pl.when(steps > 0)
                def _():
                    plgpu.barrier_arrive(consumed_bar.at[last_slot])

            return dk, dv

        def accumulate_overlapped(dk_acc, dv_acc):
            """Step t's softmax runs while the tensor cores compute S^T, dP^T of t+1."""
            plgpu.barrier_wait(full_bar.at[0])

            def step_body(g, t, step, carry, mask):
                slot, next_slot = lax.rem(step, stages), lax.rem(step + 1, stages)
                plgpu.barrier_wait(full_bar.at[next_slot])

                def overlapped(accs):
                    issue_scores(next_slot, *accs)
                    issue_dkdv(dk_acc, dv_acc, g, t, slot, *carry, mask)
                    return accs[0][...], accs[1][...]  # waits for this step's dV/dK too

                scores = pl.run_scoped(overlapped, score_accs)
                plgpu.barrier_arrive(consumed_bar.at[slot])
                return scores

            steps, _ = walk(step_body, scores_now(0), masked)
            plgpu.barrier_arrive(consumed_bar.at[lax.rem(steps, stages)])
            return dk_acc[...], dv_acc[...]

        def dq_columns(buf, hq, qi, part):
            """This consumer's dQ columns of the step whose dS^T are in ``buf``.

            ``part``: the 'partials' slot to store to.

            Waits for every wgmma issued before (reading the accumulator).
            No wgmma sits under a branch: that would make ptxas serialize them.
            """
            cols = shp.dq_cols
            chunk = min(cols, _DQ_CHUNK)
            col0 = multiple_of(wg * cols, cols)
            for c in range(0, cols, chunk):

                def run(acc, c=c):
                    for j in range(wgs):
                        k_block = k_smem.at[j, :, pl.ds(col0 + c, chunk)]
                        ds = ds_smem.at[j, buf]
                        plgpu.wgmma(acc, ds if cfg.q_rows else ds.T, k_block)
                    return acc[...]

                dq = pl.run_scoped(run, plgpu.ACC((bq, chunk), jnp.float32))
                if c == 0:
                    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # last dQ store
                for blk in range(0, chunk, _DQ_BLOCK):
                    dq_smem.at[wg, (c + blk) // _DQ_BLOCK][...] = dq[:, blk : blk + _DQ_BLOCK]
            plgpu.commit_smem()
            rows = pl.ds(qi * bq, bq)
            n_blocks = cols // _DQ_BLOCK
            blocks = pl.ds(multiple_of(wg * n_blocks, n_blocks), n_blocks)
            if cfg.dq == "atomic":
                dst = dq_ref.at[b, hq, blocks, rows]
                plgpu.copy_smem_to_gmem(dq_smem.at[wg], dst, reduction_op="add")
            else:
                dst = dq_ref.at[part, b, hq, blocks, rows]
                plgpu.copy_smem_to_gmem(dq_smem.at[wg], dst)

        def accumulate_fused(dk_acc, dv_acc):
            # Step t runs the dQ GEMM of step t-1. "Step -1" is a zero dS^T tile
            # in buffer 2 (adding zeros to q tile 0; 'partials' stores it to a
            # spare slot), so no wgmma sits under a branch for the first or last step.
            ds_smem.at[wg, 2][...] = jnp.zeros(tile_shape, dtype)
            plgpu.commit_smem()
            plgpu.barrier_arrive(step_bar.at[2])

            def step_body(g, t, step, prev, mask):
                slot, buf = lax.rem(step, stages), lax.rem(step, 3)
                plgpu.barrier_wait(full_bar.at[slot])
                with_scores(
                    slot,
                    lambda qk, dp: issue_dkdv(
                        dk_acc, dv_acc, g, t, slot, qk, dp, mask, ds_dst=ds_smem.at[wg, buf]
                    ),
                )
                prev_buf = lax.rem(step + 2, 3)
                plgpu.barrier_wait(step_bar.at[prev_buf])  # every dS^T of step - 1
                dq_columns(prev_buf, *prev)
                # dV/dK of this step are done: Q/dO may be refilled.
                plgpu.barrier_arrive(consumed_bar.at[slot])
                plgpu.barrier_arrive(step_bar.at[buf])
                return head_q(g), tiles.index(mb, meta_h(g), kv_tile, t), kv_tile

            spare = shp.kv_tiles + kv_tile
            steps, last = walk(step_body, (head_q(0), jnp.int32(0), spare), masked)
            last_buf = lax.rem(steps + 2, 3)
            plgpu.barrier_wait(step_bar.at[last_buf])
            dq_columns(last_buf, *last)
            plgpu.wait_smem_to_gmem(0)
            # The other consumers' dQ GEMMs read this consumer's K tile: wait
            # for them before it is overwritten with dK.
            plgpu.barrier_arrive(end_bar)
            plgpu.barrier_wait(end_bar)
            return dk_acc[...], dv_acc[...]

        def accumulate(dk_acc, dv_acc):
            if fused:
                dk, dv = accumulate_fused(dk_acc, dv_acc)
            else:
                dk, dv = (accumulate_overlapped if overlap else accumulate_plain)(dk_acc, dv_acc)
            dk = dk * params.softmax_scale
            # K/V tiles are no longer read: reuse them to stage the results.
            k_smem.at[wg][...] = dk.astype(dtype)
            v_smem.at[wg][...] = dv.astype(dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(k_smem.at[wg], dk_ref.at[b, kv_rows, h_kv])
            plgpu.copy_smem_to_gmem(v_smem.at[wg], dv_ref.at[b, kv_rows, h_kv])
            plgpu.wait_smem_to_gmem(0)

        pl.run_scoped(
            lambda dk_acc, dv_acc: accumulate(dk_acc, dv_acc),
            plgpu.ACC((bk, shp.head_dim), jnp.float32),
            plgpu.ACC((bk, shp.head_dim), jnp.float32),
        )

    run_consumers(wg, wgs, consumer, static=cfg.static_warpgroups)


def dkdv_kernel_call(
    q,
    k,
    v,
    do,
    lse2,
    delta,
    meta,
    *,
    params: ScoreParams,
    cfg: BackwardConfig,
    slopes=None,
    segments=None,
    interpret=None,
):
    """Runs the dK/dV kernel on padded inputs.

    Args:
      q, do: ``[B, Sq_pad, Hq, D]`` fp16/bf16, ``Sq_pad % block_q_dkv == 0``.
      k, v: ``[B, Sk_pad, Hkv, D]``, ``Sk_pad % (compute_wgs * block_kv_dkv) == 0``.
      lse2, delta: f32 ``[B, Hq, Sq_pad]`` (see ``prepare_lse``).
      meta: transposed :class:`~fa3_jax.masks.TileMetadata` with
        ``tile_q == block_q_dkv`` and ``tile_k == compute_wgs * block_kv_dkv``.
      slopes: f32 ``[B or 1, Hq]`` when ``params.has_alibi``.
      segments: int32 ``([B, Sq_pad], [B, Sk_pad])`` when ``params.has_segments``.

    Returns:
      ``(dk, dv, dq)``: dk, dv in ``[B, Sk_pad, Hkv, D]`` and q's dtype (dK summed
      over the group); with ``cfg.dq != 'kernel'`` dq is f32 ``[B, Sq_pad, Hq, D]``
      **without** the softmax scale, else None.
    """
    batch, seq_q, heads_q, head_dim = q.shape
    _, seq_k, heads_kv, _ = k.shape
    dtype = q.dtype
    itemsize = jnp.dtype(dtype).itemsize
    bq, bk, stages, wgs = cfg.block_q_dkv, cfg.block_kv_dkv, cfg.stages, cfg.compute_wgs
    fused = cfg.dq != "kernel"
    dq_cols = head_dim // wgs
    masked = needs_element_masks(
        params.spec, tile_k=cfg.tile_kv_dkv, has_segments=params.has_segments
    )
    meta_operands = tile_list_operands(meta, masked)
    shp = _Shapes(
        head_dim=head_dim,
        group=heads_q // heads_kv,
        dq_cols=dq_cols,
        kv_tiles=meta.n_rows,
        n_cols=meta.n_cols,
        meta_operands=len(meta_operands),
        meta_b=meta.index.shape[0],
        meta_h=meta.index.shape[1],
        slope_b=1 if slopes is None else slopes.shape[0],
    )
    tr = smem_transforms(itemsize)
    # The dQ GEMMs read K in blocks of dq_cols columns; K's partners Q (in S^T)
    # and dS^T (in dK, dQ) take the same swizzle.
    tr_k = smem_transforms(itemsize, min(dq_cols, _DQ_CHUNK)) if fused else tr
    staged_p = cfg.q_rows or not cfg.register_operands
    staged_ds = fused or staged_p
    tile_shape = (bq, bk) if cfg.q_rows else (bk, bq)  # P / dS, see _kernel
    n_copies = 5 if params.has_segments else 4
    scratch = (
        plgpu.SMEM((wgs, bk, head_dim), dtype, transforms=tr_k),  # K
        plgpu.SMEM((wgs, bk, head_dim), dtype, transforms=tr),  # V
        plgpu.SMEM((stages, bq, head_dim), dtype, transforms=tr_k),  # Q ring
        plgpu.SMEM((stages, bq, head_dim), dtype, transforms=tr),  # dO ring
        plgpu.SMEM((stages, bq), jnp.float32),  # lse ring
        plgpu.SMEM((stages, bq), jnp.float32),  # delta ring
        plgpu.SMEM((stages, bq), jnp.int32) if params.has_segments else None,
        plgpu.SMEM((wgs, bk), jnp.int32) if params.has_segments else None,
        plgpu.SMEM((wgs, *tile_shape), dtype, transforms=tr) if staged_p else None,  # P^T or P
        # dS^T (or dS): a ring of three when the other consumers read it for dQ.
        (
            plgpu.SMEM(
                (wgs, 3, *tile_shape) if fused else (wgs, *tile_shape), dtype, transforms=tr_k
            )
            if staged_ds
            else None
        ),
        plgpu.SMEM(
            (wgs, dq_cols // _DQ_BLOCK, bq, _DQ_BLOCK), jnp.float32, transforms=smem_transforms(4)
        )
        if fused
        else None,  # dQ column blocks on their way to HBM
    )
    barriers = (
        plgpu.Barrier(num_arrivals=3 if params.has_segments else 2, num_barriers=wgs),
        plgpu.Barrier(num_arrivals=n_copies, num_barriers=stages),
        plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
        # "step t done" per dS^T buffer: its dS^T is staged and step t-1's dQ GEMM ran.
        plgpu.Barrier(num_arrivals=wgs, num_barriers=3) if fused else None,
        plgpu.Barrier(num_arrivals=wgs) if fused else None,  # walk done: K reusable
    )
    out_shape = jax.ShapeDtypeStruct((batch, seq_k, heads_kv, head_dim), dtype)
    # Mosaic GPU launches the grid's last axis as blockIdx.x (neighbouring CTAs).
    grid, grid_names = (batch, heads_kv, meta.n_rows), ("batch", "head", "kv")
    if cfg.tile_order == "batch":
        grid, grid_names = grid[::-1], grid_names[::-1]
    kernel = plgpu.kernel(
        functools.partial(
            _kernel,
            params=params,
            cfg=cfg,
            shp=shp,
            dtype=dtype,
            masked=masked,
        ),
        out_type=(out_shape, out_shape),
        scratch_types=(scratch, barriers),
        grid=grid,
        grid_names=grid_names,
        num_threads=wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=interpret,
    )
    operands = [q, k, v, do, lse2, delta, *meta_operands]
    if params.has_alibi:
        operands.append(slopes)
    if params.has_segments:
        operands.extend(segments)
    if not fused:
        return (*kernel(*operands), None)
    # 'partials': one slot per kv tile, and one spare per kv tile (see "step -1").
    slots = (2 * meta.n_rows,) if cfg.dq == "partials" else ()
    # Zero-initialised and updated in place: the kernel only adds (or stores) the
    # tiles it visits, so unvisited q rows keep dQ = 0.
    blocks = head_dim // _DQ_BLOCK
    dq_acc = jax.new_ref(jnp.zeros((*slots, batch, heads_q, blocks, seq_q, _DQ_BLOCK), jnp.float32))
    dk, dv = kernel(*operands, dq_acc)
    dq_BHNSC = dq_acc[...]
    if slots:
        dq_BHNSC = dq_BHNSC[: meta.n_rows].sum(0)
    dq_BSHD = dq_BHNSC.transpose(0, 3, 1, 2, 4).reshape(batch, seq_q, heads_q, head_dim)
    return dk, dv, dq_BSHD
