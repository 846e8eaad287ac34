"""Static work schedules for persistent forward CTAs (``tile_order="balanced"``).

A persistent CTA loops over work items (a q tile of one (batch, head) pair). Striding
the items over the CTAs (item ``w`` to CTA ``w % n_ctas``) balances equal items but not
causal ones, whose lengths (visited kv tiles) differ: at head dim 128 the strided LPT
order leaves the busiest CTA 18-29% above the mean (``benchmarks/NOTES.md``, "Session
5"). This module computes, when the kernel is traced, a greedy longest-processing-time
assignment instead: (batch, head) pairs in L2-sized sections, as the ``"lpt"`` order
takes them, and within a section the longest q tiles first, each to the CTA with the
least work so far. Every CTA runs its list in order, so the CTAs move through the
sections together and keep reusing one section's K/V from L2.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["ITEM_OVERHEAD_TILES", "balanced_schedule", "schedule_imbalance"]

#: Cost of a work item beyond its kv tiles, in kv tiles (Q load, epilogue, output store).
ITEM_OVERHEAD_TILES = 1.0


def balanced_schedule(
    tiles_per_q_tile: np.ndarray, pairs: int, section: int, n_ctas: int
) -> np.ndarray:
    """Greedy LPT lists of work items per CTA.

    Args:
      tiles_per_q_tile: int ``[n_q_tiles]``, kv tiles each q tile visits (the same for
        every (batch, head) pair: positional masks only).
      pairs: number of (batch, head) pairs, ``batch * heads``.
      section: pairs per L2 section (divides ``pairs``).
      n_ctas: persistent CTAs, at most ``pairs * n_q_tiles``.

    Returns:
      int32 ``[n_ctas, 1 + max_items]``: column 0 is the CTA's item count, then its work
      ids ``pair * n_q_tiles + q_tile`` in execution order (zero padded). Every CTA gets at
      least one item.
    """
    tiles = np.asarray(tiles_per_q_tile, np.int64)
    n_q_tiles = tiles.shape[0]
    if pairs % section or not 0 < n_ctas <= pairs * n_q_tiles:
        raise ValueError(
            f"balanced_schedule: need section | pairs and 0 < n_ctas <= items, got "
            f"pairs={pairs}, section={section}, n_ctas={n_ctas}, items={pairs * n_q_tiles}"
        )
    longest_first = np.argsort(-tiles, kind="stable")
    loads = [(0.0, cta) for cta in range(n_ctas)]
    lists: list[list[int]] = [[] for _ in range(n_ctas)]
    for first in range(0, pairs, section):
        for qt in longest_first:
            cost = float(tiles[qt]) + ITEM_OVERHEAD_TILES
            for pair in range(first, first + section):
                load, cta = heapq.heappop(loads)
                lists[cta].append(pair * n_q_tiles + int(qt))
                heapq.heappush(loads, (load + cost, cta))
    out = np.zeros((n_ctas, 1 + max(len(items) for items in lists)), np.int32)
    for cta, items in enumerate(lists):
        out[cta, 0] = len(items)
        out[cta, 1 : 1 + len(items)] = items
    return out


def schedule_imbalance(schedule: np.ndarray, tiles_per_q_tile: np.ndarray) -> float:
    """Busiest CTA's work over the mean (1.0 = perfectly balanced), in the cost model above."""
    tiles = np.asarray(tiles_per_q_tile, np.float64) + ITEM_OVERHEAD_TILES
    n_q_tiles = tiles.shape[0]
    work = [tiles[row[1 : 1 + row[0]] % n_q_tiles].sum() for row in schedule]
    return float(max(work) / np.mean(work))
