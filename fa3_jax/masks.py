"""One mask mechanism for every attention implementation.

Causal, sliding-window, segment-id (packed documents) and block-sparse masks are
described here once and turned into two forms:

* :func:`dense_mask` — a boolean ``[Bm, Hm, seq_q, seq_k]`` mask (used by the
  reference implementation and by tests);
* :func:`tile_metadata` — per-tile metadata the kernels loop over: for each row
  tile the column tiles to visit (ascending), how many there are, and whether
  each one needs element-level masking ("partial") or is entirely visible
  ("full"). Tiles that are entirely masked are never listed, so they cost
  nothing.

Conventions (FlashAttention's): with ``offset = seq_k - seq_q``, query ``i``
sees key ``j`` iff

* ``causal``: ``j <= i + offset`` (aligned to the bottom-right corner);
* ``window_left`` (if not None): ``j >= i + offset - window_left``;
* ``window_right`` (if not None): ``j <= i + offset + window_right``;
* segment ids (if given): ``q_segment_ids[b, i] == kv_segment_ids[b, j]``;
* block mask (if given): ``mask[b, h, i // block_q, j // block_k]``.

``Bm``/``Hm`` are 1 when the mask does not depend on batch/head (broadcast).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MaskSpec",
    "BlockMask",
    "TileMetadata",
    "dense_mask",
    "tile_visibility",
    "tile_metadata",
    "positional_tile_counts",
]


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """Static (hashable) description of the positional masks.

    Attributes:
      seq_q: number of queries.
      seq_k: number of keys.
      causal: bottom-right aligned causal mask.
      window_left: how far left of the diagonal a query sees (None = unlimited).
      window_right: how far right of the diagonal a query sees (None = unlimited).
    """

    seq_q: int
    seq_k: int
    causal: bool = False
    window_left: int | None = None
    window_right: int | None = None

    def __post_init__(self):
        for name in ("seq_q", "seq_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MaskSpec.{name} must be a positive int, got {value!r}")
        for name in ("window_left", "window_right"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"MaskSpec.{name} must be None or an int >= 0, got {value!r}")

    @property
    def offset(self) -> int:
        """``seq_k - seq_q``: shift of the diagonal (bottom-right alignment)."""
        return self.seq_k - self.seq_q

    @property
    def diagonal_bounds(self) -> tuple[float, float]:
        """Allowed range ``[lo, hi]`` of ``j - i`` (may be +-inf)."""
        lo = -math.inf if self.window_left is None else self.offset - self.window_left
        hi = math.inf
        if self.causal:
            hi = self.offset
        if self.window_right is not None:
            hi = min(hi, self.offset + self.window_right)
        return lo, hi

    @property
    def is_positional(self) -> bool:
        """True when causal or a window restricts the visible keys."""
        lo, hi = self.diagonal_bounds
        return math.isfinite(lo) or math.isfinite(hi)

    def visible(self, q_pos, k_pos):
        """Boolean positional mask for broadcastable position arrays."""
        d = k_pos - q_pos
        lo, hi = self.diagonal_bounds
        ok = jnp.ones(jnp.broadcast_shapes(jnp.shape(q_pos), jnp.shape(k_pos)), bool)
        if math.isfinite(lo):
            ok &= d >= lo
        if math.isfinite(hi):
            ok &= d <= hi
        return ok


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockMask:
    """Block-sparse mask: ``mask[..., i_block, j_block]`` False means skipped.

    Attributes:
      mask: bool ``[heads or 1, ceil(seq_q / block_q), ceil(seq_k / block_k)]``
        or with a leading batch axis ``[batch or 1, heads or 1, ., .]``.
      block_q: queries per block (static).
      block_k: keys per block (static).
    """

    mask: jax.Array
    block_q: int = dataclasses.field(metadata=dict(static=True))
    block_k: int = dataclasses.field(metadata=dict(static=True))

    def __post_init__(self):
        for name in ("block_q", "block_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BlockMask.{name} must be a positive int, got {value!r}")

    def normalized(self, batch: int, heads: int, seq_q: int, seq_k: int) -> BlockMask:
        """Validates the shape against the inputs and returns a 4-D bool mask."""
        shape = tuple(np.shape(self.mask))
        nq, nk = -(-seq_q // self.block_q), -(-seq_k // self.block_k)
        expected = f"[{heads} or 1, {nq}, {nk}] or [{batch} or 1, {heads} or 1, {nq}, {nk}]"
        if len(shape) not in (3, 4):
            raise ValueError(
                f"block_mask.mask must have rank 3 or 4, expected {expected}, got {shape}"
            )
        mask = self.mask if len(shape) == 4 else self.mask[None]
        b, h, q, k = np.shape(mask)
        if (q, k) != (nq, nk) or b not in (1, batch) or h not in (1, heads):
            raise ValueError(
                f"block_mask.mask has shape {shape}; with block sizes "
                f"({self.block_q}, {self.block_k}) expected {expected}"
            )
        if jnp.result_type(mask) != jnp.bool_:
            raise TypeError(f"block_mask.mask must be bool, got {jnp.result_type(mask)}")
        return BlockMask(mask, self.block_q, self.block_k)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TileMetadata:
    """Per-tile visiting lists, as consumed by the kernels.

    Rows are q tiles (or kv tiles when ``transposed``), columns the other side.

    Attributes:
      index: int32 ``[Bm, Hm, n_rows, n_cols]`` visited column tiles, ascending,
        packed to the front; entries past ``count`` repeat the last valid index
        (0 for an empty row) so prefetching them is harmless.
      count: int32 ``[Bm, Hm, n_rows]`` number of valid entries in ``index``.
      partial: int32 ``[Bm, Hm, n_rows, n_cols]`` aligned with ``index``: 1 when
        that tile needs element masks, 0 when every element is visible (and 0
        past ``count``).
      tile_q, tile_k: tile sizes (static).
      transposed: rows are kv tiles (static).
      all_visible: every row visits every column tile, in order (static; known
        for positional masks only): ``index`` is then ``arange`` per row and
        ``count`` the column count, so kernels need not read them.
      partial_count: int32 ``[Bm, Hm, n_rows]`` when built with ``partial_first``:
        each row then lists its partial tiles first (ascending), then its full
        ones (ascending), and this counts the partial ones; None otherwise.
    """

    index: jax.Array
    count: jax.Array
    partial: jax.Array
    tile_q: int = dataclasses.field(metadata=dict(static=True))
    tile_k: int = dataclasses.field(metadata=dict(static=True))
    transposed: bool = dataclasses.field(metadata=dict(static=True))
    all_visible: bool = dataclasses.field(default=False, metadata=dict(static=True))
    partial_count: jax.Array | None = None

    @property
    def n_rows(self) -> int:
        return self.index.shape[2]

    @property
    def n_cols(self) -> int:
        return self.index.shape[3]


def _split_segments(segment_ids, seq_q: int, seq_k: int):
    if segment_ids is None:
        return None, None
    if isinstance(segment_ids, (tuple, list)):
        q_seg, kv_seg = segment_ids
    else:
        if seq_q != seq_k:
            raise ValueError(
                "a single segment_ids array needs seq_q == seq_k; pass "
                "(q_segment_ids, kv_segment_ids) instead"
            )
        q_seg = kv_seg = segment_ids
    return q_seg, kv_seg


def dense_mask(spec: MaskSpec, *, segment_ids=None, block_mask: BlockMask | None = None):
    """Boolean mask ``[Bm, Hm, seq_q, seq_k]``; True = visible.

    Args:
      spec: positional masks.
      segment_ids: None, an int32 ``[batch, seq]`` array (seq_q == seq_k) or a
        tuple ``(q_segment_ids [batch, seq_q], kv_segment_ids [batch, seq_k])``.
      block_mask: optional 4-D (normalized) or 3-D :class:`BlockMask`.
    """
    q_pos = jnp.arange(spec.seq_q)[:, None]
    k_pos = jnp.arange(spec.seq_k)[None, :]
    mask = spec.visible(q_pos, k_pos)[None, None]
    q_seg, kv_seg = _split_segments(segment_ids, spec.seq_q, spec.seq_k)
    if q_seg is not None:
        mask = mask & (q_seg[:, None, :, None] == kv_seg[:, None, None, :])
    if block_mask is not None:
        bm = block_mask.mask if block_mask.mask.ndim == 4 else block_mask.mask[None]
        rows = jnp.arange(spec.seq_q) // block_mask.block_q
        cols = jnp.arange(spec.seq_k) // block_mask.block_k
        mask = mask & bm[:, :, rows][:, :, :, cols]
    return mask


def _cover_matrix(seq: int, tile: int, block: int) -> np.ndarray:
    """int32 ``[n_tiles, n_blocks]``: 1 where tile and block share a position."""
    pos = np.arange(seq)
    cover = np.zeros((-(-seq // tile), -(-seq // block)), np.int32)
    cover[pos // tile, pos // block] = 1
    return cover


def _positional_tiles(spec: MaskSpec, tile_q: int, tile_k: int):
    """Static numpy ``(nonempty, full)`` bool ``[n_q_tiles, n_k_tiles]``."""
    n_q, n_k = -(-spec.seq_q // tile_q), -(-spec.seq_k // tile_k)
    r0 = np.arange(n_q)[:, None] * tile_q
    r1 = np.minimum(r0 + tile_q, spec.seq_q) - 1
    c0 = np.arange(n_k)[None, :] * tile_k
    c1 = np.minimum(c0 + tile_k, spec.seq_k) - 1
    d_min, d_max = c0 - r1, c1 - r0  # every j - i in [d_min, d_max] occurs in the tile
    lo, hi = spec.diagonal_bounds
    nonempty = (d_max >= lo) & (d_min <= hi)
    full = (d_min >= lo) & (d_max <= hi)
    # Tiles reaching past the end of either sequence need element masks.
    tail = (r0 + tile_q > spec.seq_q) | (c0 + tile_k > spec.seq_k)
    return nonempty, full & ~tail


def positional_tile_counts(spec: MaskSpec, tile_q: int, tile_k: int) -> np.ndarray:
    """int ``[n_q_tiles]``: kv tiles each q tile visits under the positional masks alone."""
    nonempty, _ = _positional_tiles(spec, tile_q, tile_k)
    return nonempty.sum(axis=1)


def _segment_tiles(q_seg, kv_seg, tile_q: int, tile_k: int):
    """``(overlap, full)`` bool ``[batch, 1, n_q_tiles, n_k_tiles]`` from id ranges."""

    def tile_range(seg, tile):
        batch, seq = seg.shape
        n = -(-seq // tile)
        padded = jnp.pad(seg, ((0, 0), (0, n * tile - seq)), mode="edge").reshape(batch, n, tile)
        return padded.min(-1), padded.max(-1)

    q_min, q_max = tile_range(q_seg, tile_q)
    k_min, k_max = tile_range(kv_seg, tile_k)
    overlap = (q_min[:, :, None] <= k_max[:, None, :]) & (k_min[:, None, :] <= q_max[:, :, None])
    full = (
        (q_min == q_max)[:, :, None]
        & (k_min == k_max)[:, None, :]
        & (q_min[:, :, None] == k_min[:, None, :])
    )
    return overlap[:, None], full[:, None]


def _block_tiles(block_mask: BlockMask, spec: MaskSpec, tile_q: int, tile_k: int):
    """``(any, all)`` bool ``[Bb, Hb, n_q_tiles, n_k_tiles]`` over covered blocks."""
    bm = block_mask.mask if block_mask.mask.ndim == 4 else block_mask.mask[None]
    cover_q = jnp.asarray(_cover_matrix(spec.seq_q, tile_q, block_mask.block_q))
    cover_k = jnp.asarray(_cover_matrix(spec.seq_k, tile_k, block_mask.block_k))
    hits = jnp.einsum("ra,bhac,sc->bhrs", cover_q, bm.astype(jnp.int32), cover_k)
    covered = cover_q.sum(1)[:, None] * cover_k.sum(1)[None, :]
    return hits > 0, hits == covered


def tile_visibility(
    spec: MaskSpec,
    tile_q: int,
    tile_k: int,
    *,
    segment_ids=None,
    block_mask: BlockMask | None = None,
):
    """Dense tile classification ``(visible, full)``, bool ``[Bm, Hm, n_q, n_k]``.

    ``visible``: the tile may contain a visible element (must be visited);
    ``full``: every element of the tile is visible (no element masks needed).
    Exact for positional and tile-aligned block masks; for segment ids it is
    exact when ids are sorted within a row and conservative otherwise.
    """
    nonempty, full = _positional_tiles(spec, tile_q, tile_k)
    visible = jnp.asarray(nonempty)[None, None]
    full = jnp.asarray(full)[None, None]
    q_seg, kv_seg = _split_segments(segment_ids, spec.seq_q, spec.seq_k)
    if q_seg is not None:
        seg_visible, seg_full = _segment_tiles(q_seg, kv_seg, tile_q, tile_k)
        visible, full = visible & seg_visible, full & seg_full
    if block_mask is not None:
        blk_visible, blk_full = _block_tiles(block_mask, spec, tile_q, tile_k)
        visible, full = visible & blk_visible, full & blk_full
    return visible, full & visible


def tile_metadata(
    spec: MaskSpec,
    tile_q: int,
    tile_k: int,
    *,
    segment_ids=None,
    block_mask: BlockMask | None = None,
    transpose: bool = False,
    partial_first: bool = False,
) -> TileMetadata:
    """Per-tile visiting lists for the kernels (jit-compatible).

    Args:
      spec: positional masks.
      tile_q, tile_k: kernel tile sizes along queries and keys.
      segment_ids: see :func:`dense_mask`.
      block_mask: optional :class:`BlockMask`.
      transpose: rows are kv tiles and columns q tiles (the backward dK/dV
        kernel's loop); otherwise rows are q tiles.
      partial_first: order each row's partial tiles before its full ones and
        fill ``partial_count``, so a kernel can walk them in a separate loop
        with the element masks compiled in, and the rest without.
    """
    for name, value in (("tile_q", tile_q), ("tile_k", tile_k)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if segment_ids is None and block_mask is None:
        # Positional masks only: everything is static, so build the lists in
        # NumPy and hand XLA constants (no sort to constant-fold at compile time).
        nonempty, full = _positional_tiles(spec, tile_q, tile_k)
        visible, full, xp = nonempty[None, None], (full & nonempty)[None, None], np
        # Reordering partial tiles first keeps rows in order only if none is partial.
        all_visible = bool(nonempty.all()) and not (partial_first and not full.all())
    else:
        visible, full = tile_visibility(
            spec, tile_q, tile_k, segment_ids=segment_ids, block_mask=block_mask
        )
        xp = jnp
        all_visible = False
    if transpose:
        visible, full = visible.swapaxes(-1, -2), full.swapaxes(-1, -2)
    index, count, partial = _pack_visible(visible, full, xp, partial_first)
    return TileMetadata(
        jnp.asarray(index),
        jnp.asarray(count),
        jnp.asarray(partial),
        tile_q,
        tile_k,
        transpose,
        all_visible,
        jnp.asarray(partial.sum(-1, dtype=xp.int32)) if partial_first else None,
    )


def _pack_visible(visible, full, xp, partial_first: bool = False):
    """``(index, count, partial)`` int32 from bool ``visible``/``full`` ``[..., n_cols]``."""
    n_cols = visible.shape[-1]
    # A stable sort puts the visible columns first, in ascending order (partial ones
    # before full ones with ``partial_first``).
    rank = (~visible).astype(xp.int32)
    if partial_first:
        rank = 2 * rank + (visible & full).astype(xp.int32)
    order = xp.argsort(rank, axis=-1, stable=True).astype(xp.int32)
    count = visible.sum(-1, dtype=xp.int32)
    valid = xp.arange(n_cols, dtype=xp.int32) < count[..., None]
    last = xp.take_along_axis(order, xp.maximum(count - 1, 0)[..., None], axis=-1)
    index = xp.where(valid, order, xp.where(count[..., None] > 0, last, 0))
    partial = xp.where(valid, ~xp.take_along_axis(full, order, axis=-1), False)
    return index.astype(xp.int32), count, partial.astype(xp.int32)
