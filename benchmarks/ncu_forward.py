"""One forward-kernel launch to profile: ``ncu ... python benchmarks/ncu_forward.py D S CAUSAL``.

FA3 grid shape (batch * seq = 16384, heads * head_dim = 2048), fp16, the default config; two
warm-up calls, then the profiled one (``ncu --launch-skip 2 --launch-count 1``).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

from fa3_jax import _mosaic
from fa3_jax.masks import MaskSpec


def main(d: int, s: int, causal: bool) -> None:
    b, h = 16384 // s, 2048 // d
    q, k, v = (
        jax.random.normal(key, (b, s, h, d), jnp.float16)
        for key in jax.random.split(jax.random.key(0), 3)
    )
    spec = MaskSpec(s, s, causal, None, None)
    fn = jax.jit(
        lambda q, k, v: _mosaic.mha_forward(
            q,
            k,
            v,
            spec=spec,
            softmax_scale=d**-0.5,
            softcap=None,
            alibi_slopes_BH=None,
            segment_ids=None,
            block_mask=None,
        )[0]
    )
    for _ in range(3):
        jax.block_until_ready(fn(q, k, v))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "causal")
