"""Tuning configurations of the Mosaic GPU attention kernels.

A config is a frozen dataclass validated on construction; :func:`forward_config`
picks one per (head_dim, dtype, mask kind) from the tuned table, else from a
heuristic. Configs whose shared-memory footprint exceeds what a Hopper block may
use are rejected by :func:`check_forward_fits` before anything is compiled.
The backward kernels' :class:`BackwardConfig` and its heuristic
:func:`default_backward_config` are at the end.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

__all__ = [
    "SMEM_LIMIT_BYTES",
    "REGISTER_FILE",
    "ForwardConfig",
    "forward_smem_bytes",
    "check_forward_fits",
    "forward_config",
    "forward_search_space",
    "with_consumers",
    "REGISTER_SPLIT",
    "TUNED_FORWARD",
    "BackwardConfig",
    "default_backward_config",
    "CAUSAL_WIDE_KV_MIN_SEQ_K",
    "FP8_CAUSAL_THREE_CONSUMERS_MIN_SEQ_K",
    "FUSED_DQ_MIN_SEQ_K",
    "FUSED_DQ_MIN_SEQ_K_CAUSAL_D128",
    "FUSED_DQ_MIN_SEQ_K_CAUSAL_D64",
    "FUSED_DQ_MIN_SEQ_K_DENSE_D128",
    "NO_OVERLAP_CAUSAL_MAX_SEQ_K",
    "SOFTMAX_TURNS_CAUSAL_MIN_SEQ_K",
]

#: Dynamic shared memory one block may use on H100/H200 (227 KiB), minus a
#: little for barriers and the compiler's own scratch.
SMEM_LIMIT_BYTES = 227 * 1024 - 1024
#: 32-bit registers per SM.
REGISTER_FILE = 65536
#: Threads in a warpgroup.
WARPGROUP = 128


@dataclasses.dataclass(frozen=True)
class ForwardConfig:
    """Forward kernel configuration.

    A CTA runs ``num_consumers`` consumer warpgroups and one producer warpgroup;
    each consumer owns ``block_q`` query rows, so a CTA covers
    ``num_consumers * block_q`` rows (the q tile of the tile metadata) and walks
    kv tiles of ``block_kv`` keys.

    Attributes:
      block_q: query rows per consumer warpgroup (wgmma M: 64).
      block_kv: keys per kv tile (multiple of 64).
      num_stages: depth of the K/V shared-memory ring filled by the producer.
      num_consumers: consumer warpgroups per CTA, 2 or 3 (FA3 runs 3 at head_dim
        64: 192-row q tiles, each K/V tile loaded once for more rows).
      pingpong: order the consumers' GEMMs and softmaxes so one's softmax
        overlaps the others' GEMMs (FA3 technique 2).
      softmax_turns: the consumers take turns running their softmax's exponentials (the
        same ring of turn barriers; what cuDNN's Hopper kernel does at head dim 64, seen with
        ncu: benchmarks/NOTES.md "Session 21"), so one's exponentials overlap the others'
        GEMMs; not with ``pingpong``.
      overlap: issue the next tile's Q.K^T before this tile's P.V and softmax
        (FA3 technique 3, intra-warpgroup overlap).
      p_in_smem: stage P through shared memory for the P.V wgmma (needed by GPU
        interpret mode, which reads wgmma operand A only from shared memory; the
        FP8 default); False keeps P in registers (the fast bf16/fp16 GPU path; for
        FP8 relabelled in wgmma's 8-bit A layout, V^T's keys reordered to match).
      consumer_registers: registers per thread of each consumer warpgroup.
      producer_registers: registers per thread of the producer warpgroup.
      persistent: launch ``num_ctas`` CTAs that each loop over work items
        (q tile, head, batch), longest causal q tiles first, strided by the CTA
        count; the producer streams the next item's K/V without draining the
        ring, and each consumer loads its next item's Q into a second buffer
        while it works on the current one. False: one CTA per work item.
      num_ctas: CTAs of the persistent grid; 0 takes the GPU's SM count (132
        when no GPU is visible, e.g. interpret mode). Capped at the number of
        work items.
      tile_order: which index changes fastest from one CTA (or work item) to the
        next: ``"q_tiles"`` (the q tiles of one head run together and share its
        K/V in L2; what the grid launch always did) or ``"heads"`` (neighbouring
        heads run together, e.g. a GQA group sharing its K/V). Longest causal q
        tiles still come first per head. ``"lpt"`` (persistent only; FA3's
        longest-processing-time order): (batch, head) pairs in sections whose
        K/V fit in L2, and within a section the longest q tiles of all its heads
        first, so causal work is balanced over the CTAs without losing L2 reuse.
        ``"balanced"`` (persistent only): the same sections and longest-first
        order, but each item goes to the CTA with the least work so far, from a
        schedule computed when the kernel is traced (``fa3_jax/_mosaic/schedule.py``;
        item lengths from the positional masks: segment ids and block masks are
        not known then). ``"lpt"`` strides items over the CTAs, which leaves
        causal work 18-29% unbalanced at head dim 128 (by the same cost model).
        ``"dynamic"`` (persistent only, with ``prefetch_q``): FA3's dynamic scheduler, items
        in the ``"lpt"`` order taken from a global counter (an atomic add) by each
        CTA's producer when it starts the previous one, so CTAs balance themselves
        whatever the items' lengths. The heuristic picks it for segment ids, causal
        head dim 64 and short causal head dim 128.
      prefetch_q: persistent CTAs give each consumer a second Q buffer, so the next item's
        Q loads while this item runs; False keeps one (the next Q loads once this item's
        output store has read it), for head dims where two do not fit shared memory.
      static_warpgroups: compile the consumer body once per consumer warpgroup with its
        index a constant (SMEM offsets and wgmma descriptors become constant offsets from the
        SMEM base instead of per-warpgroup values held in registers; what lifted the head dim
        128 backward, see ``BackwardConfig.static_warpgroups``). In the forward it measured no
        gain (H100, 2026-11-27: within 5% either way, causal D256 1k -17%), so it is off.
    """

    block_q: int = 64
    block_kv: int = 128
    num_stages: int = 2
    num_consumers: int = 2
    pingpong: bool = True
    softmax_turns: bool = False
    overlap: bool = True
    p_in_smem: bool = False
    consumer_registers: int = 240
    producer_registers: int = 24
    persistent: bool = False
    num_ctas: int = 0
    tile_order: str = "q_tiles"
    static_warpgroups: bool = False
    prefetch_q: bool = True

    def __post_init__(self):
        if self.tile_order not in FORWARD_TILE_ORDERS:
            raise ValueError(
                f"ForwardConfig.tile_order must be one of {FORWARD_TILE_ORDERS}, got "
                f"{self.tile_order!r}"
            )
        if self.tile_order in ("lpt", "balanced", "dynamic") and not self.persistent:
            raise ValueError(f"ForwardConfig.tile_order={self.tile_order!r} needs persistent=True")
        if self.pingpong and self.softmax_turns:
            raise ValueError(
                "ForwardConfig.pingpong and softmax_turns both order the consumers: pick one"
            )
        if self.tile_order == "dynamic" and not self.prefetch_q:
            raise ValueError("ForwardConfig.tile_order='dynamic' needs prefetch_q=True")
        if not isinstance(self.num_ctas, int) or self.num_ctas < 0:
            raise ValueError(f"ForwardConfig.num_ctas must be an int >= 0, got {self.num_ctas}")
        if self.block_q != 64:
            raise ValueError(f"ForwardConfig.block_q must be 64 (wgmma M), got {self.block_q}")
        if self.block_kv < 64 or self.block_kv % 64:
            raise ValueError(
                f"ForwardConfig.block_kv must be a positive multiple of 64, got {self.block_kv}"
            )
        if self.num_consumers not in (2, 3):
            raise ValueError(
                f"ForwardConfig.num_consumers must be 2 or 3, got {self.num_consumers}"
            )
        if not 2 <= self.num_stages <= 8:
            raise ValueError(f"ForwardConfig.num_stages must be in [2, 8], got {self.num_stages}")
        for name in ("consumer_registers", "producer_registers"):
            value = getattr(self, name)
            if value % 8 or not 24 <= value <= 256:
                raise ValueError(
                    f"ForwardConfig.{name} must be a multiple of 8 in [24, 256], got {value}"
                )
        used = WARPGROUP * (self.num_consumers * self.consumer_registers + self.producer_registers)
        if used > REGISTER_FILE:
            raise ValueError(
                f"ForwardConfig registers {self.consumer_registers}x{self.num_consumers} + "
                f"{self.producer_registers} per thread need {used} > {REGISTER_FILE}"
            )

    @property
    def tile_q(self) -> int:
        """Query rows per CTA (the q tile of the tile metadata)."""
        return self.num_consumers * self.block_q

    @property
    def q_buffers(self) -> int:
        """Q (then O) buffers per consumer warpgroup (see ``prefetch_q``)."""
        return 2 if self.persistent and self.prefetch_q else 1


FORWARD_TILE_ORDERS = ("q_tiles", "heads", "lpt", "balanced", "dynamic")

#: (consumer, producer) registers per thread for each consumer count: FA3's splits, which fill
#: the 64K-entry register file (2 x 240 + 24 and 3 x 160 + 32, times 128 threads).
REGISTER_SPLIT = {2: (240, 24), 3: (160, 32)}


def with_consumers(config: ForwardConfig, num_consumers: int, **changes) -> ForwardConfig:
    """``config`` with ``num_consumers`` consumer warpgroups, their register split, ``changes``."""
    consumer, producer = REGISTER_SPLIT[num_consumers]
    return dataclasses.replace(
        config,
        num_consumers=num_consumers,
        consumer_registers=consumer,
        producer_registers=producer,
        **changes,
    )


#: What Mosaic allocates beyond the buffers itemized below (alignment padding): at D=128,
#: block_kv=128, 3 stages Mosaic asked for 5,656 bytes more than the itemized sum (then
#: without the segment-id buffers) and rejected a config this check had passed.
_FORWARD_UNITEMIZED_BYTES = 7 * 1024


def forward_smem_bytes(
    config: ForwardConfig, head_dim: int, itemsize: int, *, segments: bool = False
) -> int:
    """Shared memory the forward kernel allocates for ``config`` at ``itemsize`` bytes per
    input element (1: FP8); ``segments``: with segment ids (an int32 id per Q row buffered
    and per K ring row)."""
    n = config.num_consumers
    # Q, reused for O; two per warpgroup where persistent CTAs prefetch the next item's Q
    q_rows = config.q_buffers * n * config.block_q
    q_o = q_rows * head_dim * itemsize
    kv = 2 * config.num_stages * config.block_kv * head_dim * itemsize
    p = n * config.block_q * config.block_kv * itemsize if config.p_in_smem else 0
    lse = n * config.block_q * 4
    ids = 4 * (q_rows + config.num_stages * config.block_kv) if segments else 0
    # FP8 (1-byte) inputs: O (bf16) gets buffers of its own, one per Q buffer
    o = q_rows * head_dim * 2 if itemsize == 1 else 0
    dynamic = config.tile_order == "dynamic"
    # the dynamic order's two handed-over item indices and the producer's fetched one
    item_ring = 3 * 4 if dynamic else 0
    # Q (per buffer), K, V, K free, V free (per stage), turns (per consumer), item ring
    n_barriers = config.q_buffers * n + 4 * config.num_stages + n + (4 if dynamic else 0)
    return q_o + o + kv + p + lse + ids + item_ring + 8 * n_barriers + _FORWARD_UNITEMIZED_BYTES


def check_forward_fits(
    config: ForwardConfig, head_dim: int, itemsize: int, *, segments: bool = False
) -> None:
    """Raises ValueError when ``config`` needs more shared memory than a block has."""
    need = forward_smem_bytes(config, head_dim, itemsize, segments=segments)
    if need > SMEM_LIMIT_BYTES:
        raise ValueError(
            f"{config} needs {need} bytes of shared memory at head_dim={head_dim}"
            f"{' with segment ids' * segments}, more than the {SMEM_LIMIT_BYTES} available"
        )


def _mask_kind(causal: bool, masked: bool) -> str:
    return "causal" if causal else ("masked" if masked else "dense")


#: Tuned configs: (head_dim, dtype name, mask kind) -> config. Filled from GPU
#: sweeps (benchmarks/NOTES.md); missing keys fall back to the heuristic.
TUNED_FORWARD: dict[tuple[int, str, str], ForwardConfig] = {}


#: Dense inputs up to this many keys (head_dim <= 128) run persistent, q tiles of a head
#: together.
PERSISTENT_MAX_SEQ_K = 4096
#: Causal inputs at head_dim 65-128 up to this many keys run in the dynamic order (longer
#: ones in the balanced order; head_dim <= 64 always dynamic).
DYNAMIC_CAUSAL_MAX_SEQ_K = 1024
#: Causal fp16/bf16 inputs at head_dim <= 64 from this many keys run 256-key tiles without
#: intra-warpgroup overlap (one 64x256 score accumulator live per consumer, two stages): H100,
#: 2026-11-27 (benchmarks/NOTES.md "Session 18"), dynamic order, against 128-key tiles with
#: overlap (three consumers from 8k): fp16 -1% / +5% / +10% / +8% / +11% at 1k / 2k / 4k / 8k /
#: 16k, bf16 -1% / +5% / +11% / +8% / +5%; dense lost 2-11% the same way (stays).
CAUSAL_WIDE_KV_MIN_SEQ_K = 2048
#: Causal fp16/bf16 inputs at head_dim <= 64 from this many keys (below
#: ``CAUSAL_WIDE_KV_MIN_SEQ_K``) take turns at the softmax (``softmax_turns``), as do dense ones
#: on persistent CTAs: H100, 2026-11-28 (benchmarks/NOTES.md "Session 21"), five interleaved
#: rounds: causal 1k +1.9% / +1.8% (fp16 / bf16), 512 -1.6% / -2.4% (not taken); dense 512 / 1k /
#: 2k / 4k +0.9…+2.6%.
SOFTMAX_TURNS_CAUSAL_MIN_SEQ_K = 1024
#: Causal inputs at head_dim 65-128 up to this many keys run without intra-warpgroup overlap:
#: H100, 2026-11-28 (benchmarks/NOTES.md "Session 21"), five rounds: 512 +2.3% / +2.4% (fp16 /
#: bf16), 1k -6.4% / -6.9%.
NO_OVERLAP_CAUSAL_MAX_SEQ_K = 512
#: Causal FP8 inputs at head_dim <= 64 from this many keys run three consumer warpgroups: H100,
#: 2026-11-27 (benchmarks/NOTES.md "Session 17"), dynamic order, three against two consumers:
#: +1% / +6% / +15% at 2k / 4k / 8k, -15% at 1k, 0 at 16k.
FP8_CAUSAL_THREE_CONSUMERS_MIN_SEQ_K = 4096


def _heuristic(
    head_dim: int,
    *,
    fp8: bool,
    causal: bool,
    window: bool,
    masked: bool,
    segments: bool,
    seq_k: int | None,
) -> ForwardConfig:
    config = _tiles(head_dim, causal=causal, masked=masked or window)
    dynamic = dataclasses.replace(config, persistent=True, tile_order="dynamic", prefetch_q=True)
    if segments and head_dim <= 128:
        # Segment ids (item lengths known only per call): FA3's dynamic scheduler. H100,
        # 2026-11-27 (benchmarks/NOTES.md "Session 15"), against the grid: 8 documents in 16k
        # +7% (D128 bf16 causal) / +17% (D64 fp16), 16 documents +16%, non-causal +7%, one
        # 2k document per row +15%.
        return dynamic
    if seq_k is None or masked:
        # Unknown lengths and block masks stay on the grid (the dynamic order measured
        # +1%..+3% at 20% / 50% block density, -3%..-4% at 80% / 100%).
        return config
    if head_dim > 128:
        # Two Q buffers per consumer do not fit at D256: persistent CTAs with one (H100,
        # 2026-11-27, benchmarks/NOTES.md "Session 12", fp16): causal +9% / +10% / +11% / +12%
        # / +11% at 512 / 1k / 2k / 4k / 8k in the balanced order; dense -2% to 0 at 512-2k
        # (stays on the grid). D192 and windows are not measured (grid).
        if head_dim > 192 and causal and not window:
            return dataclasses.replace(
                config, persistent=True, tile_order="balanced", prefetch_q=False
            )
        return config
    # H100, 2026-11-26 (benchmarks/NOTES.md, "Session 6"), persistent CTAs that load the next
    # item's Q early, against the grid launch, fp16: dense D64/D128 +30% / +28% at 512, +13% at
    # D128 1k; causal D64 in LPT order +50% / +32% / +20% / +14% at 512 / 1k / 2k / 4k; causal
    # D128 in the balanced order +23% / +22% / +14% / +10% at 512 / 1k / 2k / 4k, D64 at 16k +2%;
    # a 1024 window at 16k (D128 bf16) +12%. (Packed documents lost in every persistent order
    # then: each item waited for its rows' segment ids, fixed in session 15.)
    # Three consumers on balanced causal D64: -19% / -5% / +7% at 1k / 4k / 16k.
    # Session 15: causal in the dynamic order against these static orders, same run: D64
    # +1%..+3% at every length 512-16k, D128 +2% at 512 / 1k, 0 at 2k, -2%..-4% at 4k / 8k;
    # the 16k window +1% (kept balanced).
    if causal or window:
        if causal and not window and head_dim <= 64:
            if fp8 and seq_k >= FP8_CAUSAL_THREE_CONSUMERS_MIN_SEQ_K:
                return with_consumers(dynamic, 3)
            if not fp8 and seq_k >= CAUSAL_WIDE_KV_MIN_SEQ_K:
                return dataclasses.replace(dynamic, block_kv=256, overlap=False, num_stages=2)
            if not fp8 and seq_k >= SOFTMAX_TURNS_CAUSAL_MIN_SEQ_K:
                return dataclasses.replace(dynamic, softmax_turns=True)
            return dynamic
        if causal and not window and seq_k <= DYNAMIC_CAUSAL_MAX_SEQ_K:
            if not fp8 and seq_k <= NO_OVERLAP_CAUSAL_MAX_SEQ_K:
                return dataclasses.replace(dynamic, overlap=False)
            return dynamic
        return dataclasses.replace(config, persistent=True, tile_order="balanced")
    if seq_k <= PERSISTENT_MAX_SEQ_K:
        turns = head_dim <= 64 and not fp8
        return dataclasses.replace(config, persistent=True, softmax_turns=turns)
    return config


def _tiles(head_dim: int, *, causal: bool, masked: bool) -> ForwardConfig:
    # H100, 2026-11-25 (benchmarks/NOTES.md): at D=128 intra-warpgroup overlap
    # alone measured best (573 TFLOP/s dense, 510 causal at 4k); ping-pong is
    # kept as a switch until its turn-barrier form is measured.
    if head_dim <= 64:
        if not causal and not masked:
            # H100, 2026-11-26: three consumers (192-row tiles) +3% at 1k, +11-17% at 4k-16k
            # dense; causal they lose 16% at 1k (fewer, longer tiles) and gain 0-7% above.
            return with_consumers(ForwardConfig(block_kv=128, num_stages=3, pingpong=False), 3)
        return ForwardConfig(block_kv=128, num_stages=3, pingpong=False)
    if head_dim <= 128:
        return ForwardConfig(block_kv=128, num_stages=2, pingpong=False)
    return ForwardConfig(block_kv=64, num_stages=2, pingpong=False)


def forward_config(
    head_dim: int,
    dtype,
    *,
    causal: bool = False,
    window: bool = False,
    masked: bool = False,
    segments: bool = False,
    seq_k: int | None = None,
    interpret: bool = False,
) -> ForwardConfig:
    """The config for these inputs: tuned if known, else the heuristic.

    ``causal``: a causal mask; ``window``: a sliding window (left and/or right);
    ``masked``: segment ids or a block mask; ``segments``: segment ids (implies
    ``masked``). ``seq_k``: keys per sequence (None: unknown; the grid launch is kept
    unless segment ids pick the dynamic order).
    ``interpret`` selects the shared-memory P path GPU interpret mode needs (with half
    the kv tile where that path would not fit shared memory); FP8 ``dtype`` takes it too.
    """
    name = np.dtype(dtype).name
    config = TUNED_FORWARD.get((head_dim, name, _mask_kind(causal, masked or segments or window)))
    if config is None:
        config = _heuristic(
            head_dim,
            fp8=np.dtype(dtype).itemsize == 1,
            causal=causal,
            window=window,
            masked=masked or segments,
            segments=segments,
            seq_k=seq_k,
        )
    itemsize = np.dtype(dtype).itemsize
    # FP8 stages P through SMEM on the GPU too. P in registers (relabelled in the 8-bit A
    # layout, V's keys reordered to match) is correct but slower on the H100 (2026-11-27,
    # benchmarks/NOTES.md "Session 18"): -5% to -13% at D64/D128, +3% at D256 8k dense.
    if interpret or itemsize == 1:
        config = dataclasses.replace(config, p_in_smem=True)
        need = forward_smem_bytes(config, head_dim, itemsize, segments=segments)
        if need > SMEM_LIMIT_BYTES:
            # Staged P next to a persistent CTA's two Q buffers (D128): halve the kv tile.
            config = dataclasses.replace(config, block_kv=config.block_kv // 2)
    return config


def forward_search_space(head_dim: int, itemsize: int = 2) -> list[ForwardConfig]:
    """Configs worth timing at ``head_dim`` (only those that fit shared memory)."""
    space = []
    # three consumers only where their registers hold the accumulators (measured: D64)
    consumers = (2, 3) if head_dim <= 64 else (2,)
    # the consumers' turns: none, around the GEMMs (pingpong) or around the exponentials
    turns = ((False, False), (True, False), (False, True))
    for block_kv, stages, (pingpong, softmax_turns), overlap, n in itertools.product(
        (64, 128, 192), (2, 3, 4), turns, (True, False), consumers
    ):
        config = with_consumers(
            ForwardConfig(),
            n,
            block_kv=block_kv,
            num_stages=stages,
            pingpong=pingpong,
            softmax_turns=softmax_turns,
            overlap=overlap,
        )
        try:
            check_forward_fits(config, head_dim, itemsize)
        except ValueError:
            continue
        space.append(config)
    return space


# Backward


@dataclasses.dataclass(frozen=True)
class BackwardConfig:
    """Static tiling of the dK/dV and dQ kernels.

    Attributes:
      block_q_dkv: q rows per step of the dK/dV kernel's walk over q tiles.
      block_kv_dkv: kv rows owned by each consumer warpgroup of the dK/dV kernel
        (a CTA owns ``compute_wgs * block_kv_dkv`` rows).
      block_q_dq: q rows owned by each consumer warpgroup of the dQ kernel.
      block_kv_dq: kv rows per step of the dQ kernel's walk over kv tiles.
      stages: depth of the TMA ring the producer warpgroup fills.
      compute_wgs: consumer warpgroups per CTA (1 or 2).
      register_operands: feed P/dS to wgmma from registers (fast path on the
        GPU); False stages them through SMEM, which interpret mode requires.
      defer_release: release a ring slot one step late, after the next step's
        score wgmmas (which wait for the earlier ones) instead of waiting for the
        dV/dK (dQ) wgmmas right away, so the tensor cores run them back to back.
      overlap: issue the next step's S and dP wgmmas before this step's softmax
        (FA3's intra-warpgroup overlap; one extra tile per CTA is loaded and its
        scores dropped). dQ kernel always; dK/dV kernel at head_dim 64 only
        (registers). Only with ``dq='kernel'``.
      dq: how dQ is computed.
        ``'kernel'`` (default): a second kernel owns each q tile and recomputes
        S and dP (7 GEMMs per tile pair, no atomics: bit-identical run to run).
        ``'atomic'``: the dK/dV kernel also computes dQ = dS·K (5 GEMMs, as FA3)
        and adds it into a zeroed fp32 buffer laid out ``[B, Hq, D/32, S, 32]`` (each
        TMA reduce-add one contiguous box) whose order (hence rounding) varies run to
        run. H100: faster than ``'kernel'`` from 4k keys on unmasked inputs, and at
        head dim 64 also on causal, window and ALiBi walks; slower below 4k and on
        masked head dim 128 walks (benchmarks/NOTES.md, "Session 7", "Session 8");
        :func:`default_backward_config` picks it there unless asked for determinism.
        ``'partials'``: as ``'atomic'``, but each kv tile's dQ goes to its own
        fp32 slot and XLA sums the slots in a fixed order (deterministic; 2 x kv
        tiles times the dQ memory). GPU interpret mode has no TMA reductions, so
        it runs ``'partials'`` where ``'atomic'`` is asked for.
      tile_order: which index changes fastest from one CTA to the next (Mosaic
        GPU launches the grid's last axis as blockIdx.x).
        ``'tiles'`` (default): the kv tiles (dK/dV kernel) or q tiles (dQ
        kernel) of one head, so CTAs that run together share that head's Q/dO
        (K/V) in L2; tiles with the most work (causal) start first.
        ``'batch'``: batch entries, then heads, of one tile index.
      branch_masks: compute element masks (causal, window, segments) behind a
        branch taken only for the partial tiles of a walk, as the forward does
        (default); False selects on every tile of a masked walk, branch-free. H100,
        causal bf16: +7% at 1k, +11-18% at 4k-16k (benchmarks/NOTES.md, "Session 6").
      split_partial: in the dK/dV and dQ kernels, walk each row's partial tiles (listed
        first, see ``tile_metadata(partial_first=True)``) in a loop with the element masks
        compiled in and its full ones in a second loop without them (FA3 separates its
        masking iterations the same way), instead of one loop testing each tile's flag.
        The partial loop applies its masks with a select (behind a branch it lost 8% on
        causal ALiBi with documents, D128 2k); ``branch_masks`` acts without the split only.
      q_rows: the dK/dV kernel computes S = Q K^T and dP = dO V^T with the q tile as the
        wgmma M dimension (FA3's orientation) instead of S^T = K Q^T and dP^T = V dO^T.
        Per-query lse, delta and positions then take two registers per thread instead of
        one per score column, and P and dS reach the dV/dK GEMMs through SMEM (as
        transposed A operands) instead of registers. Not with ``overlap``.
      static_warpgroups: the dK/dV and dQ kernels compile their consumer body once per consumer
        warpgroup with the warpgroup index a constant, so shared-memory addresses and wgmma
        descriptors are constant offsets from the SMEM base instead of per-warpgroup values
        held in registers (which ptxas spills on masked head dim 128 walks).
      producer_registers: registers per thread of the producer warpgroup (TMA loads); None:
        24 when the dK/dV kernel also computes dQ (FA3's split, 240 for each of two
        consumers), else 40. H100, bf16, medians of three interleaved rounds
        (benchmarks/NOTES.md, "Session 9"): 24 makes the fused path 12-15% faster on causal
        head dim 128 (fewer spills) and 0-2.5% faster elsewhere; the two kernels lose 1-5%
        with it.
      consumer_registers: registers per thread of each consumer warpgroup; None: what the
        producer leaves of the register file, in multiples of 8, at most 240
        (:attr:`registers`).
    """

    block_q_dkv: int = 64
    block_kv_dkv: int = 64
    block_q_dq: int = 64
    block_kv_dq: int = 64
    stages: int = 2
    compute_wgs: int = 2
    register_operands: bool = False
    defer_release: bool = False
    overlap: bool = False
    dq: str = "kernel"
    tile_order: str = "tiles"
    branch_masks: bool = True
    split_partial: bool = False
    q_rows: bool = False
    static_warpgroups: bool = False
    producer_registers: int | None = None
    consumer_registers: int | None = None

    def __post_init__(self):
        for name in ("block_q_dkv", "block_kv_dkv", "block_q_dq", "block_kv_dq"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0 or value % 64:
                raise ValueError(
                    f"BackwardConfig.{name} must be a positive multiple of 64, got {value!r}"
                )
        if not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"BackwardConfig.stages must be an int >= 1, got {self.stages!r}")
        if self.compute_wgs not in (1, 2):
            raise ValueError(f"BackwardConfig.compute_wgs must be 1 or 2, got {self.compute_wgs!r}")
        if self.overlap and self.stages < 2:
            raise ValueError(
                "BackwardConfig.overlap needs stages >= 2 (the next tile must be "
                f"in flight), got stages={self.stages}"
            )
        if self.q_rows and self.overlap:
            raise ValueError("BackwardConfig.q_rows does not support overlap")
        if self.dq not in DQ_MODES:
            raise ValueError(f"BackwardConfig.dq must be one of {DQ_MODES}, got {self.dq!r}")
        if self.tile_order not in BACKWARD_TILE_ORDERS:
            raise ValueError(
                f"BackwardConfig.tile_order must be one of {BACKWARD_TILE_ORDERS}, "
                f"got {self.tile_order!r}"
            )
        if self.dq != "kernel" and (self.overlap or self.defer_release):
            raise ValueError(
                f"BackwardConfig.dq={self.dq!r} supports neither overlap nor defer_release "
                "(each step waits for its dQ GEMM)"
            )
        for name in ("producer_registers", "consumer_registers"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or value % 8 or not 24 <= value <= 256
            ):
                raise ValueError(
                    f"BackwardConfig.{name} must be a multiple of 8 in [24, 256], got {value!r}"
                )
        consumer, producer = self.registers
        used = WARPGROUP * (self.compute_wgs * consumer + producer)
        if used > REGISTER_FILE:
            raise ValueError(
                f"BackwardConfig registers {consumer}x{self.compute_wgs} + {producer} per "
                f"thread need {used} > {REGISTER_FILE}"
            )

    @property
    def registers(self) -> tuple[int, int]:
        """(consumer, producer) registers per thread, as ``set_max_registers`` sets them."""
        producer = self.producer_registers
        if producer is None:
            producer = 40 if self.dq == "kernel" else 24
        if self.consumer_registers is not None:
            return self.consumer_registers, producer
        left = REGISTER_FILE // WARPGROUP - producer
        return min(240, left // self.compute_wgs // 8 * 8), producer

    @property
    def tile_kv_dkv(self) -> int:
        """kv rows per CTA of the dK/dV kernel (the transposed metadata's tile_k)."""
        return self.compute_wgs * self.block_kv_dkv

    @property
    def tile_q_dq(self) -> int:
        """q rows per CTA of the dQ kernel (the forward metadata's tile_q)."""
        return self.compute_wgs * self.block_q_dq

    def smem_bytes(self, head_dim: int, itemsize: int, segments: bool = False) -> dict[str, int]:
        """Shared memory each kernel needs (bytes), with :data:`BACKWARD_UNITEMIZED_BYTES` for
        Mosaic's own barriers and alignment; ``segments``: segment-id buffers are allocated."""
        d, s, w = head_dim, self.stages, self.compute_wgs
        seg = 4 if segments else 0  # bytes per int32 segment id, when allocated
        staged = 0 if self.register_operands else 1  # P/dS staging buffers
        staged_dkdv = 1 if self.q_rows else staged
        tile = w * self.block_kv_dkv * self.block_q_dkv * itemsize  # P or dS of the CTA
        dkdv = (
            BACKWARD_UNITEMIZED_BYTES
            + 2 * w * self.block_kv_dkv * d * itemsize  # K, V of the owned tile
            + 2 * s * self.block_q_dkv * d * itemsize  # Q, dO ring
            + 2 * s * self.block_q_dkv * 4  # lse, delta ring
            + s * self.block_q_dkv * seg  # q segment ids ring
            + w * self.block_kv_dkv * seg  # kv segment ids of the owned tile
        )
        if self.dq == "kernel":
            dkdv += staged_dkdv * 2 * tile
        else:
            # P staged unless in registers, a ring of three dS (the other
            # warpgroups read them for dQ), fp32 dQ columns on their way out.
            dkdv += staged_dkdv * tile + 3 * tile + self.block_q_dkv * d * 4
        dq = (
            BACKWARD_UNITEMIZED_BYTES
            + 2 * w * self.block_q_dq * d * itemsize  # Q, dO of the owned tile
            + 2 * w * self.block_q_dq * 4  # lse, delta of the owned tile
            + w * self.block_q_dq * seg  # q segment ids of the owned tile
            + 2 * s * self.block_kv_dq * d * itemsize  # K, V ring
            + s * self.block_kv_dq * seg  # kv segment ids ring
            + staged * w * self.block_q_dq * self.block_kv_dq * itemsize  # dS
        )
        return {"dkdv": dkdv, "dq": dq}


#: SMEM a backward kernel takes beyond its itemized buffers (barriers, alignment). H100: the
#: fused head dim 128 kernel with ``q_rows`` compiles at 230 400 itemized bytes and, with segment
#: ids (1 KiB more), needs 233 552 B in all, over Mosaic's 232 448 (benchmarks/NOTES.md,
#: "Session 11"); 1 KiB here, with ``SMEM_LIMIT_BYTES`` 1 KiB under Mosaic's, separates them.
BACKWARD_UNITEMIZED_BYTES = 1024

DQ_MODES = ("kernel", "atomic", "partials")
BACKWARD_TILE_ORDERS = ("tiles", "batch")


#: Keys from which inputs (at head dim 128 only unmasked, block-sparse and plain causal ones, see
#: the two below) add dQ from the dK/dV kernel unless gradients must be deterministic.
FUSED_DQ_MIN_SEQ_K = 4096
#: The same for unmasked head dim 128 inputs (with ``q_rows`` and ``static_warpgroups``).
FUSED_DQ_MIN_SEQ_K_DENSE_D128 = 2048
#: The same for plain causal head dim 128 inputs (with ``split_partial``, ``q_rows`` and
#: ``static_warpgroups``).
FUSED_DQ_MIN_SEQ_K_CAUSAL_D128 = 8192
#: The same for plain causal head dim 64 inputs: H100, bf16, five interleaved rounds, 2026-11-27
#: (benchmarks/NOTES.md, "Session 20"): fused against the two kernels +2.8% at 2k (every round
#: faster), -1.6% at 1k.
FUSED_DQ_MIN_SEQ_K_CAUSAL_D64 = 2048
BACKWARD_KINDS = ("dense", "block_sparse", "causal", "masked", "alibi")


def default_backward_config(
    head_dim: int,
    block_mask=None,
    *,
    interpret: bool = False,
    seq_k: int | None = None,
    kind: str = "masked",
    deterministic: bool = True,
) -> BackwardConfig:
    """Heuristic choice: two consumer warpgroups per CTA (128-row tiles), dQ kv steps of 128.

    A block mask with 64-row/64-column blocks gets one consumer warpgroup per CTA and
    64-row dQ kv steps, so both walks use 64-aligned tiles and stay exact at tile level.
    On the GPU P/dS feed wgmma from registers; interpret mode stages them through SMEM.
    H100, bf16 (benchmarks/NOTES.md, "Session 7"): dQ kv steps of 128 against 64,
    +1.4…4.5% at head dim 64/128, 1k-16k, dense and causal (one causal size -0.2%).

    ``kind``: ``"dense"`` (no mask, ALiBi or softcap), ``"block_sparse"`` (a block mask and
    nothing else), ``"causal"`` (a causal mask and nothing else), ``"alibi"`` (ALiBi slopes, with
    or without masks) or ``"masked"`` (anything else); ``"causal"`` and ``"alibi"`` count as
    masked below unless named. Unless ``deterministic``,
    inputs with at least :data:`FUSED_DQ_MIN_SEQ_K` keys (and block masks, if any, of
    128-multiple blocks) take ``dq='atomic'`` when dense or block-sparse, and at head dim
    <= 64 also when masked (plain causal head dim 64 from :data:`FUSED_DQ_MIN_SEQ_K_CAUSAL_D64`;
    head dim 128: dense and causal from other lengths, below). H100,
    bf16, timing the backward alone (NOTES, "Session 7", "Session 8" and "Session 9"): +3…9% at
    4k-16k (dense D64/D128, causal D64); causal D64 at 4k: +3.5% with a 1024-key window, +25%
    with ALiBi, even with segment ids; block-sparse 16k (128 x 128 blocks kept at 20/50/80%):
    +1…9% at head dim 128, +5…8% at 64. It loses 2-5% at 1k-2k, and at head dim 128 12-38% on
    causal, window and segment-id walks (ptxas spills 480 bytes in that kernel at causal D128)
    and ±2% with ALiBi.

    The fused path at head dim 64 keeps three Q/dO ring slots (its SMEM allows them there;
    NOTES, "Session 9": +0…3% at 4k-16k, dense and causal, three interleaved rounds).

    Unmasked head dim 64 on the two kernels takes 128-row q steps in the dK/dV kernel (FA3's
    tile there): H100, bf16, medians of three interleaved rounds (NOTES, "Session 9"): +4…7% at
    1k-4k; on causal walks they lose 20-25% (not taken).

    Head dim 128, unmasked from :data:`FUSED_DQ_MIN_SEQ_K_DENSE_D128` keys and plain causal from
    :data:`FUSED_DQ_MIN_SEQ_K_CAUSAL_D128`: the fused path with its score tiles' M the q rows
    (``q_rows``, FA3's orientation) and its consumer body compiled per warpgroup
    (``static_warpgroups``: constant SMEM offsets and wgmma descriptors, which ptxas otherwise
    keeps in registers and spills, reloading them before each wgmma); causal walks also split
    their partial tiles. H100, bf16, medians of three interleaved rounds (NOTES, "Session 11"),
    against the two kernels: dense 2k 477 -> 506 TFLOP/s, 4k 476 -> 554, 16k 496 -> 549…559;
    causal 8k 459…467 -> 485…487, 16k 494…502 -> 510…513; causal 4k 450 -> 439 (not taken),
    1024-key window 16k -14% (not taken). ``q_rows`` alone: dense 16k 499 -> 545, block-sparse
    16k -6…-12% (not taken); ``static_warpgroups`` on the two kernels: -2.6…+4.4% (not taken).
    Block-sparse head dim 128 on the fused path takes ``static_warpgroups`` alone (NOTES,
    "Session 12", 128x128 blocks): +6% / +4% at 4k (20% / 50% density), +2% at 8k, +8% / +6% /
    +7% at 16k (20 / 50 / 80%); at head dim 64 even, and on the two kernels (documents 16k -6%,
    causal D64 4k -3%, dense D64 2k -4%) not taken.

    ALiBi walks on the two kernels split their partial tiles from their full ones
    (``split_partial``): H100, bf16, causal, three interleaved rounds (NOTES, "Session 10"):
    +3…11% at head dim 128 (2k-16k, with and without 8 packed documents), +2…12% at 64; without
    ALiBi the split loses 4-15% there (causal, window; ptxas: the dQ kernel's spills go from
    116 to 652 bytes at causal D128), and on the fused path it is even with ALiBi and -6% on
    causal at head dim 64 (not taken).
    """
    if kind not in BACKWARD_KINDS:
        raise ValueError(f"kind must be one of {BACKWARD_KINDS}, got {kind!r}")
    small_blocks = block_mask is not None and (block_mask.block_q % 128 or block_mask.block_k % 128)
    wgs = 1 if small_blocks else 2
    if head_dim <= 64:
        min_seq_k = FUSED_DQ_MIN_SEQ_K_CAUSAL_D64 if kind == "causal" else FUSED_DQ_MIN_SEQ_K
    else:
        min_seq_k = {
            "dense": FUSED_DQ_MIN_SEQ_K_DENSE_D128,
            "block_sparse": FUSED_DQ_MIN_SEQ_K,
            "causal": FUSED_DQ_MIN_SEQ_K_CAUSAL_D128,
        }.get(kind)
    fused = (
        not deterministic
        and not small_blocks
        and seq_k is not None
        and min_seq_k is not None
        and seq_k >= min_seq_k
    )
    # Head dim 128 on the fused path, unmasked or plain causal (or block-sparse, static
    # warpgroups only): see the docstring.
    fused_d128 = fused and head_dim > 64 and kind in ("dense", "causal")
    return BackwardConfig(
        block_q_dkv=128 if kind == "dense" and head_dim <= 64 and not fused else 64,
        stages=3 if fused and head_dim <= 64 else 2,
        compute_wgs=wgs,
        block_kv_dq=64 if small_blocks else 128,
        register_operands=not interpret,
        dq="atomic" if fused else "kernel",
        split_partial=(kind == "alibi" and not fused) or (fused_d128 and kind == "causal"),
        q_rows=fused_d128,
        static_warpgroups=fused_d128 or (fused and head_dim > 64 and kind == "block_sparse"),
    )
