"""dQ kernel: each CTA owns a q tile and walks the kv tiles it sees.

Grid: (batch, q heads, q tiles), see ``BackwardConfig.tile_order``.
A producer warpgroup streams K and V (and kv
segment ids) of every visited kv tile through a ring of SMEM slots with TMA;
``compute_wgs`` consumer warpgroups each own ``block_q_dq`` q rows and
accumulate dQ in fp32 registers (deterministic: no atomics).

Per visited kv tile:  S = Q K^T,  dP = dO V^T,  P = exp2(S - lse),
dS = P (dP - delta),  dQ += dS K.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from fa3_jax._mosaic.backward_dkdv import smem_transforms
from fa3_jax._mosaic.backward_scores import ScoreParams, probs_and_dlogits
from fa3_jax._mosaic.common import (
    LOG2E,
    TileLists,
    alibi_splits,
    needs_element_masks,
    run_consumers,
    tile_list_operands,
)
from fa3_jax.config import BackwardConfig

__all__ = ["dq_kernel_call"]


@dataclasses.dataclass(frozen=True)
class _Shapes:
    """Static sizes the kernel body needs (meta_*/slope_b: 1 when broadcast)."""

    head_dim: int
    group: int
    meta_b: int
    meta_h: int
    slope_b: int
    n_q_tiles: int
    n_cols: int  # kv tiles per row of the metadata
    meta_operands: int  # metadata arrays passed (0: static lists, see TileLists)


def _kernel(*refs, params: ScoreParams, cfg: BackwardConfig, shp: _Shapes, dtype, masked):
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = refs[:6]
    tiles, rest = TileLists.take(list(refs[6:]), shp.meta_operands, shp.n_cols)
    slope_ref = rest.pop(0) if params.has_alibi else None
    qseg_ref, kseg_ref = (rest.pop(0), rest.pop(0)) if params.has_segments else (None, None)
    dq_ref, scratch, barriers = rest

    q_smem, do_smem, lse_smem, delta_smem, qseg_smem, k_smem, v_smem, kseg_smem, ds_smem = scratch
    q_bar, full_bar, consumed_bar = barriers

    bq, bk, stages, wgs = cfg.block_q_dq, cfg.block_kv_dq, cfg.stages, cfg.compute_wgs
    # Launch the last q tiles first: under a causal mask they see the most kv
    # tiles, so the longest CTAs start early and the tail is short.
    q_tile = shp.n_q_tiles - 1 - lax.axis_index("q")
    hq = lax.axis_index("head")
    b = lax.axis_index("batch")
    wg = lax.axis_index("wg")
    h_kv = lax.div(hq, shp.group)
    mb = b if shp.meta_b > 1 else 0
    mh = hq if shp.meta_h > 1 else 0
    n_steps = tiles.count(mb, mh, q_tile)

    @pl.when(wg == wgs)
    def _producer():
        plgpu.set_max_registers(cfg.registers[1], action="decrease")

        # With overlap the consumers read one tile past the walk (see walk_overlapped).
        n_loads = n_steps + 1 if cfg.overlap else n_steps

        @pl.loop(0, n_loads)
        def _(step):
            slot = lax.rem(step, stages)

            @pl.when(step >= stages)
            def _():
                plgpu.barrier_wait(consumed_bar.at[slot])

            # Entries past count repeat the last valid index: in bounds.
            col = jnp.minimum(step, shp.n_cols - 1)
            rows = pl.ds(tiles.index(mb, mh, q_tile, col) * bk, bk)
            bar = full_bar.at[slot]
            plgpu.copy_gmem_to_smem(k_ref.at[b, rows, h_kv], k_smem.at[slot], bar)
            plgpu.copy_gmem_to_smem(v_ref.at[b, rows, h_kv], v_smem.at[slot], bar)
            if params.has_segments:
                plgpu.copy_gmem_to_smem(kseg_ref.at[b, rows], kseg_smem.at[slot], bar)

        # Observe the consumers' last release of every slot before exiting.
        @pl.loop(jnp.maximum(n_loads - stages, 0), n_loads)
        def _(step):
            plgpu.barrier_wait(consumed_bar.at[lax.rem(step, stages)])

    def consumer(wg):
        """One consumer warpgroup's body; ``wg``: its index, traced or a Python int (see
        ``BackwardConfig.static_warpgroups``)."""
        plgpu.set_max_registers(cfg.registers[0], action="increase")
        q_base = (q_tile * wgs + wg) * bq
        q_rows = pl.ds(q_base, bq)
        bar = q_bar.at[wg]
        plgpu.copy_gmem_to_smem(q_ref.at[b, q_rows, hq], q_smem.at[wg], bar)
        plgpu.copy_gmem_to_smem(do_ref.at[b, q_rows, hq], do_smem.at[wg], bar)
        plgpu.copy_gmem_to_smem(lse_ref.at[b, hq, q_rows], lse_smem.at[wg], bar)
        plgpu.copy_gmem_to_smem(delta_ref.at[b, hq, q_rows], delta_smem.at[wg], bar)
        if params.has_segments:
            plgpu.copy_gmem_to_smem(qseg_ref.at[b, q_rows], qseg_smem.at[wg], bar)
        plgpu.barrier_wait(bar)

        layout = plgpu.Layout.WGMMA
        row = layout.reduce(1)
        lse2_q = plgpu.load(lse_smem.at[wg], layout=row)
        delta = lax.broadcast_in_dim(plgpu.load(delta_smem.at[wg], layout=row), (bq, bk), [0])
        q_pos = q_base + plgpu.broadcasted_iota(jnp.int32, (bq, bk), 0, layout=layout)
        q_seg = plgpu.load(qseg_smem.at[wg], layout=row) if params.has_segments else None
        slope = slope_ref[b if shp.slope_b > 1 else 0, hq] if params.has_alibi else None
        signed = params.has_alibi and alibi_splits(params.spec)
        if signed:
            # lse2 + c * (q - q_base); per kv tile the key term c * (k - q_base - offset).
            c = slope * LOG2E
            q_iota = plgpu.broadcasted_iota(jnp.int32, (bq,), 0, layout=row)
            lse2_q = lse2_q + c * q_iota.astype(jnp.float32)
            k_iota = plgpu.broadcasted_iota(jnp.int32, (bk,), 0, layout=layout.reduce(0))
        lse2 = lax.broadcast_in_dim(lse2_q, (bq, bk), [0])

        score_accs = (plgpu.ACC((bq, bk), jnp.float32), plgpu.ACC((bq, bk), jnp.float32))

        def issue_scores(slot, s_acc, dp_acc):
            plgpu.wgmma(s_acc, q_smem.at[wg], k_smem.at[slot].T)
            plgpu.wgmma(dp_acc, do_smem.at[wg], v_smem.at[slot].T)

        def issue_dq(dq_acc, step, slot, qk, dp, mask):
            """Softmax recomputation and dS of one step; issues dQ += dS K (no wait).

            ``mask``: the step's element-mask mode (see ``TileLists.walk_row``).
            """
            kj = tiles.index(mb, mh, q_tile, step)
            part = tiles.partial_arg(mb, mh, q_tile, step, mask)
            k_pos = kj * bk + plgpu.broadcasted_iota(jnp.int32, (bq, bk), 1, layout=layout)

            def segments():
                k_seg = plgpu.load(kseg_smem.at[slot], layout=layout.reduce(0))
                return (
                    lax.broadcast_in_dim(q_seg, (bq, bk), [0]),
                    lax.broadcast_in_dim(k_seg, (bq, bk), [1]),
                )

            alibi2 = None
            if signed:
                k_from_q = kj * bk - q_base - params.spec.offset + k_iota
                alibi2 = lax.broadcast_in_dim(c * k_from_q.astype(jnp.float32), (bq, bk), [1])
            _, ds = probs_and_dlogits(
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
            if cfg.register_operands:
                ds_op = ds.astype(dtype)
            else:
                ds_smem.at[wg][...] = ds.astype(dtype)
                plgpu.commit_smem()
                ds_op = ds_smem.at[wg]
            plgpu.wgmma(dq_acc, ds_op, k_smem.at[slot])

        def walk(dq_acc):
            def step_body(step, prev_slot, mask):
                slot = lax.rem(step, stages)
                plgpu.barrier_wait(full_bar.at[slot])

                def scores_then_dq(accs):
                    issue_scores(slot, *accs)
                    # S is read first: the dP wgmma finishes under the exp2s.
                    qk = plgpu.wgmma_accumulator_load(accs[0], wait_n=1)
                    if cfg.defer_release:
                        # Reading S waited for every earlier wgmma, including the
                        # previous step's dQ: its slot can be released now.
                        @pl.when(step > 0)
                        def _():
                            plgpu.barrier_arrive(consumed_bar.at[prev_slot])

                    issue_dq(dq_acc, step, slot, qk, lambda: accs[1][...], mask)

                pl.run_scoped(scores_then_dq, score_accs)
                if not cfg.defer_release:
                    plgpu.wgmma_wait(0)
                    plgpu.barrier_arrive(consumed_bar.at[slot])
                return slot

            last_slot = tiles.walk_row(mb, mh, q_tile, step_body, jnp.int32(0), masked=masked)
            dq = dq_acc[...]
            if cfg.defer_release:

                @pl.when(n_steps > 0)
                def _():
                    plgpu.barrier_arrive(consumed_bar.at[last_slot])

            return dq

        def walk_overlapped(dq_acc):
            """Step t's softmax runs while the tensor cores compute S, dP of step t+1.

            The producer loads one extra (harmless, in-bounds) kv tile so step
            t+1 always exists; its scores are computed and dropped.
            """
            plgpu.barrier_wait(full_bar.at[0])

            def first(accs):
                issue_scores(0, *accs)
                return accs[0][...], accs[1][...]

            def step_body(step, carry, mask):
                slot, next_slot = lax.rem(step, stages), lax.rem(step + 1, stages)
                plgpu.barrier_wait(full_bar.at[next_slot])

                def overlapped(accs):
                    issue_scores(next_slot, *accs)
                    issue_dq(dq_acc, step, slot, *carry, mask)
                    return accs[0][...], accs[1][...]  # waits for dQ of this step too

                scores = pl.run_scoped(overlapped, score_accs)
                plgpu.barrier_arrive(consumed_bar.at[slot])
                return scores

            first_scores = pl.run_scoped(first, score_accs)
            tiles.walk_row(mb, mh, q_tile, step_body, first_scores, masked=masked)
            plgpu.barrier_arrive(consumed_bar.at[lax.rem(n_steps, stages)])
            return dq_acc[...]

        def accumulate(dq_acc):
            dq = (walk_overlapped if cfg.overlap else walk)(dq_acc) * params.softmax_scale
            # Q is no longer read: reuse its tile to stage the result.
            q_smem.at[wg][...] = dq.astype(dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(q_smem.at[wg], dq_ref.at[b, q_rows, hq])
            plgpu.wait_smem_to_gmem(0)

        pl.run_scoped(accumulate, plgpu.ACC((bq, shp.head_dim), jnp.float32))

    run_consumers(wg, wgs, consumer, static=cfg.static_warpgroups)


def dq_kernel_call(
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
    """Runs the dQ kernel on padded inputs.

    Args:
      q, do: ``[B, Sq_pad, Hq, D]`` fp16/bf16, ``Sq_pad % (compute_wgs * block_q_dq) == 0``.
      k, v: ``[B, Sk_pad, Hkv, D]``, ``Sk_pad % block_kv_dq == 0``.
      lse2, delta: f32 ``[B, Hq, Sq_pad]`` (see ``prepare_lse``).
      meta: forward :class:`~fa3_jax.masks.TileMetadata` with
        ``tile_q == compute_wgs * block_q_dq`` and ``tile_k == block_kv_dq``.
      slopes: f32 ``[B or 1, Hq]`` when ``params.has_alibi``.
      segments: int32 ``([B, Sq_pad], [B, Sk_pad])`` when ``params.has_segments``.

    Returns:
      dq ``[B, Sq_pad, Hq, D]`` in q's dtype.
    """
    batch, _, heads_q, head_dim = q.shape
    heads_kv = k.shape[2]
    dtype = q.dtype
    bq, bk, stages, wgs = cfg.block_q_dq, cfg.block_kv_dq, cfg.stages, cfg.compute_wgs
    masked = needs_element_masks(
        params.spec, tile_k=cfg.block_kv_dq, has_segments=params.has_segments
    )
    meta_operands = tile_list_operands(meta, masked)
    shp = _Shapes(
        head_dim=head_dim,
        group=heads_q // heads_kv,
        meta_b=meta.index.shape[0],
        meta_h=meta.index.shape[1],
        slope_b=1 if slopes is None else slopes.shape[0],
        n_q_tiles=meta.n_rows,
        n_cols=meta.n_cols,
        meta_operands=len(meta_operands),
    )
    tr = smem_transforms(jnp.dtype(dtype).itemsize)
    seg = params.has_segments
    scratch = (
        plgpu.SMEM((wgs, bq, head_dim), dtype, transforms=tr),  # Q
        plgpu.SMEM((wgs, bq, head_dim), dtype, transforms=tr),  # dO
        plgpu.SMEM((wgs, bq), jnp.float32),  # lse
        plgpu.SMEM((wgs, bq), jnp.float32),  # delta
        plgpu.SMEM((wgs, bq), jnp.int32) if seg else None,  # q segment ids
        plgpu.SMEM((stages, bk, head_dim), dtype, transforms=tr),  # K ring
        plgpu.SMEM((stages, bk, head_dim), dtype, transforms=tr),  # V ring
        plgpu.SMEM((stages, bk), jnp.int32) if seg else None,  # kv segment ids ring
        None if cfg.register_operands else plgpu.SMEM((wgs, bq, bk), dtype, transforms=tr),
    )
    barriers = (
        plgpu.Barrier(num_arrivals=5 if seg else 4, num_barriers=wgs),
        plgpu.Barrier(num_arrivals=3 if seg else 2, num_barriers=stages),
        plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
    )
    # Mosaic GPU launches the grid's last axis as blockIdx.x (neighbouring CTAs).
    grid, grid_names = (batch, heads_q, meta.n_rows), ("batch", "head", "q")
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
        out_type=jax.ShapeDtypeStruct(q.shape, dtype),
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
    return kernel(*operands)
