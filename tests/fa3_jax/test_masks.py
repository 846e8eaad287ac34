"""Per-tile metadata (what kernels consume) against dense masks."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fa3_jax._mosaic.common import tile_list_operands
from fa3_jax.masks import BlockMask, MaskSpec, dense_mask, tile_metadata, tile_visibility

SPECS = [
    MaskSpec(128, 128),
    MaskSpec(128, 128, causal=True),
    MaskSpec(17, 300, causal=True),
    MaskSpec(300, 17, causal=True),
    MaskSpec(300, 300, window_left=40, window_right=0),
    MaskSpec(300, 128, causal=True, window_left=20),
    MaskSpec(200, 333, window_left=None, window_right=7),
    MaskSpec(1, 1),
]
TILES = [(64, 64), (128, 64), (16, 32), (64, 128)]


def _tiles_from_dense(mask, tile_q, tile_k):
    """Exact (visible, full) per tile from a dense [B, H, Sq, Sk] mask, tails padded."""
    b, h, sq, sk = mask.shape
    nq, nk = -(-sq // tile_q), -(-sk // tile_k)
    pad = np.zeros((b, h, nq * tile_q, nk * tile_k), bool)
    inside = np.zeros_like(pad)
    pad[:, :, :sq, :sk] = mask
    inside[:, :, :sq, :sk] = True
    pad = pad.reshape(b, h, nq, tile_q, nk, tile_k)
    inside = inside.reshape(b, h, nq, tile_q, nk, tile_k)
    return pad.any((3, 5)), (pad | ~inside).all((3, 5)) & inside.all((3, 5))


def _segments(rng, batch, seq):
    return np.cumsum(rng.random((batch, seq)) < 3.0 / seq, axis=1).astype(np.int32)


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("tiles", TILES, ids=str)
@pytest.mark.parametrize("extra", ["none", "segments", "block", "both"])
def test_tile_visibility_matches_dense(spec, tiles, extra):
    rng = np.random.default_rng(hash((spec.seq_q, spec.seq_k, tiles, extra)) % 2**32)
    tile_q, tile_k = tiles
    kwargs = {}
    if extra in ("segments", "both"):
        kwargs["segment_ids"] = (_segments(rng, 2, spec.seq_q), _segments(rng, 2, spec.seq_k))
    if extra in ("block", "both"):
        # Block sizes that are multiples of the tiles: tile-level metadata is exact.
        bq, bk = tile_q * 2, tile_k
        shape = (3, -(-spec.seq_q // bq), -(-spec.seq_k // bk))
        kwargs["block_mask"] = BlockMask(jnp.asarray(rng.random(shape) < 0.5), bq, bk)
    dense = np.asarray(dense_mask(spec, **kwargs))
    want_visible, want_full = _tiles_from_dense(dense, tile_q, tile_k)
    visible, full = (np.asarray(x) for x in tile_visibility(spec, tile_q, tile_k, **kwargs))
    visible, full = np.broadcast_arrays(visible, full)
    shape = np.broadcast_shapes(visible.shape, want_visible.shape)
    visible, want_visible = np.broadcast_to(visible, shape), np.broadcast_to(want_visible, shape)
    np.testing.assert_array_equal(np.broadcast_to(full, shape), np.broadcast_to(want_full, shape))
    if "segment_ids" in kwargs and spec.is_positional:
        # Sorted ids make the segment test exact on its own; intersected with a
        # causal/window band per tile it may keep a tile whose overlap lies
        # outside the band: visiting it is wasted work, never a wrong answer.
        assert not (want_visible & ~visible).any()
    else:
        np.testing.assert_array_equal(visible, want_visible)


def test_unaligned_block_mask_is_conservative():
    rng = np.random.default_rng(0)
    spec = MaskSpec(300, 200)
    bm = BlockMask(jnp.asarray(rng.random((2, 7, 5)) < 0.4), 48, 40)
    dense = np.asarray(dense_mask(spec, block_mask=bm))
    want_visible, want_full = _tiles_from_dense(dense, 64, 64)
    visible, full = (np.asarray(x) for x in tile_visibility(spec, 64, 64, block_mask=bm))
    np.testing.assert_array_equal(visible, want_visible)  # any-block test is exact
    assert not (full & ~want_full).any()  # never claims a partial tile is full


def test_unsorted_segments_are_conservative():
    rng = np.random.default_rng(1)
    spec = MaskSpec(256, 256, causal=True)
    seg = rng.integers(0, 3, (2, 256)).astype(np.int32)
    dense = np.asarray(dense_mask(spec, segment_ids=seg))
    want_visible, want_full = _tiles_from_dense(dense, 64, 64)
    visible, full = (np.asarray(x) for x in tile_visibility(spec, 64, 64, segment_ids=seg))
    assert not (want_visible & ~visible).any()  # every tile with a visible element is visited
    assert not (full & ~want_full).any()


@pytest.mark.parametrize("partial_first", [False, True])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("dynamic", [True, False], ids=["segments+blocks", "positional"])
def test_tile_metadata_lists(transpose, dynamic, partial_first):
    """Each row lists its visible tiles ascending (with ``partial_first``: the partial ones,
    then the full ones, each ascending, and ``partial_count`` counts the partial ones)."""
    rng = np.random.default_rng(2)
    spec = MaskSpec(300, 250, causal=True, window_left=100)
    seg = (_segments(rng, 2, 300), _segments(rng, 2, 250)) if dynamic else None
    bm = BlockMask(jnp.asarray(rng.random((4, 5, 4)) < 0.6), 64, 64) if dynamic else None
    visible, full = tile_visibility(spec, 64, 64, segment_ids=seg, block_mask=bm)
    meta = jax.jit(
        lambda s, b: tile_metadata(spec, 64, 64, segment_ids=s, block_mask=b,
                                   transpose=transpose, partial_first=partial_first)
    )(seg, bm)
    visible, full = np.asarray(visible), np.asarray(full)
    if transpose:
        visible, full = visible.swapaxes(-1, -2), full.swapaxes(-1, -2)
    index, count, partial = (np.asarray(x) for x in (meta.index, meta.count, meta.partial))
    assert index.shape == visible.shape and meta.transposed == transpose
    assert index.dtype == count.dtype == partial.dtype == np.int32
    assert (meta.partial_count is not None) == partial_first
    for b, h, r in itertools.product(*(range(n) for n in visible.shape[:3])):
        n = count[b, h, r]
        want = np.flatnonzero(visible[b, h, r])
        if partial_first:
            is_full = full[b, h, r, want]
            want = np.concatenate([want[~is_full], want[is_full]])
            assert meta.partial_count[b, h, r] == (~is_full).sum()
        np.testing.assert_array_equal(index[b, h, r, :n], want)
        np.testing.assert_array_equal(partial[b, h, r, :n], ~full[b, h, r, want])
        assert (partial[b, h, r, n:] == 0).all()
        assert (index[b, h, r, n:] == (want[-1] if n else 0)).all()
    assert (count > 1).any() and (not dynamic or (count == 0).any())
    if partial_first and not dynamic:  # the window's far edge moves before the full tiles
        aligned = tile_metadata(MaskSpec(512, 512, causal=True, window_left=200), 64, 64,
                                transpose=transpose, partial_first=True)
        # q row 5 (kv rows 2): window edges and diagonal first, then the full tiles
        row, want = (2, [2, 5, 6, 3, 4]) if transpose else (5, [1, 2, 5, 3, 4])
        np.testing.assert_array_equal(aligned.index[0, 0, row, :5], want)
        assert aligned.count[0, 0, row] == 5 and aligned.partial_count[0, 0, row] == 3


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("transpose", [False, True])
def test_all_visible_flag_matches_the_lists(spec, transpose):
    """``all_visible`` (kernels then skip the metadata) holds exactly when every row lists
    every column tile in order; never claimed for segment ids."""
    meta = tile_metadata(spec, 64, 64, transpose=transpose)
    index, count = np.asarray(meta.index), np.asarray(meta.count)
    arange = np.broadcast_to(np.arange(meta.n_cols), index.shape)
    assert meta.all_visible == bool((count == meta.n_cols).all() and (index == arange).all())
    assert tile_metadata(MaskSpec(256, 256), 64, 64).all_visible
    assert not tile_metadata(MaskSpec(256, 256, causal=True), 64, 64).all_visible
    # Partial tiles first breaks the order only where some tile is partial.
    assert tile_metadata(MaskSpec(256, 256), 64, 64, partial_first=True).all_visible
    assert not tile_metadata(MaskSpec(256, 250), 64, 64, partial_first=True).all_visible
    ids = jnp.zeros((1, 256), jnp.int32)
    assert not tile_metadata(MaskSpec(256, 256), 64, 64, segment_ids=(ids, ids)).all_visible


def test_tile_list_operands_only_where_needed():
    """Dense inputs pass no metadata arrays to the kernels; masks (or element masks) do."""
    dense = tile_metadata(MaskSpec(256, 256), 64, 64)
    assert tile_list_operands(dense, masked=False) == []
    assert len(tile_list_operands(dense, masked=True)) == 3
    causal = tile_metadata(MaskSpec(256, 256, causal=True), 64, 64)
    assert len(tile_list_operands(causal, masked=False)) == 3
    causal = tile_metadata(MaskSpec(256, 256, causal=True), 64, 64, partial_first=True)
    assert len(tile_list_operands(causal, masked=True)) == 4


def test_mask_spec_and_block_mask_validation():
    with pytest.raises(ValueError, match="seq_q"):
        MaskSpec(0, 4)
    with pytest.raises(ValueError, match="window_left"):
        MaskSpec(4, 4, window_left=-1)
    with pytest.raises(ValueError, match="block_q"):
        BlockMask(jnp.ones((1, 1, 1), bool), 0, 16)
    with pytest.raises(ValueError, match="tile_q"):
        tile_metadata(MaskSpec(4, 4), 0, 16)
