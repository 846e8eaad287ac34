"""The polynomial exp2 of the forward kernel's softmax (``fa3_jax/_mosaic/exp2_poly.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fa3_jax._mosaic.exp2_poly import EXP2_MAGIC, poly_exp2


@jax.jit
def _poly_exp2(x, index):
    # The magic number selected on a runtime value, as the kernel does with its warpgroup index.
    return poly_exp2(x, jnp.where(index >= 0, EXP2_MAGIC, 0.0))


def test_relative_error_below_fp16_rounding():
    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.exponential(4.0, 100_000), np.linspace(-125.0, 0.0, 100_001)])
    x = x.astype(np.float32)
    got = np.asarray(_poly_exp2(x, 0), np.float64)
    rel = np.abs(got / np.exp2(x.astype(np.float64)) - 1.0)
    assert rel.max() < 1.2e-4, rel.max()
    # integer inputs land on the polynomial's f = 0: exact powers of two
    ints = -np.arange(0, 120, dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(_poly_exp2(ints, 0)), np.exp2(ints))


@pytest.mark.parametrize("x", [-np.inf, -1e30, -200.0, -126.5])
def test_exactly_zero_where_exp2_underflows(x):
    assert float(_poly_exp2(np.float32([x]), 0)[0]) == 0.0


def test_rounding_survives_compilation():
    """The magic add must not fold away: with it folded every result is 2^0 * p(x) (up to
    41% off at x = -0.5 + n)."""
    x = np.float32([-0.5, -1.5, -7.25, -20.75])
    np.testing.assert_allclose(np.asarray(_poly_exp2(x, 3)), np.exp2(x), rtol=2e-4)
