"""Static persistent schedules (tile_order='balanced') against the strided orders."""

from __future__ import annotations

import numpy as np
import pytest

from fa3_jax._mosaic.forward import lpt_section
from fa3_jax._mosaic.schedule import balanced_schedule, schedule_imbalance
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
