"""dK/dV kernel: each CTA owns a kv tile and walks the q tiles that see it.

Grid: (kv tiles, kv heads, batch). A producer warpgroup streams Q, dO, lse,
delta (and q segment ids) of every visited q tile of every query head in the
GQA group through a ring of SMEM slots with TMA; ``compute_wgs`` consumer
warpgroups each own ``block_kv_dkv`` kv rows and accumulate dK and dV in fp32
registers over the whole walk, so GQA sums and the q-tile order are fixed.

Per visited q tile, a consumer computes (transposed so kv rows are the
wgmma M dimension):  S^T = K Q^T,  dP^T = V dO^T,  P^T = exp2(S^T - lse),
dS^T = P^T (dP^T - delta),  dV += P^T dO,  dK += dS^T Q.

With ``cfg.dq != 'kernel'`` the kernel also produces dQ (FA3's five GEMMs):
each consumer stages dS^T in SMEM and computes an fp32 part of dQ_tile = dS K,
which it adds into ``dq_acc`` with a TMA reduce-add (``'atomic'``) or stores to
its own slot (``'partials'``). dQ leaves unscaled. Which part:
- shared (``D / compute_wgs`` columns span a whole 128-byte swizzle, e.g.
  D=128): the consumers meet at a barrier once every dS^T is staged, and
  consumer ``w`` computes columns ``[w*Dw, (w+1)*Dw)`` from every consumer's
  dS^T and K rows: one add per q tile and column block;
- own (D=64 with two consumers, where a 32-column block would need a
  narrower swizzle than wgmma's other operands): each consumer computes all
  D columns from its own kv rows, so two adds land on each dQ tile.
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
from fa3_jax._mosaic.common import needs_element_masks
from fa3_jax.config import BackwardConfig

__all__ = ["dkdv_kernel_call", "smem_transforms"]

_DQ_CHUNK = 64  # dQ columns per wgmma accumulator (32 fp32 registers per thread)


def smem_transforms(itemsize: int):
    swizzle = 128
    return (plgpu.TilingTransform((8, swizzle // itemsize)), plgpu.SwizzleTransform(swizzle))


@dataclasses.dataclass(frozen=True)
class _Shapes:
    """Static sizes the kernel body needs (meta_*/slope_b: 1 when broadcast)."""

    head_dim: int
    group: int  # query heads per kv head
    dq_cols: int  # dQ columns each consumer computes (fused dQ only)
    dq_shared: bool  # consumers split dQ by columns over every consumer's dS^T
    meta_b: int
    meta_h: int
    slope_b: int


def _kernel(*refs, params: ScoreParams, cfg: BackwardConfig, shp: _Shapes, dtype, masked):
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, index_ref, count_ref, partial_ref = refs[:9]
    rest = list(refs[9:])
    slope_ref = rest.pop(0) if params.has_alibi else None
    qseg_ref, kseg_ref = (rest.pop(0), rest.pop(0)) if params.has_segments else (None, None)
    fused = cfg.dq != "kernel"
    dq_ref = rest.pop(0) if fused else None
    dk_ref, dv_ref, scratch, barriers = rest

    k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem = scratch[:6]
    qseg_smem, kseg_smem, p_smem, ds_smem, dq_smem = scratch[6:]
    kv_bar, full_bar, consumed_bar, ds_bar, end_bar = barriers

    bq, bk, stages, wgs = cfg.block_q_dkv, cfg.block_kv_dkv, cfg.stages, cfg.compute_wgs
    group = shp.group
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

    def walk(body, init):
        """Runs ``body(g, t, step, carry)`` over (group head, visited q tile)."""

        def per_head(g, carry):
            n = count_ref[mb, meta_h(g), kv_tile]

            def per_tile(t, carry):
                step, inner = carry
                return step + 1, body(g, t, step, inner)

            return lax.fori_loop(0, n, per_tile, carry)

        return lax.fori_loop(0, group, per_head, (jnp.int32(0), init))

    @pl.when(wg == wgs)
    def _producer():
        plgpu.set_max_registers(40, action="decrease")

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

        def issue(g, t, step, _):
            load(step, head_q(g), index_ref[mb, meta_h(g), kv_tile, t])
            return 0

        steps, _ = walk(issue, 0)
        n_loads = steps
        if overlap:
            # One extra, in-bounds q tile: the consumers' look-ahead past the walk.
            load(steps, head_q(0), index_ref[mb, meta_h(0), kv_tile, 0])
            n_loads = steps + 1

        # Observe the consumers' last release of every slot before exiting.
        @pl.loop(jnp.maximum(n_loads - stages, 0), n_loads)
        def _(step):
            plgpu.barrier_wait(consumed_bar.at[lax.rem(step, stages)])

    @pl.when(wg < wgs)
    def _consumer():
        plgpu.set_max_registers(232 if wgs == 2 else 240, action="increase")
        kv_base = (kv_tile * wgs + wg) * bk
        kv_rows = pl.ds(kv_base, bk)
        plgpu.copy_gmem_to_smem(k_ref.at[b, kv_rows, h_kv], k_smem.at[wg], kv_bar.at[wg])
        plgpu.copy_gmem_to_smem(v_ref.at[b, kv_rows, h_kv], v_smem.at[wg], kv_bar.at[wg])
        if params.has_segments:
            plgpu.copy_gmem_to_smem(kseg_ref.at[b, kv_rows], kseg_smem.at[wg], kv_bar.at[wg])
        plgpu.barrier_wait(kv_bar.at[wg])

        layout = plgpu.Layout.WGMMA
        k_pos = kv_base + plgpu.broadcasted_iota(jnp.int32, (bk, bq), 0, layout=layout)
        k_seg = None
        if params.has_segments:
            k_seg_col = plgpu.load(kseg_smem.at[wg], layout=layout.reduce(1))
            k_seg = lax.broadcast_in_dim(k_seg_col, (bk, bq), [0])

        score_accs = (plgpu.ACC((bk, bq), jnp.float32), plgpu.ACC((bk, bq), jnp.float32))

        def issue_scores(slot, s_acc, dp_acc):
            plgpu.wgmma(s_acc, k_smem.at[wg], q_smem.at[slot].T)
            plgpu.wgmma(dp_acc, v_smem.at[wg], do_smem.at[slot].T)

        def scores_now(slot):
            def run(accs):
                issue_scores(slot, *accs)
                return accs[0][...], accs[1][...]

            return pl.run_scoped(run, score_accs)

        def issue_dkdv(dk_acc, dv_acc, g, t, slot, qk, dp, ds_dst=None):
            """Softmax recomputation and dS^T of one step; issues dV, dK wgmmas (no wait).

            ``ds_dst``: SMEM tile that must receive dS^T (for the fused dQ GEMMs).
            """
            hq = head_q(g)
            qi = index_ref[mb, meta_h(g), kv_tile, t]
            part = None if not masked else partial_ref[mb, meta_h(g), kv_tile, t]
            lse2 = lax.broadcast_in_dim(
                plgpu.load(lse_smem.at[slot], layout=layout.reduce(0)), (bk, bq), [1]
            )
            delta = lax.broadcast_in_dim(
                plgpu.load(delta_smem.at[slot], layout=layout.reduce(0)), (bk, bq), [1]
            )
            q_pos = qi * bq + plgpu.broadcasted_iota(jnp.int32, (bk, bq), 1, layout=layout)
            q_seg = None
            if params.has_segments:
                q_seg = lax.broadcast_in_dim(
                    plgpu.load(qseg_smem.at[slot], layout=layout.reduce(0)), (bk, bq), [1]
                )
            slope = slope_ref[b if shp.slope_b > 1 else 0, hq] if params.has_alibi else None
            p, ds = probs_and_dlogits(
                params,
                qk,
                dp,
                lse2,
                delta,
                q_pos,
                k_pos,
                slope=slope,
                q_seg=q_seg,
                k_seg=k_seg,
                partial=part,
            )
            p_op, ds_op = p.astype(dtype), ds.astype(dtype)
            if ds_dst is None and not cfg.register_operands:
                ds_dst = ds_smem.at[wg]
            if ds_dst is not None:
                ds_dst[...] = ds_op
                ds_op = ds_op if cfg.register_operands else ds_dst
            if not cfg.register_operands:
                p_smem.at[wg][...] = p_op
                p_op = p_smem.at[wg]
            if ds_dst is not None or not cfg.register_operands:
                plgpu.commit_smem()
            plgpu.wgmma(dv_acc, p_op, do_smem.at[slot])
            plgpu.wgmma(dk_acc, ds_op, q_smem.at[slot])

        def accumulate_plain(dk_acc, dv_acc):
            def step_body(g, t, step, prev_slot):
                slot = lax.rem(step, stages)
                plgpu.barrier_wait(full_bar.at[slot])
                qk, dp = scores_now(slot)
                if cfg.defer_release:
                    # Reading S^T waited for every earlier wgmma, including the
                    # previous step's dV/dK: its slot can be released now.
                    @pl.when(step > 0)
                    def _():
                        plgpu.barrier_arrive(consumed_bar.at[prev_slot])

                issue_dkdv(dk_acc, dv_acc, g, t, slot, qk, dp)
                if not cfg.defer_release:
                    plgpu.wgmma_wait(0)
                    plgpu.barrier_arrive(consumed_bar.at[slot])
                return slot

            steps, last_slot = walk(step_body, jnp.int32(0))
            dk, dv = dk_acc[...], dv_acc[...]
            if cfg.defer_release:

                @pl.when(steps > 0)
                def _():
                    plgpu.barrier_arrive(consumed_bar.at[last_slot])

            return dk, dv

        def accumulate_overlapped(dk_acc, dv_acc):
            """Step t's softmax runs while the tensor cores compute S^T, dP^T of t+1."""
            plgpu.barrier_wait(full_bar.at[0])

            def step_body(g, t, step, carry):
                slot, next_slot = lax.rem(step, stages), lax.rem(step + 1, stages)
                plgpu.barrier_wait(full_bar.at[next_slot])

                def overlapped(accs):
                    issue_scores(next_slot, *accs)
                    issue_dkdv(dk_acc, dv_acc, g, t, slot, *carry)
                    return accs[0][...], accs[1][...]  # waits for this step's dV/dK too

                scores = pl.run_scoped(overlapped, score_accs)
                plgpu.barrier_arrive(consumed_bar.at[slot])
                return scores

            steps, _ = walk(step_body, scores_now(0))
            plgpu.barrier_arrive(consumed_bar.at[lax.rem(steps, stages)])
            return dk_acc[...], dv_acc[...]

        def dq_columns(w, buf, hq, qi):
            """Consumer ``w``'s part of this step's dQ tile (see the module docstring)."""
            cols = shp.dq_cols
            col0, sources = (w * cols, range(wgs)) if shp.dq_shared else (0, (w,))
            chunk = min(cols, _DQ_CHUNK)
            for c in range(0, cols, chunk):

                def run(acc, c=c):
                    for j in sources:
                        k_block = k_smem.at[j, :, pl.ds(col0 + c, chunk)]
                        plgpu.wgmma(acc, ds_smem.at[j, buf].T, k_block)
                    return acc[...]  # waits for this step's dV/dK wgmmas too

                dq = pl.run_scoped(run, plgpu.ACC((bq, chunk), jnp.float32))
                if c == 0:
                    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # last step's dQ store
                dq_smem.at[w, :, pl.ds(c, chunk)][...] = dq
            plgpu.commit_smem()
            rows, dq_cols = pl.ds(qi * bq, bq), pl.ds(col0, cols)
            if cfg.dq == "atomic":
                plgpu.copy_smem_to_gmem(
                    dq_smem.at[w], dq_ref.at[b, rows, hq, dq_cols], reduction_op="add"
                )
            else:
                part = kv_tile if shp.dq_shared else kv_tile * wgs + w
                plgpu.copy_smem_to_gmem(dq_smem.at[w], dq_ref.at[part, b, rows, hq, dq_cols])

        def accumulate_fused(dk_acc, dv_acc):
            def step_body(g, t, step, carry):
                slot, buf = lax.rem(step, stages), lax.rem(step, 2)
                plgpu.barrier_wait(full_bar.at[slot])
                qk, dp = scores_now(slot)
                issue_dkdv(dk_acc, dv_acc, g, t, slot, qk, dp, ds_dst=ds_smem.at[wg, buf])
                if shp.dq_shared:
                    # Every consumer's dS^T of this step is in SMEM after this
                    # barrier; the one two steps back (same buffer) is no longer read.
                    plgpu.barrier_arrive(ds_bar.at[buf])
                    plgpu.barrier_wait(ds_bar.at[buf])
                qi = index_ref[mb, meta_h(g), kv_tile, t]
                for w in range(wgs):

                    @pl.when(wg == w)
                    def _(w=w):
                        dq_columns(w, buf, head_q(g), qi)

                plgpu.barrier_arrive(consumed_bar.at[slot])
                return carry

            walk(step_body, jnp.int32(0))
            plgpu.wait_smem_to_gmem(0)
            if shp.dq_shared:
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
    dq_shared = cfg.dq_columns_shared(head_dim, itemsize)
    dq_cols = head_dim // wgs if dq_shared else head_dim
    shp = _Shapes(
        head_dim,
        heads_q // heads_kv,
        dq_cols,
        dq_shared,
        meta.index.shape[0],
        meta.index.shape[1],
        1 if slopes is None else slopes.shape[0],
    )
    tr = smem_transforms(itemsize)
    staged_p = not cfg.register_operands
    staged_ds = fused or not cfg.register_operands
    n_copies = 5 if params.has_segments else 4
    scratch = (
        plgpu.SMEM((wgs, bk, head_dim), dtype, transforms=tr),  # K
        plgpu.SMEM((wgs, bk, head_dim), dtype, transforms=tr),  # V
        plgpu.SMEM((stages, bq, head_dim), dtype, transforms=tr),  # Q ring
        plgpu.SMEM((stages, bq, head_dim), dtype, transforms=tr),  # dO ring
        plgpu.SMEM((stages, bq), jnp.float32),  # lse ring
        plgpu.SMEM((stages, bq), jnp.float32),  # delta ring
        plgpu.SMEM((stages, bq), jnp.int32) if params.has_segments else None,
        plgpu.SMEM((wgs, bk), jnp.int32) if params.has_segments else None,
        plgpu.SMEM((wgs, bk, bq), dtype, transforms=tr) if staged_p else None,  # P^T
        # dS^T: double-buffered when the other consumers read it for dQ.
        (
            plgpu.SMEM((wgs, 2, bk, bq) if fused else (wgs, bk, bq), dtype, transforms=tr)
            if staged_ds
            else None
        ),
        plgpu.SMEM((wgs, bq, dq_cols), jnp.float32, transforms=smem_transforms(4))
        if fused
        else None,  # dQ columns on their way to HBM
    )
    barriers = (
        plgpu.Barrier(num_arrivals=3 if params.has_segments else 2, num_barriers=wgs),
        plgpu.Barrier(num_arrivals=n_copies, num_barriers=stages),
        plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
        # dS^T of every consumer staged (double-buffered like dS^T itself).
        plgpu.Barrier(num_arrivals=wgs, num_barriers=2) if dq_shared and fused else None,
        plgpu.Barrier(num_arrivals=wgs) if dq_shared and fused else None,  # K reusable
    )
    out_shape = jax.ShapeDtypeStruct((batch, seq_k, heads_kv, head_dim), dtype)
    kernel = plgpu.kernel(
        functools.partial(
            _kernel,
            params=params,
            cfg=cfg,
            shp=shp,
            dtype=dtype,
            masked=needs_element_masks(
                params.spec, tile_k=cfg.tile_kv_dkv, has_segments=params.has_segments
            ),
        ),
        out_type=(out_shape, out_shape),
        scratch_types=(scratch, barriers),
        grid=(meta.n_rows, heads_kv, batch),
        grid_names=("kv", "head", "batch"),
        num_threads=wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=interpret,
    )
    operands = [q, k, v, do, lse2, delta, meta.index, meta.count, meta.partial]
    if params.has_alibi:
        operands.append(slopes)
    if params.has_segments:
        operands.extend(segments)
    if not fused:
        return (*kernel(*operands), None)
    # 'partials': one slot per kv tile, or per consumer when each adds its own rows.
    slots = (meta.n_rows * (1 if dq_shared else wgs),) if cfg.dq == "partials" else ()
    # Zero-initialised and updated in place: the kernel only adds (or stores) the
    # tiles it visits, so unvisited q rows keep dQ = 0.
    dq_acc = jax.new_ref(jnp.zeros((*slots, batch, seq_q, heads_q, head_dim), jnp.float32))
    dk, dv = kernel(*operands, dq_acc)
    dq = dq_acc[...]
    return dk, dv, dq.sum(0) if slots else dq
