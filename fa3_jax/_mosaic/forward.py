"""FlashAttention-3 forward kernel in Pallas Mosaic GPU (Hopper).

One CTA computes ``tile_q = num_consumers * block_q`` query rows of one (batch, head):

* the last warpgroup (index ``num_consumers``), the producer, gives up registers
  and streams the K/V tiles the tile metadata lists for this q tile into a
  ``num_stages`` shared-memory ring with TMA, each slot guarded by a "loaded"
  barrier (TMA) and a "free" barrier (every consumer arrives when done with it);
* warpgroups 0 … num_consumers - 1 (2, or 3 as FA3 does at head_dim 64), the
  consumers, each own ``block_q`` rows: S = Q K^T (wgmma), online softmax in
  base 2, O += P V (wgmma). With ``pingpong`` they take turns issuing GEMMs, in
  a ring of turn barriers, so one's softmax overlaps the others' GEMMs (with
  ``softmax_turns`` they take turns running their exponentials instead); with
  ``overlap`` Q K^T of the next tile is issued together with P V of this one,
  and the next softmax runs under P V.

With ``persistent`` the grid is ``num_ctas`` CTAs (default: one per SM) that
each loop over work items (q tile, head, batch), the longest causal q tiles
first, strided by the CTA count; ``tile_order`` picks whether neighbouring
items are the q tiles of one head (default, like the grid launch) or differ
in head. The ring position runs on across items, so
the producer streams the next item's K/V while the consumers finish this one;
each consumer reloads Q after its previous output store has read q_smem.

Element masks (causal/window edges, segment boundaries, key tail) are applied
only on tiles the metadata marks partial; ALiBi and softcap are fused. Output
rows past ``seq_q`` are dropped by the TMA store; K/V rows past ``seq_k`` are
zero-filled by TMA and masked. (Lengths that are not multiples of 8 are padded
by up to 7 rows first: Mosaic's tiled TMA views need whole 8-row tiles.)
Rows that see no key give 0 and lse ``-inf``.

FP8 (``ForwardStatic.fp8``, float8_e4m3fn): the same kernel with 1-byte Q/K/V tiles. FP8
wgmma reads only K-major operands, so V comes in transposed and P V reads V^T tiles; P
(e4m3) is staged through shared memory, or kept in registers relabelled in wgmma's 8-bit A
layout with V^T's keys reordered to match (:func:`_fp8_lhs`); O (bf16) gets buffers of its
own; per (batch, kv head) descales fold into the exp2 scale and the final 1/l.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.mosaic import gpu as mgpu
from jax.experimental.mosaic.gpu import utils as mgpu_utils
from jaxlib.mlir import ir
from jaxlib.mlir.dialects import arith, memref

from fa3_jax._mosaic.common import (
    LN2,
    LOG2E,
    TileLists,
    alibi_base2,
    alibi_splits,
    logits_base2,
    needs_element_masks,
    positional_visible,
    run_consumers,
    tile_list_operands,
)
from fa3_jax._mosaic.schedule import balanced_schedule
from fa3_jax.config import ForwardConfig, check_forward_fits
from fa3_jax.masks import MaskSpec, TileMetadata, positional_tile_counts

__all__ = ["LPT_L2_BYTES", "ForwardStatic", "forward_kernel_call", "fp8_key_order", "lpt_section"]

_ROW = plgpu.Layout.WGMMA.reduce(1)
_COL = plgpu.Layout.WGMMA.reduce(0)


@dataclasses.dataclass(frozen=True)
class ForwardStatic:
    """Everything static about one forward call (hashable, jit-static)."""

    spec: MaskSpec
    softmax_scale: float
    softcap: float | None
    has_alibi: bool
    alibi_per_batch: bool
    has_segments: bool
    config: ForwardConfig
    #: FP8 (e4m3) inputs: V arrives transposed (``[B, H_kv, D, S]``: FP8 wgmma reads only
    #: K-major operands), P is staged through shared memory in FP8 and O (bf16) gets buffers
    #: of its own. ``has_descale``: per (batch, kv head) dequantization scales are applied.
    fp8: bool = False
    has_descale: bool = False
    #: (block_q, block_k) of a block mask evaluated per element on partial
    #: tiles (block_q not a multiple of the q tile); None when the tile
    #: metadata alone is exact.
    element_block_mask: tuple[int, int] | None = None
    #: GPU interpret mode: the ``"dynamic"`` order steps its work counter without atomics
    #: (interpret mode does not run ``inline_mgpu``), each CTA taking every n_ctas-th item.
    interpret: bool = False
    #: Compute and store the LSE (the backward needs it); False skips it (inference).
    with_lse: bool = True


def _smem_transforms(cols: int, dtype):
    swizzle = plgpu.find_swizzle(cols * jnp.dtype(dtype).itemsize * 8)
    elems = swizzle // jnp.dtype(dtype).itemsize
    return (plgpu.TilingTransform((8, elems)), plgpu.SwizzleTransform(swizzle))


def _masked(st: ForwardStatic) -> bool:
    """Whether element masks are compiled in (some kv tile can be partial)."""
    return st.element_block_mask is not None or needs_element_masks(
        st.spec, tile_k=st.config.block_kv, has_segments=st.has_segments
    )


def _fetch_add_fn(n_ctas: int):
    """``inline_mgpu`` body: one thread adds 1 to the global work counter and stores the
    old value + ``n_ctas`` (the item after every CTA's first) in ``fetched[0]``; the
    warpgroup then syncs so all its threads read it."""

    def fetch(ctx, counter, fetched):
        del ctx
        i32 = ir.IntegerType.get_signless(32)
        mgpu_utils.warpgroup_barrier()  # every thread has read the previous value
        with mgpu_utils.single_thread(scope=mgpu_utils.ThreadSubset.WARPGROUP):
            old = mgpu_utils.inline_ptx(
                "atom.global.add.u32 $0, [$1], $2;",
                mgpu_utils.memref_ptr(counter),
                arith.constant(i32, 1),
                result_types=i32,
                has_side_effects=True,
            )
            nxt = arith.addi(old, arith.constant(i32, n_ctas))
            memref.store(nxt, fetched, [arith.constant(ir.IndexType.get(), 0)])
        mgpu_utils.warpgroup_barrier()

    return plgpu.inline_mgpu(arg_types=(plgpu.RefType(), plgpu.RefType()))(fetch)


#: FP8 P in registers: logical key ``j`` of each 16-key block is physical key ``_FP8_KEY_ORDER[j]``
#: (see :func:`_fp8_lhs`); V^T's keys are stored in this order so P V sums matching pairs.
_FP8_KEY_ORDER = np.array([0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15])


def fp8_key_order(v_t):
    """``v_t[..., S]`` (S a multiple of 16) with each 16-key block in :data:`_FP8_KEY_ORDER`:
    key ``8a + 2c + b`` of a block moves to ``4c + 2a + b``, a transpose XLA fuses into V's."""
    *lead, keys = v_t.shape
    blocks = v_t.reshape(*lead, keys // 16, 2, 4, 2)  # [..., block, a, c, b]
    return jnp.swapaxes(blocks, -3, -2).reshape(*lead, keys)


def _fp8_lhs(rows: int, cols: int):
    """``inline_mgpu``: FP8 P ``[rows, cols]`` in the softmax's WGMMA layout, relabelled (no data
    moves) as wgmma's 8-bit A-operand layout, FA3's trick. In the WGMMA layout a thread holds, per
    16-key block and row, keys ``2c, 2c + 1, 8 + 2c, 9 + 2c`` (``c`` = lane % 4); the 8-bit A
    layout wants keys ``4c … 4c + 3`` there. Calling the four bytes it has those keys permutes
    each 16-key block by :data:`_FP8_KEY_ORDER`, which the caller undoes by storing V^T's keys in
    that order (Mosaic has no relayout between the two layouts)."""

    @plgpu.inline_mgpu(
        arg_types=(plgpu.Layout.WGMMA,),
        return_type=plgpu.ShapeDtypeStruct(
            (rows, cols), jnp.float8_e4m3fn, layout=plgpu.Layout.WGMMA_8BIT
        ),
    )
    def relabel(ctx, p):
        del ctx
        target = mgpu.WGMMA_LAYOUT_8BIT
        regs = np.empty(target.registers_shape((rows, cols)), dtype=object)
        for idx in np.ndindex(regs.shape):
            # axis 1: 16-key blocks here, 8-key blocks (two per 16) in the WGMMA layout
            pair = [p.registers[(idx[0], 2 * idx[1] + e, *idx[2:])] for e in (0, 1)]
            regs[idx] = mgpu_utils.vector_concat(pair)
        return mgpu.FragmentedArray(_registers=regs, _layout=target, _is_signed=None)

    return relabel


def _kernel(st: ForwardStatic, dims, *refs):
    batch_m, heads_m, n_q_tiles, group, batch, heads, n_ctas, section, meta_operands, n_cols = dims
    cfg = st.config
    bq, bkv = cfg.block_q, cfg.block_kv
    stages = cfg.num_stages
    q_ref, k_ref, v_ref, *rest = refs
    tiles, rest = TileLists.take(rest, meta_operands, n_cols)
    if st.has_segments:
        q_seg_ref, kv_seg_ref, *rest = rest
    if st.has_alibi:
        slope_ref, *rest = rest
    if st.has_descale:
        qk_descale_ref, v_descale_ref, *rest = rest
    if st.element_block_mask is not None:
        block_ref, *rest = rest
    if cfg.tile_order == "balanced":
        schedule_ref, *rest = rest
    dynamic = cfg.tile_order == "dynamic"
    if dynamic:
        counter_ref, *rest = rest
    if st.with_lse:
        out_ref, lse_ref, scratch, barriers = rest
    else:
        out_ref, scratch, barriers = rest
    (
        q_smem,
        k_smem,
        v_smem,
        lse_smem,
        p_smem,
        q_seg_smem,
        kv_seg_smem,
        item_smem,
        fetched,
        o_smem,
    ) = scratch
    # FP8: O (bf16) has buffers of its own, indexed like Q's; else O reuses Q's.
    o_smem = q_smem if o_smem is None else o_smem
    q_bar, k_bar, v_bar, k_free, v_free, turn, item_full, item_free = barriers
    dtype, out_dtype = q_ref.dtype, out_ref.dtype
    head_dim = q_ref.shape[-1]

    wg = lax.axis_index("wg")
    n_consumers = cfg.num_consumers
    masked = _masked(st)
    total_items = batch * heads * n_q_tiles

    def work_item(i):
        """(b, h, qt) of this CTA's ``i``-th work item; longest (causal) q tiles first."""
        if not cfg.persistent:
            qt = n_q_tiles - 1 - lax.axis_index("qt")
            return lax.axis_index("b"), lax.axis_index("h"), qt
        if cfg.tile_order == "balanced":
            w = schedule_ref[lax.axis_index("cta"), 1 + i]
            pair = lax.div(w, n_q_tiles)
            return lax.div(pair, heads), lax.rem(pair, heads), lax.rem(w, n_q_tiles)
        w = lax.axis_index("cta") + i * n_ctas
        if cfg.tile_order == "lpt":
            return locate(w)
        if cfg.tile_order == "q_tiles":
            # Neighbouring items are the q tiles of one head: they share its K/V in L2.
            rest_w = lax.div(w, n_q_tiles)
            qt = n_q_tiles - 1 - lax.rem(w, n_q_tiles)
            return lax.div(rest_w, heads), lax.rem(rest_w, heads), qt
        per_tile = batch * heads
        rest_w = lax.rem(w, per_tile)
        # Neighbouring CTAs take neighbouring heads: GQA groups share K/V in L2.
        return lax.div(rest_w, heads), lax.rem(rest_w, heads), n_q_tiles - 1 - lax.div(w, per_tile)

    def locate(w):
        """(b, h, qt) of global item ``w`` in FA3's LPT order (``"lpt"`` and ``"dynamic"``):
        sections of ``section`` (batch, head) pairs whose K/V share L2; in each, the longest
        (last causal) q tiles of all its pairs first."""
        per_section = section * n_q_tiles
        r = lax.rem(w, per_section)
        pair = lax.div(w, per_section) * section + lax.rem(r, section)
        return lax.div(pair, heads), lax.rem(pair, heads), n_q_tiles - 1 - lax.div(r, section)

    def item_at(i, w):
        """(b, h, qt) of this CTA's ``i``-th item (global item ``w`` in the dynamic order)."""
        return locate(w) if dynamic else work_item(i)

    def first_item():
        """Global index of a dynamic CTA's first item (every CTA starts with its own)."""
        return lax.axis_index("cta").astype(jnp.int32)

    def item_count():
        """This CTA's work items (persistent); the grid never exceeds the work, so >= 1."""
        if cfg.tile_order == "balanced":
            return schedule_ref[lax.axis_index("cta"), 0]
        return lax.div(batch * heads * n_q_tiles - 1 - lax.axis_index("cta"), n_ctas) + 1

    def for_each_item(body, carry):
        """Runs ``body(i, carry)`` over this CTA's work items (one without ``persistent``)."""
        if not cfg.persistent:
            return body(0, carry)
        return lax.fori_loop(0, item_count(), body, carry)

    def slot_of(base, j):
        """Ring slot of kv entry ``j`` of an item whose first entry is the ring's ``base``-th."""
        if cfg.persistent:
            j = base + j
        return j if isinstance(j, int) else lax.rem(j, stages)

    def tile_count(b, h, qt):
        return tiles.count(b if batch_m > 1 else 0, h if heads_m > 1 else 0, qt)

    def when(cond, fn):
        """``pl.when(cond)(fn)``; a Python bool (static warpgroup index) decides at trace time."""
        if isinstance(cond, bool):
            if cond:
                fn()
        else:
            pl.when(cond)(fn)

    def consumer(wg):
        """One consumer warpgroup's body; ``wg``: its index, traced or a Python int (see
        ``ForwardConfig.static_warpgroups``)."""
        plgpu.set_max_registers(cfg.consumer_registers, action="increase")
        n_items = item_count() if cfg.persistent else 1

        # Turns: with ``pingpong`` the consumers take turns issuing their GEMMs (a ring of
        # turn barriers, one per warpgroup: FA3's scheduler barriers), softmaxes unordered,
        # so one warpgroup's softmax overlaps the others' GEMMs; with ``softmax_turns`` they
        # take turns running their softmax's exponentials instead (GEMMs unordered), so one
        # warpgroup's exponentials overlap the others' GEMMs and row maxima. Every consumer
        # takes the same number of turns per item, so in persistent mode the alternation
        # simply continues from one item to the next.
        turns = cfg.pingpong or cfg.softmax_turns

        def take_turn(ordered):
            """Waits for this warpgroup's turn where ``ordered`` (a static config switch)."""
            if ordered:
                plgpu.barrier_wait(turn.at[wg])

        def pass_turn(ordered):
            if ordered:
                plgpu.barrier_arrive(turn.at[lax.rem(wg + 1, n_consumers)])

        # Without softcap/ALiBi the scale is folded into the softmax's exp2 FMA:
        # logits stay raw and are multiplied by ``fold`` there.
        fold = st.softmax_scale * LOG2E if st.softcap is None and not st.has_alibi else None

        def softmax(s, m_i, l_i, fold):
            """Online softmax step: (p in the input dtype, alpha, m_new, l_new); ``fold``:
            the item's scale folded into the exp2 FMA, or None."""
            row_max = s.max(axis=1)
            m_new = jnp.maximum(m_i, row_max if fold is None else row_max * fold)
            # A row with no visible key so far keeps m = -inf; shift by 0 instead.
            m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)
            alpha = jnp.exp2(m_i - m_use)
            s2 = s if fold is None else s * fold  # one FMA with the subtraction below
            take_turn(cfg.softmax_turns)
            p = jnp.exp2(s2 - lax.broadcast_in_dim(m_use, s.shape, [0]))
            pass_turn(cfg.softmax_turns)
            l_new = l_i * alpha + p.sum(axis=1)
            return p.astype(dtype), alpha, m_new, l_new

        def a_operand(p):
            """P V's A operand from the softmax's P: P itself, or FP8 P relabelled in wgmma's
            8-bit A layout (:func:`_fp8_lhs`; V^T's keys are stored to match)."""
            return _fp8_lhs(bq, bkv)(p) if st.fp8 else p

        def v_operand(slot):
            """P V's B operand: V ``[bkv, D]``; FP8 holds V^T (K-major) and reads it transposed."""
            return v_smem.at[slot].transpose((1, 0)) if st.fp8 else v_smem.at[slot]

        def qk(slot, qb):
            def body(acc_ref):
                take_turn(cfg.pingpong)
                plgpu.wgmma(acc_ref, q_smem.at[qb], k_smem.at[slot].transpose((1, 0)))
                pass_turn(cfg.pingpong)
                return acc_ref[...]

            return pl.run_scoped(body, plgpu.ACC((bq, bkv), jnp.float32))

        def pv(acc, p, slot):
            """acc + P @ V[slot] (acc already rescaled; p in the input dtype)."""
            if cfg.p_in_smem:
                p_smem.at[wg][...] = p
                plgpu.commit_smem()
                lhs = p_smem.at[wg]
            else:
                lhs = a_operand(p)

            def issue(acc_ref):
                take_turn(cfg.pingpong)
                plgpu.wgmma(acc_ref, lhs, v_operand(slot))
                pass_turn(cfg.pingpong)

            if st.interpret:
                # No pre-initialized accumulators in interpret mode: P V into a fresh one.
                def fresh(acc_ref):
                    issue(acc_ref)
                    return acc_ref[...]

                return acc + pl.run_scoped(fresh, plgpu.ACC((bq, head_dim), jnp.float32))
            return pl.run_state(issue)(plgpu.ACC.init(acc))

        def q_buffer(i):
            """This warpgroup's Q (then O) buffer and barrier for item ``i``: persistent CTAs
            that prefetch Q alternate two, so the next item's Q loads while this one runs."""
            if cfg.q_buffers == 1:
                return wg
            return lax.rem(i, 2) * n_consumers + wg

        def load_q(i, w=None):
            b, h, qt = item_at(i, w)
            rows = pl.ds(qt * cfg.tile_q + wg * bq, bq)
            buf = q_buffer(i)
            plgpu.copy_gmem_to_smem(q_ref.at[b, rows, h], q_smem.at[buf], q_bar.at[buf])
            if st.has_segments:
                # The rows' segment ids travel with Q (prefetched with it, same barrier).
                plgpu.copy_gmem_to_smem(q_seg_ref.at[b, rows], q_seg_smem.at[buf], q_bar.at[buf])

        def load_next_q(i, w_next=None):
            """Starts item ``i + 1``'s Q load into the buffer the last output store read from,
            once that store has read it (its LSE buffer is free then too); ``w_next``: that
            item's global index in the dynamic order."""
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            if dynamic:
                pl.when(w_next < total_items)(lambda: load_q(i + 1, w_next))
            else:
                pl.when(i + 1 < n_items)(lambda: load_q(i + 1))

        def prefetch_q(i, w_next=None):
            """Persistent with two Q buffers: item ``i + 1``'s Q loads into the buffer item
            ``i - 1`` stored its output from (called once item ``i``'s Q is in use)."""
            if cfg.q_buffers == 2:
                load_next_q(i, w_next)

        def consume_item(i, base, w=None, w_next=None):
            """Computes one q tile's rows of this warpgroup; returns the ring position after it.
            ``w``, ``w_next``: global indices of this item and the next (dynamic order)."""
            b, h, qt = item_at(i, w)
            bm = b if batch_m > 1 else 0
            hm = h if heads_m > 1 else 0
            n_tiles = tile_count(b, h, qt)
            row0 = qt * cfg.tile_q + wg * bq
            qb = q_buffer(i)
            if not cfg.persistent:
                load_q(i)

            def positions(kv_tile):
                """Query/key positions of a tile, rebuilt where used (not live across the loop)."""
                iota = functools.partial(
                    plgpu.broadcasted_iota, jnp.int32, (bq, bkv), layout=plgpu.Layout.WGMMA
                )
                return iota(0) + row0, iota(1) + kv_tile * bkv

            if st.has_alibi:
                slope = slope_ref[b if st.alibi_per_batch else 0, h]
            # The item's logit scale folded into exp2 (FP8: times q's and k's dequant scales).
            fold_i = fold
            if st.has_descale:
                kv_head = lax.div(h, group)
                qk_descale, v_descale = qk_descale_ref[b, kv_head], v_descale_ref[b, kv_head]
                if fold is not None:
                    fold_i = fold * qk_descale
            signed = st.has_alibi and alibi_splits(st.spec)
            if signed:
                # ALiBi is c * (k - row0 - offset) (a key term) - c * (q - row0) (a query
                # term, constant along the row, so the softmax drops it; the lse gets it
                # back at the end).
                c = slope * LOG2E
                k_iota = plgpu.broadcasted_iota(jnp.int32, (bkv,), 0, layout=_COL)

            def tile_info(j):
                """(kv tile index, partial flag) of entry ``j``; loaded early to hide latency."""
                kv_tile = tiles.index(bm, hm, qt, j)
                return kv_tile, tiles.partial(bm, hm, qt, j) if masked else None

            def tile_logits(s, info, slot):
                """Logits of one kv tile: base 2, or raw when ``fold`` is set."""
                kv_tile, is_partial = info
                if fold is None:
                    if st.has_descale:
                        s = s * qk_descale
                    s = logits_base2(s, softmax_scale=st.softmax_scale, softcap=st.softcap)
                if signed:
                    k_from_row0 = kv_tile * bkv - row0 - st.spec.offset + k_iota
                    key_term = c * k_from_row0.astype(jnp.float32)
                    s = s + lax.broadcast_in_dim(key_term, s.shape, [1])
                elif st.has_alibi:
                    s = s + alibi_base2(*positions(kv_tile), slope, spec=st.spec)
                if not masked:
                    return s

                def apply_masks(s):
                    visible = positional_visible(*positions(kv_tile), spec=st.spec)
                    if st.has_segments:
                        # Read here, on partial tiles only (H100, 2026-11-27, benchmarks/
                        # NOTES.md "Session 14": +6% on 8 documents in 16k, +7% on 2k rows
                        # against reading them every step).
                        kv_seg = plgpu.load(kv_seg_smem.at[slot], layout=_COL)
                        q_seg = plgpu.load(q_seg_smem.at[qb], layout=_ROW)
                        q_ids = lax.broadcast_in_dim(q_seg, (bq, bkv), [0])
                        kv_ids = lax.broadcast_in_dim(kv_seg, (bq, bkv), [1])
                        visible = visible & (q_ids == kv_ids)
                    if st.element_block_mask is not None:
                        # This warpgroup's rows lie in one q block and the kv tile in
                        # one k block (both checked by the caller): one bit.
                        mask_bq, mask_bk = st.element_block_mask
                        bit = block_ref[
                            b if block_ref.shape[0] > 1 else 0,
                            h if block_ref.shape[1] > 1 else 0,
                            # Rows past seq_q (dropped at the store) clamp to the last block.
                            jnp.minimum(row0 // mask_bq, block_ref.shape[2] - 1),
                            kv_tile * bkv // mask_bk,
                        ]
                        visible = visible & (bit != 0)
                    return jnp.where(visible, s, -jnp.inf)

                return lax.cond(is_partial != 0, apply_masks, lambda s: s, s)

            def logits_freeing_k(s, info, slot):
                """:func:`tile_logits` of the tile in ``slot``, freeing its K slot as soon as
                it may be: at once (S is in registers), or with segment ids after the logits
                (the partial-tile branch reads the slot's kv ids)."""
                if not st.has_segments:
                    plgpu.barrier_arrive(k_free.at[slot])
                logits = tile_logits(s, info, slot)
                if st.has_segments:
                    plgpu.barrier_arrive(k_free.at[slot])
                return logits

            def plain_step(j, carry):
                acc, m_i, l_i = carry
                slot = slot_of(base, j)
                info = tile_info(j)
                plgpu.barrier_wait(k_bar.at[slot])
                s = qk(slot, qb)
                p, alpha, m_i, l_i = softmax(logits_freeing_k(s, info, slot), m_i, l_i, fold_i)
                acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
                plgpu.barrier_wait(v_bar.at[slot])
                acc = pv(acc, p, slot)
                plgpu.barrier_arrive(v_free.at[slot])
                return acc, m_i, l_i

            def overlap_step(j, carry):
                # carry: P of tile j (input dtype, from the previous step) and the
                # accumulator already rescaled for it. Issue Q K^T of tile j + 1 and
                # P V of tile j together, then run the softmax of tile j + 1 under P V.
                acc, p, m_i, l_i = carry
                slot = slot_of(base, j)
                nxt = slot_of(base, j + 1)
                info = tile_info(j + 1)
                plgpu.barrier_wait(k_bar.at[nxt])
                plgpu.barrier_wait(v_bar.at[slot])
                p16 = p  # this tile's P (``body`` rebinds ``p`` to the next tile's)
                if cfg.p_in_smem:
                    p_smem.at[wg][...] = p16
                    plgpu.commit_smem()

                def body(s_ref, o_ref):
                    if not st.interpret:
                        o_ref[...] = acc
                    take_turn(cfg.pingpong)
                    plgpu.wgmma(s_ref, q_smem.at[qb], k_smem.at[nxt].transpose((1, 0)))
                    lhs = p_smem.at[wg] if cfg.p_in_smem else a_operand(p16)
                    plgpu.wgmma(o_ref, lhs, v_operand(slot))
                    pass_turn(cfg.pingpong)
                    s = plgpu.wgmma_accumulator_load(s_ref, wait_n=1)
                    p, alpha, m_new, l_new = softmax(
                        logits_freeing_k(s, info, nxt), m_i, l_i, fold_i
                    )
                    return o_ref[...], p, alpha, m_new, l_new

                o, p, alpha, m_i, l_i = pl.run_scoped(
                    body,
                    plgpu.ACC((bq, bkv), jnp.float32),
                    plgpu.ACC((bq, head_dim), jnp.float32),
                )
                plgpu.barrier_arrive(v_free.at[slot])
                if st.interpret:
                    o = o + acc
                acc = o * lax.broadcast_in_dim(alpha, o.shape, [0])
                return acc, p, m_i, l_i

            m_i = plgpu.layout_cast(jnp.full((bq,), -jnp.inf, jnp.float32), _ROW)
            l_i = plgpu.layout_cast(jnp.full((bq,), 0.0, jnp.float32), _ROW)
            acc = plgpu.layout_cast(jnp.full((bq, head_dim), 0.0, jnp.float32), plgpu.Layout.WGMMA)
            plgpu.barrier_wait(q_bar.at[qb])
            if cfg.overlap:

                def run_tiles(carry):
                    acc, m_i, l_i = carry
                    info = tile_info(0)
                    first = slot_of(base, 0)
                    plgpu.barrier_wait(k_bar.at[first])
                    s = qk(first, qb)
                    p, _, m_i, l_i = softmax(logits_freeing_k(s, info, first), m_i, l_i, fold_i)
                    prefetch_q(i, w_next)
                    acc, p, m_i, l_i = lax.fori_loop(
                        0, n_tiles - 1, overlap_step, (acc, p, m_i, l_i)
                    )
                    last = slot_of(base, n_tiles - 1)
                    plgpu.barrier_wait(v_bar.at[last])
                    acc = pv(acc, p, last)
                    plgpu.barrier_arrive(v_free.at[last])
                    return acc, m_i, l_i

                def no_tiles(carry):
                    prefetch_q(i, w_next)
                    return carry

                acc, m_i, l_i = lax.cond(n_tiles > 0, run_tiles, no_tiles, (acc, m_i, l_i))
            else:
                prefetch_q(i, w_next)
                acc, m_i, l_i = lax.fori_loop(0, n_tiles, plain_step, (acc, m_i, l_i))

            empty = l_i == 0.0
            inv_l = 1.0 / jnp.where(empty, 1.0, l_i)
            if st.has_descale:
                inv_l = inv_l * v_descale
            out = acc * lax.broadcast_in_dim(inv_l, acc.shape, [0])
            o_smem.at[qb][...] = out.astype(out_dtype)
            if st.with_lse:
                lse2 = m_i + jnp.log2(jnp.where(empty, 1.0, l_i))
                if signed:
                    q_iota = plgpu.broadcasted_iota(jnp.int32, (bq,), 0, layout=_ROW)
                    lse2 = lse2 - c * q_iota.astype(jnp.float32)
                lse = jnp.where(empty, -jnp.inf, lse2 * LN2)
                lse_smem.at[wg][...] = lse
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(o_smem.at[qb], out_ref.at[b, pl.ds(row0, bq), h])
            if st.with_lse:
                plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[b, h, pl.ds(row0, bq)])
            if cfg.persistent and cfg.q_buffers == 1:
                load_next_q(i)
            return base + n_tiles

        if turns:
            # Warpgroup 0 goes first.
            when(wg == n_consumers - 1, lambda: plgpu.barrier_arrive(turn.at[0]))
        if dynamic:
            load_q(0, first_item())

            def next_consumed(carry):
                # The producer published item i + 1's index when it started item i.
                i, base, w = carry
                slot = lax.rem(i + 1, 2)
                plgpu.barrier_wait(item_full.at[slot])
                w_next = item_smem[slot]
                plgpu.barrier_arrive(item_free.at[slot])
                return i + 1, consume_item(i, base, w, w_next), w_next

            lax.while_loop(
                lambda carry: carry[2] < total_items,
                next_consumed,
                (jnp.int32(0), jnp.int32(0), first_item()),
            )
        else:
            if cfg.persistent:
                load_q(0)
            for_each_item(consume_item, jnp.int32(0) if cfg.persistent else 0)
        plgpu.wait_smem_to_gmem(0)
        if turns:
            # Consume the last warpgroup's last hand-over (every barrier phase is observed).
            when(wg == 0, lambda: plgpu.barrier_wait(turn.at[0]))

    run_consumers(wg, n_consumers, consumer, static=cfg.static_warpgroups)

    @pl.when(wg == n_consumers)
    def _producer():
        plgpu.set_max_registers(cfg.producer_registers, action="decrease")

        def produce_item(i, base, w=None):
            """Streams one item's kv tiles into the ring; returns the ring position after it."""
            b, h, qt = item_at(i, w)
            bm = b if batch_m > 1 else 0
            hm = h if heads_m > 1 else 0
            n_tiles = tile_count(b, h, qt)
            kv_head = lax.div(h, group)

            @pl.loop(0, n_tiles)
            def _load(j):
                slot = slot_of(base, j)
                rows = pl.ds(tiles.index(bm, hm, qt, j) * cfg.block_kv, cfg.block_kv)
                # The slot's previous tile (this item's or an earlier one's) must be released.
                reused = base + j >= stages if cfg.persistent else j >= stages

                @pl.when(reused)
                def _():
                    plgpu.barrier_wait(k_free.at[slot])
                    if st.has_segments:
                        # The consumers read the slot's segment ids with plain loads
                        # (generic proxy): fence them before TMA (async proxy) rewrites it.
                        plgpu.commit_smem()

                plgpu.copy_gmem_to_smem(k_ref.at[b, rows, kv_head], k_smem.at[slot], k_bar.at[slot])
                if st.has_segments:
                    plgpu.copy_gmem_to_smem(
                        kv_seg_ref.at[b, rows], kv_seg_smem.at[slot], k_bar.at[slot]
                    )

                @pl.when(reused)
                def _():
                    plgpu.barrier_wait(v_free.at[slot])

                # FP8: the same keys are columns of V^T.
                v_tile = v_ref.at[b, kv_head, :, rows] if st.fp8 else v_ref.at[b, rows, kv_head]
                plgpu.copy_gmem_to_smem(v_tile, v_smem.at[slot], v_bar.at[slot])

            return base + n_tiles

        def next_item(w):
            """Global index of the item after ``w``: from the work counter, or (interpret
            mode) every n_ctas-th."""
            if st.interpret:
                return w + n_ctas
            _fetch_add_fn(n_ctas)(counter_ref, fetched)
            return fetched[0]

        def next_produced(carry):
            # Publish item k + 1's index (publication k + 1, slot (k + 1) % 2, once the
            # consumers have read publication k - 1 from it), then stream item k.
            k, base, w = carry
            slot = lax.rem(k + 1, 2)
            pl.when(k >= 2)(lambda: plgpu.barrier_wait(item_free.at[slot]))
            w_next = next_item(w)
            item_smem[slot] = w_next
            plgpu.barrier_arrive(item_full.at[slot])
            return k + 1, produce_item(k, base, w), w_next

        if dynamic:
            n_done, total, _ = lax.while_loop(
                lambda carry: carry[2] < total_items,
                next_produced,
                (jnp.int32(0), jnp.int32(0), first_item()),
            )
            # Observe the consumers' reads of the last two publications.
            pl.when(n_done >= 2)(lambda: plgpu.barrier_wait(item_free.at[lax.rem(n_done - 1, 2)]))
            plgpu.barrier_wait(item_free.at[lax.rem(n_done, 2)])
        else:
            total = for_each_item(produce_item, jnp.int32(0) if cfg.persistent else 0)

        # Observe the releases of the last slots so every barrier phase is
        # consumed before the CTA exits.
        @pl.loop(jnp.maximum(total - stages, 0), total)
        def _drain(j):
            slot = lax.rem(j, stages)
            plgpu.barrier_wait(k_free.at[slot])
            plgpu.barrier_wait(v_free.at[slot])


#: L2 bytes the ``"lpt"`` order lets one section's K/V take (half the H100's 50 MB).
LPT_L2_BYTES = 25 * 2**20


def lpt_section(pairs: int, kv_bytes_per_head: int) -> int:
    """(batch, head) pairs per ``"lpt"`` section: the largest divisor of ``pairs`` whose
    K/V fit in :data:`LPT_L2_BYTES` (at least 1)."""
    fit = max(1, LPT_L2_BYTES // max(1, kv_bytes_per_head))
    return max(d for d in range(1, min(pairs, fit) + 1) if pairs % d == 0)


def _sm_count() -> int:
    """SMs of the default GPU: the persistent grid's size; 132 (H100 SXM) without a GPU."""
    try:
        return jax.devices("gpu")[0].core_count
    except RuntimeError:
        return 132


def _pad_seq(x_BSHD, multiple: int = 8):
    """Pads the sequence axis to a multiple of ``multiple`` (no copy when it is one)."""
    pad = -x_BSHD.shape[1] % multiple
    if not pad:
        return x_BSHD
    return jnp.pad(x_BSHD, ((0, 0), (0, pad), (0, 0), (0, 0)))


def forward_kernel_call(
    st: ForwardStatic,
    q_BSHD,
    k_BSHD,
    v_BSHD,
    meta: TileMetadata,
    segment_ids=None,
    alibi_slopes_BH=None,
    block_mask_int=None,
    descale_BG=None,
):
    """Runs the kernel: ``(out_BSHD in q.dtype (bf16 for FP8), lse_BHS float32 natural log)``;
    lse is None unless ``st.with_lse``.

    Args:
      st: static description (mask spec, scale, softcap, config, ...).
      q_BSHD: ``[batch, seq_q, heads_q, head_dim]`` fp16/bf16, or float8_e4m3fn (``st.fp8``).
      k_BSHD, v_BSHD: ``[batch, seq_k, heads_kv, head_dim]``, q's dtype.
      meta: tile metadata with ``tile_q == config.tile_q`` and
        ``tile_k == config.block_kv``.
      segment_ids: ``(q_BS, kv_BS)`` int32 or None.
      alibi_slopes_BH: float32 ``[batch or 1, heads_q]`` or None.
      block_mask_int: int32 ``[B or 1, H or 1, n_q_blocks, n_k_blocks]`` when
        ``st.element_block_mask`` is set.
      descale_BG: FP8 only, ``(q, k, v)`` float32 dequantization scales ``[B, H_kv]`` when
        ``st.has_descale``.
    """
    cfg = st.config
    batch, seq_q, heads_q, head_dim = q_BSHD.shape
    seq_k, heads_kv = k_BSHD.shape[1], k_BSHD.shape[2]
    dtype = q_BSHD.dtype
    out_dtype = jnp.bfloat16 if st.fp8 else dtype
    check_forward_fits(cfg, head_dim, jnp.dtype(dtype).itemsize, segments=st.has_segments)
    if (meta.tile_q, meta.tile_k) != (cfg.tile_q, cfg.block_kv) or meta.transposed:
        raise ValueError(
            f"tile metadata tiles ({meta.tile_q}, {meta.tile_k}) do not match the config's "
            f"({cfg.tile_q}, {cfg.block_kv})"
        )
    n_q_tiles = pl.cdiv(seq_q, cfg.tile_q)
    padded_q = n_q_tiles * cfg.tile_q
    # Mosaic's tiled TMA views need sequence lengths that are multiples of the
    # 8-row tile; other lengths are padded by at most 7 rows (masked / dropped).
    q_in, k_in = _pad_seq(q_BSHD), _pad_seq(k_BSHD)
    if st.fp8:
        # V^T [B, H_kv, D, S_pad] (FP8 wgmma reads B K-major), keys zero-padded to whole tiles;
        # with P in registers each 16-key block in _fp8_lhs's order (same pass).
        v_in = jnp.pad(
            jnp.transpose(v_BSHD, (0, 2, 3, 1)),
            ((0, 0), (0, 0), (0, 0), (0, -seq_k % cfg.block_kv)),
        )
        if not cfg.p_in_smem:
            v_in = fp8_key_order(v_in)
    else:
        v_in = _pad_seq(v_BSHD)
    meta_inputs = tile_list_operands(meta, _masked(st))
    inputs = [q_in, k_in, v_in, *meta_inputs]
    if st.has_segments:
        # Ids are read straight into registers: pad them (not q/k/v) to whole tiles.
        q_seg, kv_seg = segment_ids
        padded_k = pl.cdiv(seq_k, cfg.block_kv) * cfg.block_kv
        inputs.append(jnp.pad(q_seg.astype(jnp.int32), ((0, 0), (0, padded_q - seq_q))))
        inputs.append(jnp.pad(kv_seg.astype(jnp.int32), ((0, 0), (0, padded_k - seq_k))))
    if st.has_alibi:
        inputs.append(jnp.asarray(alibi_slopes_BH, jnp.float32))
    if st.has_descale:
        descale_q, descale_k, descale_v = (jnp.asarray(x, jnp.float32) for x in descale_BG)
        inputs += [descale_q * descale_k, descale_v]
    if st.element_block_mask is not None:
        mask_bq, mask_bk = st.element_block_mask
        if mask_bq % cfg.block_q or mask_bk % cfg.block_kv:
            raise ValueError(
                f"element block masks need block_q % {cfg.block_q} == 0 and block_k % "
                f"{cfg.block_kv} == 0, got {st.element_block_mask}"
            )
        inputs.append(block_mask_int)

    bq, bkv, stages, n_consumers = cfg.block_q, cfg.block_kv, cfg.num_stages, cfg.num_consumers
    q_buffers = cfg.q_buffers
    dynamic = cfg.tile_order == "dynamic"
    scratch = (
        # Q, reused for O; persistent CTAs that prefetch Q alternate two per warpgroup.
        plgpu.SMEM(
            (q_buffers * n_consumers, bq, head_dim),
            dtype,
            transforms=_smem_transforms(head_dim, dtype),
        ),
        plgpu.SMEM((stages, bkv, head_dim), dtype, transforms=_smem_transforms(head_dim, dtype)),
        # V, or FP8's V^T
        plgpu.SMEM((stages, head_dim, bkv), dtype, transforms=_smem_transforms(bkv, dtype))
        if st.fp8
        else plgpu.SMEM(
            (stages, bkv, head_dim), dtype, transforms=_smem_transforms(head_dim, dtype)
        ),
        plgpu.SMEM((n_consumers, bq), jnp.float32) if st.with_lse else None,
        plgpu.SMEM((n_consumers, bq, bkv), dtype, transforms=_smem_transforms(bkv, dtype))
        if cfg.p_in_smem
        else None,
        # Segment ids of the rows in each Q buffer, loaded with it.
        plgpu.SMEM((q_buffers * n_consumers, bq), jnp.int32) if st.has_segments else None,
        plgpu.SMEM((stages, bkv), jnp.int32) if st.has_segments else None,
        # dynamic order: two item-index slots handed from the producer to the consumers,
        # and the producer's fetched index
        plgpu.SMEM((2,), jnp.int32) if dynamic else None,
        plgpu.SMEM((1,), jnp.int32) if dynamic else None,
        # FP8: O in bf16 (Q's 1-byte buffers are too small), one per Q buffer
        plgpu.SMEM(
            (q_buffers * n_consumers, bq, head_dim),
            out_dtype,
            transforms=_smem_transforms(head_dim, out_dtype),
        )
        if st.fp8
        else None,
    )
    # With segment ids the Q copy and the q-id copy both arrive on q_bar, the producer's K copy
    # and kv-id copy on k_bar.
    id_arrivals = 2 if st.has_segments else 1
    barriers = (
        plgpu.Barrier(num_arrivals=id_arrivals, num_barriers=q_buffers * n_consumers),
        plgpu.Barrier(num_arrivals=id_arrivals, num_barriers=stages),
        plgpu.Barrier(num_barriers=stages),
        plgpu.Barrier(num_arrivals=n_consumers, num_barriers=stages),
        plgpu.Barrier(num_arrivals=n_consumers, num_barriers=stages),
        plgpu.Barrier(num_barriers=n_consumers),
        plgpu.Barrier(num_barriers=2) if dynamic else None,
        plgpu.Barrier(num_arrivals=n_consumers, num_barriers=2) if dynamic else None,
    )
    if cfg.persistent:
        n_ctas = min(cfg.num_ctas or _sm_count(), batch * heads_q * n_q_tiles)
        grid, grid_names = (n_ctas,), ("cta",)
    else:
        n_ctas = 0
        # Mosaic GPU launches the grid reversed: its last axis is blockIdx.x, so
        # neighbouring CTAs differ in that axis.
        grid, grid_names = (heads_q, batch, n_q_tiles), ("h", "b", "qt")
        if cfg.tile_order == "heads":
            grid, grid_names = (n_q_tiles, batch, heads_q), ("qt", "b", "h")
    group = heads_q // heads_kv
    section = 0
    if cfg.tile_order in ("lpt", "balanced", "dynamic"):
        kv_bytes_per_head = 2 * seq_k * head_dim * jnp.dtype(dtype).itemsize // group
        section = lpt_section(batch * heads_q, kv_bytes_per_head)
    if cfg.tile_order == "balanced":
        # Balanced by the positional masks' tile counts; segment ids and block masks (known
        # only per call) change an item's length, not which CTA runs it.
        counts = positional_tile_counts(st.spec, cfg.tile_q, cfg.block_kv)
        inputs.append(jnp.asarray(balanced_schedule(counts, batch * heads_q, section, n_ctas)))
    if dynamic:
        # The work counter: zeroed per call, bumped atomically by every CTA's producer.
        inputs.append(jax.new_ref(jnp.zeros((1,), jnp.int32)))
    dims = (
        meta.index.shape[0],
        meta.index.shape[1],
        n_q_tiles,
        group,
        batch,
        heads_q,
        n_ctas,
        section,
        len(meta_inputs),
        meta.n_cols,
    )
    out_types = (
        jax.ShapeDtypeStruct(q_in.shape, out_dtype),
        # LSE rows padded to whole q tiles keep every TMA store aligned.
        jax.ShapeDtypeStruct((batch, heads_q, padded_q), jnp.float32),
    )[: 2 if st.with_lse else 1]
    call = plgpu.kernel(
        functools.partial(_kernel, st, dims),
        out_type=out_types,
        scratch_types=(scratch, barriers),
        grid=grid,
        grid_names=grid_names,
        num_threads=n_consumers + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
    )
    results = call(*inputs)
    out, lse = results if st.with_lse else (results[0], None)
    # Slices only where padding happened (a no-op otherwise: no extra copy).
    if out.shape[1] != seq_q:
        out = out[:, :seq_q]
    if lse is not None and lse.shape[2] != seq_q:
        lse = lse[:, :, :seq_q]
    return out, lse
