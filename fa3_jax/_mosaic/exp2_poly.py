"""``exp2`` on the FMA and ALU pipes: a polynomial instead of the MUFU.

At head dim 64 the softmax's ``exp2`` (one MUFU op per score, 16 per SM per clock on an
H100) needs as many cycles per kv tile as the two wgmmas (4·64 FLOPs per score, about
4096 per SM per clock): ncu shows both pipes at ~43% (``benchmarks/NOTES.md``, "Session
6"). Computing part of a tile's exponentials with this polynomial moves that share onto
the FMA/ALU pipes (FlashAttention-4's trick on Blackwell):

    x = n + f, n = round(x), f in [-0.5, 0.5];  2^x = 2^n · p(f)

``n`` comes from the ``1.5·2²³`` magic add (the rounded integer lands in the low mantissa
bits), ``p`` is a degree-3 fit of ``2^f`` (relative error ≤ 1.2e-4, below fp16's rounding
of P), and ``2^n`` is added to ``p``'s exponent bits with an integer shift: no MUFU op and
no float/int conversion (those run at the MUFU's rate too).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = ["EXP2_MAGIC", "poly_exp2"]

#: 1.5 · 2²³: ``x + EXP2_MAGIC`` rounds ``x`` to an integer held in the low mantissa bits.
EXP2_MAGIC = 12582912.0
_MAGIC_BITS = 0x4B400000  # the float32 bits of EXP2_MAGIC
# Degree-3 fit of 2^f on [-0.5, 0.5] with p(0) = 1, least squares in relative error.
_C1, _C2, _C3 = 0.69336867, 0.24221838, 0.05459283
# Below this 2^x is (sub)normal or zero in float32: the result is exactly 0 (as exp2(-inf)).
_LOWEST = -126.0


def poly_exp2(x, magic):
    """``2**x`` (float32, any shape) for ``x <= 0``; exactly 0 below ``2**-126`` (and -inf).

    ``magic`` must be :data:`EXP2_MAGIC` as a value the compiler cannot see as a constant
    (e.g. selected on a runtime index): XLA folds ``(x + C) - C`` into ``x``, which would
    silently drop the rounding.
    """
    xc = jnp.maximum(x, _LOWEST)
    t = xc + magic
    f = xc - (t - magic)
    p = 1.0 + f * (_C1 + f * (_C2 + f * _C3))
    n = lax.bitcast_convert_type(t, jnp.int32) - _MAGIC_BITS
    bits = lax.bitcast_convert_type(p, jnp.int32) + lax.shift_left(n, jnp.int32(23))
    return jnp.where(x < _LOWEST, 0.0, lax.bitcast_convert_type(bits, jnp.float32))
