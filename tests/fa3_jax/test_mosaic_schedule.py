"""Persistent schedules (tile_order='balanced'): static, per call, against the strided orders."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fa3_jax._mosaic.forward import lpt_section
from fa3_jax._mosaic.schedule import (
    balanced_schedule,
    schedule_imbalance,
    snake_schedule,
    snake_section,
)
from fa3_jax.masks import MaskSpec, positional_tile_counts


def _strided_lpt(counts, pairs, section, n_ctas):
    """The ``"lpt"`` order's assignment (item ``w`` to CTA ``w % n_ctas``) as a schedule."""
    n_q = len(counts)
    lists = [[] for _ in range(n_ctas)]
    for w in range(pairs * n_q):
        r = w % (section * n_q)
        pair = w // (section * n_q) * section + r % section
        lists[w % n_ctas].append(pair * n_q + n_q - 1 - r // section)
    out = np.zeros((n_ctas, 1 + max(map(len, lists))), np.int32)
    for c, items in enumerate(lists):
        out[c, 0], out[c, 1 : 1 + len(items)] = len(items), items
    return out


@pytest.mark.parametrize("seq,pairs,section", [(512, 512, 64), (1024, 256, 64), (2048, 128, 16),
                                               (1000, 6, 3), (256, 1, 1)])
@pytest.mark.parametrize("causal", [True, False])
def test_every_item_once_sections_in_order_and_balanced(seq, pairs, section, causal):
    counts = positional_tile_counts(MaskSpec(seq, seq, causal=causal), 128, 128)
    n_q = len(counts)
    n_ctas = min(132, pairs * n_q)
    schedule = balanced_schedule(counts, pairs, section, n_ctas)
    items = np.concatenate([row[1 : 1 + row[0]] for row in schedule])
    assert sorted(items.tolist()) == list(range(pairs * n_q))
    assert (schedule[:, 0] >= 1).all()
    for row in schedule:
        sections = row[1 : 1 + row[0]] // n_q // section
        assert (np.diff(sections) >= 0).all(), "a CTA went back to an earlier section"
    # greedy LPT is never worse than striding, and close to even on the FA3 grid
    strided = schedule_imbalance(_strided_lpt(counts, pairs, section, n_ctas), counts)
    balanced = schedule_imbalance(schedule, counts)
    assert balanced <= strided + 1e-9
    if pairs * n_q >= 8 * n_ctas:
        assert balanced < 1.05, balanced


def test_strided_lpt_is_unbalanced_at_head_dim_128_causal():
    """The motivating case (NOTES "Session 5"): D128 causal 1k on the FA3 grid, 256 pairs in
    the 32-pair sections the "lpt" order uses there."""
    counts = positional_tile_counts(MaskSpec(1024, 1024, causal=True), 128, 128)
    assert lpt_section(256, 2 * 1024 * 128 * 2) == 32
    assert schedule_imbalance(_strided_lpt(counts, 256, 32, 132), counts) > 1.2
    assert schedule_imbalance(balanced_schedule(counts, 256, 32, 132), counts) < 1.05


def test_bad_arguments():
    with pytest.raises(ValueError, match="section"):
        balanced_schedule(np.array([1, 2]), pairs=6, section=4, n_ctas=2)
    with pytest.raises(ValueError, match="n_ctas"):
        balanced_schedule(np.array([1, 2]), pairs=2, section=1, n_ctas=5)


@pytest.mark.parametrize("pairs,n_q,section,n_ctas", [(32, 16, 8, 132), (6, 7, 3, 5), (1, 4, 1, 4),
                                                      (64, 128, 16, 132)])
def test_snake_schedule_every_item_once_in_section_order(pairs, n_q, section, n_ctas):
    """The per-call schedule (segment ids, block masks): random lengths per item."""
    lengths = np.random.default_rng(pairs * n_q).integers(0, 40, (pairs, n_q)).astype(np.int32)
    schedule = np.asarray(jax.jit(snake_schedule, static_argnums=(1, 2))(lengths, section, n_ctas))
    items = np.concatenate([row[1 : 1 + row[0]] for row in schedule])
    assert sorted(items.tolist()) == list(range(pairs * n_q))
    assert (schedule[:, 0] >= 1).all()
    flat = lengths.reshape(-1)
    for row in schedule:
        mine = row[1 : 1 + row[0]]
        sections = mine // n_q // section
        assert (np.diff(sections) >= 0).all(), "a CTA went back to an earlier section"
        same = sections[1:] == sections[:-1]
        assert (np.diff(flat[mine])[same] <= 0).all(), "not longest first within a section"
    if pairs * n_q >= 8 * n_ctas:
        assert schedule_imbalance(schedule, lengths) < 1.1


def test_snake_schedule_balances_documents_the_positional_schedule_cannot():
    """8 documents of 2k tokens in a 16k causal sequence (D128 tiles, 16 heads): the lengths
    the positional schedule assumes (a 16k causal row) against the ones segment ids give."""
    seq, n_q, heads = 16384, 128, 16
    doc_tiles = np.arange(n_q) % 16 + 1  # kv tiles of q tile i: its document's causal prefix
    lengths = np.broadcast_to(doc_tiles, (heads, n_q)).astype(np.int32)
    positional = balanced_schedule(positional_tile_counts(MaskSpec(seq, seq, causal=True), 128,
                                                          128), heads, 4, 132)
    assert snake_section(heads, n_q, 4, 132) == 16  # 4-pair L2 sections span under 4 rounds
    snake = np.asarray(snake_schedule(jnp.asarray(lengths), 16, 132))
    assert schedule_imbalance(snake, lengths) < 1.05 < 1.3 < schedule_imbalance(positional, lengths)


def test_snake_schedule_bad_arguments():
    with pytest.raises(ValueError, match="section"):
        snake_schedule(jnp.zeros((6, 2), jnp.int32), section=4, n_ctas=2)


@pytest.mark.parametrize("pairs,n_q,section,expected", [(16, 128, 4, 16), (64, 128, 4, 16),
                                                        (6, 7, 3, 6), (512, 8, 64, 256)])
def test_snake_section_spans_enough_rounds(pairs, n_q, section, expected):
    size = snake_section(pairs, n_q, section, 132)
    assert size == expected and pairs % size == 0 and size % section == 0
