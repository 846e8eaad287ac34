"""Register-level helpers shared by the forward and backward Mosaic GPU kernels.

All functions work on arrays of one shape and layout (e.g. ``plgpu.Layout.WGMMA``
tiles of logits, either ``[q, k]`` or transposed ``[k, q]``): positions are passed
as same-shaped int32 arrays, so the helpers do not care about orientation.
Logits are kept in base 2 (``log2(e)`` folded into the scale) so the softmax
uses ``exp2`` and one FMA per element.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from fa3_jax.masks import MaskSpec, TileMetadata

__all__ = [
    "LOG2E",
    "LN2",
    "logits_base2",
    "alibi_base2",
    "alibi_splits",
    "positional_visible",
    "needs_element_masks",
    "TileLists",
    "tile_list_operands",
    "run_consumers",
    "multiple_of",
]

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


def logits_base2(s, *, softmax_scale: float, softcap: float | None):
    """``log2(e) * softcap(scale * s)`` for float32 scores ``s``."""
    if softcap is None:
        return s * (softmax_scale * LOG2E)
    return jnp.tanh(s * (softmax_scale / softcap)) * (softcap * LOG2E)


def alibi_base2(q_pos, k_pos, slope, *, spec: MaskSpec):
    """ALiBi term in base 2: ``-slope * log2(e) * |q_pos + offset - k_pos|``.

    ``slope`` is a float32 scalar; positions are int32 arrays of one shape.
    """
    distance = jnp.abs(q_pos + spec.offset - k_pos).astype(jnp.float32)
    return distance * (slope * -LOG2E)


def alibi_splits(spec: MaskSpec) -> bool:
    """Whether every visible key has ``k <= q + offset`` (causal, or a window whose right
    extent is 0), so ALiBi's ``-c * |q + offset - k|`` (``c = slope * log2(e)``) splits into
    a query term and a key term: the kernels add the key term to the logits (a broadcast
    vector) and move the query term into the per-query lse, in place of an abs and an int
    to float conversion per element. The terms are taken relative to a tile's first query
    or key, so they stay small near the diagonal, where the probabilities that matter are
    (far from it they underflow to 0 either way). Elements a partial tile hides get a
    wrong but finite bias; the element masks drop them.
    """
    return spec.diagonal_bounds[1] <= spec.offset


def positional_visible(q_pos, k_pos, *, spec: MaskSpec):
    """Bool array: causal/window masks and the key tail (``k_pos < seq_k``).

    Query rows past ``seq_q`` are not masked: their outputs are never stored.
    """
    visible = k_pos < spec.seq_k
    lo, hi = spec.diagonal_bounds
    if math.isfinite(lo) or math.isfinite(hi):
        diff = k_pos - q_pos
        if math.isfinite(lo):
            visible = visible & (diff >= int(lo))
        if math.isfinite(hi):
            visible = visible & (diff <= int(hi))
    return visible


def run_consumers(wg, n_consumers: int, consumer, *, static: bool) -> None:
    """Runs ``consumer(index)`` on warpgroups ``0 … n_consumers - 1`` (``wg``: this thread's
    warpgroup). ``static``: the body is traced once per warpgroup with ``index`` a Python
    int, so SMEM offsets and wgmma descriptors derived from it are constants (the configs'
    ``static_warpgroups``); else once, with ``index`` the traced ``wg``."""
    if static:
        for i in range(n_consumers):
            pl.when(wg == i)(lambda i=i: consumer(i))
    else:
        pl.when(wg < n_consumers)(lambda: consumer(wg))


def multiple_of(x, m: int):
    """``pl.multiple_of(x, m)`` for a traced ``x``; a Python int (static warpgroup) as is."""
    return x if isinstance(x, int) else pl.multiple_of(x, m)


def needs_element_masks(spec: MaskSpec, *, tile_k: int, has_segments: bool) -> bool:
    """Whether any tile can be partial (else element masks are compiled out)."""
    return spec.is_positional or has_segments or spec.seq_k % tile_k != 0


def tile_list_operands(meta: TileMetadata, masked: bool) -> list:
    """The metadata arrays a kernel takes: none when every tile is visited in order and no
    element masks are compiled in (XLA would otherwise launch kernels each call to
    materialize the constant ``count``/``partial`` arrays), else ``[index, count, partial]``
    and ``partial_count`` when the lists put partial tiles first."""
    if meta.all_visible and not masked:
        return []
    extra = [] if meta.partial_count is None else [meta.partial_count]
    return [meta.index, meta.count, meta.partial, *extra]


@dataclasses.dataclass(frozen=True)
class TileLists:
    """A kernel's reads of its tile visiting lists ``[Bm, Hm, row, j]``; without metadata
    refs (see :func:`tile_list_operands`) entry ``j`` is column tile ``j``, every row
    has ``n_cols`` entries and none is partial."""

    refs: tuple[Any, ...]  # (index, count, partial[, partial_count]) refs, or ()
    n_cols: int

    @property
    def partial_first(self) -> bool:
        """Whether rows list their partial tiles first and ``partial_count`` counts them
        (static: the metadata was built with ``partial_first``)."""
        return len(self.refs) == 4

    @classmethod
    def take(cls, refs, meta_operands: int, n_cols: int):
        """(TileLists, remaining refs) from a kernel's refs starting at the metadata."""
        return cls(tuple(refs[:meta_operands]), n_cols), refs[meta_operands:]

    def index(self, b, h, row, j):
        return self.refs[0][b, h, row, j] if self.refs else j

    def count(self, b, h, row):
        return self.refs[1][b, h, row] if self.refs else jnp.int32(self.n_cols)

    def partial(self, b, h, row, j):
        return self.refs[2][b, h, row, j]

    def partial_arg(self, b, h, row, j, mask):
        """``probs_and_dlogits``'s ``partial`` for entry ``j`` walked in mode ``mask`` (see
        :meth:`walk_row`): the entry's flag, True (known partial) or None (known full)."""
        return self.partial(b, h, row, j) if mask is None else (mask or None)

    def walk_row(self, b, h, row, body, carry, *, masked: bool):
        """``carry = body(j, carry, mask)`` for the entries ``j`` of one row, in order.

        ``mask`` is static, the entry's element-mask mode: False when not ``masked``
        (nothing can be partial); with partial-first lists, True for the partial entries
        (a loop of their own, masks compiled in) and False for the full ones (a second
        loop, masks compiled out); else None (test the entry's ``partial`` flag).
        """

        def loop(lo, hi, mask, carry):
            return lax.fori_loop(lo, hi, lambda j, c: body(j, c, mask), carry)

        n = self.count(b, h, row)
        if not masked:
            return loop(0, n, False, carry)
        if not self.partial_first:
            return loop(0, n, None, carry)
        n_partial = self.refs[3][b, h, row]
        return loop(n_partial, n, False, loop(0, n_partial, True, carry))
