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

With segment ids or a block mask the item lengths are only known per call:
:func:`snake_schedule` then builds the table on the device from the tile metadata's
counts, in the same section-then-longest-first order, dealt over the CTAs in a
boustrophedon (rounds of one item per CTA, alternate rounds in reverse CTA order).
"""

from __future__ import annotations

import heapq

import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "ITEM_OVERHEAD_TILES",
    "SNAKE_MIN_ROUNDS",
    "balanced_schedule",
    "schedule_imbalance",
    "snake_schedule",
    "snake_section",
]

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


def schedule_imbalance(schedule: np.ndarray, tiles: np.ndarray) -> float:
    """Busiest CTA's work over the mean (1.0 = perfectly balanced), in the cost model above.

    ``tiles``: kv tiles per q tile, ``[n_q_tiles]`` (the same for every pair) or per item
    ``[pairs, n_q_tiles]``.
    """
    # Work id = pair * n_q_tiles + q_tile: modulo per-q-tile costs, or indexing per-item ones.
    cost = (np.asarray(tiles, np.float64) + ITEM_OVERHEAD_TILES).reshape(-1)
    work = [cost[row[1 : 1 + row[0]] % cost.size].sum() for row in schedule]
    return float(max(work) / np.mean(work))


#: Rounds (items per CTA) a section of the per-call schedule spans at least: dealing a
#: longest-first list in rounds evens out over several rounds, not within one (8 documents
#: of 2k in 16k, 16 heads: 1.25x the mean work in 4-round sections, 1.03x in 16 rounds).
SNAKE_MIN_ROUNDS = 8


def snake_section(pairs: int, n_q_tiles: int, section: int, n_ctas: int) -> int:
    """Pairs per section of :func:`snake_schedule`: the smallest multiple of the L2
    ``section`` that divides ``pairs`` and spans :data:`SNAKE_MIN_ROUNDS` rounds (else all)."""
    for size in range(section, pairs + 1, section):
        if pairs % size == 0 and size * n_q_tiles >= SNAKE_MIN_ROUNDS * n_ctas:
            return size
    return pairs


def snake_schedule(tiles_per_item, section: int, n_ctas: int):
    """Per-call lists of work items per CTA, from the visited kv tiles of each item.

    Args:
      tiles_per_item: int32 ``[pairs, n_q_tiles]`` (a traced array), kv tiles each q tile
        of each (batch, head) pair visits (``TileMetadata.count`` broadcast over batch
        and heads).
      section: pairs per L2 section (divides ``pairs``).
      n_ctas: persistent CTAs, at most ``pairs * n_q_tiles``.

    Returns:
      int32 ``[n_ctas, 1 + rounds]`` as :func:`balanced_schedule` returns it: the items
      sorted by section, then longest first, item ``r`` of that order to CTA ``r % n_ctas``
      in even rounds and ``n_ctas - 1 - r % n_ctas`` in odd ones.
    """
    pairs, n_q_tiles = tiles_per_item.shape
    items = pairs * n_q_tiles
    if pairs % section or not 0 < n_ctas <= items:
        raise ValueError(
            f"snake_schedule: need section | pairs and 0 < n_ctas <= items, got "
            f"pairs={pairs}, section={section}, n_ctas={n_ctas}, items={items}"
        )
    work = np.arange(items)
    section_of = jnp.asarray(work // n_q_tiles // section, jnp.int32)
    # Section first, then longest first (ties in work-id order).
    longest_first = -tiles_per_item.reshape(-1).astype(jnp.int32)
    *_, order = lax.sort(
        (section_of, longest_first, jnp.asarray(work, jnp.int32)), num_keys=2, is_stable=True
    )
    # Where rank r of that order goes: a static layout, only the order is per call.
    rounds, pos = np.divmod(work, n_ctas)
    cta = np.where(rounds % 2 == 0, pos, n_ctas - 1 - pos)
    table = jnp.zeros((n_ctas, 1 + -(-items // n_ctas)), jnp.int32)
    table = table.at[cta, 1 + rounds].set(order)
    return table.at[:, 0].set(jnp.asarray(np.bincount(cta, minlength=n_ctas), jnp.int32))
