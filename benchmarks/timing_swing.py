"""Is a forward's run-to-run swing tied to the jit, the inputs' addresses or the card?

``PYTHONPATH=. python benchmarks/timing_swing.py`` on a Hopper GPU: D128 dense 8k fp16 (FA3 grid
shape), eight trials; each allocates new inputs behind a pad of random size, every other trial
re-jits, and times ours twice in a row and cuDNN once (CUPTI, median of 60 calls each).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fa3_jax import _mosaic
from fa3_jax.benchmark import gpu_time
from fa3_jax.masks import MaskSpec


def main() -> None:
    d, s = 128, 8192
    b, h = 16384 // s, 2048 // d
    flops = 4 * b * s * s * h * d
    spec = MaskSpec(s, s, False)

    def make_fn():
        return jax.jit(functools.partial(
            _mosaic.mha_forward, spec=spec, softmax_scale=d**-0.5, softcap=None,
            alibi_slopes_BH=None, segment_ids=None, block_mask=None))

    cudnn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))
    fn, keep = make_fn(), []
    rng = np.random.default_rng(0)
    for trial in range(8):
        keep.append(jnp.zeros((int(rng.integers(1, 5_000_000)),), jnp.uint8))  # shifts addresses
        q, k, v = (jnp.asarray(rng.standard_normal((b, s, h, d)), jnp.float16) for _ in range(3))
        addrs = [x.unsafe_buffer_pointer() % (1 << 21) for x in (q, k, v)]
        f = make_fn() if trial % 2 else fn
        ours = [gpu_time(lambda *a, f=f: f(*a)[0], (q, k, v), calls=60)[0] for _ in range(2)]
        theirs = gpu_time(cudnn, (q, k, v), calls=60)[0]
        print(f"trial {trial} newjit={trial % 2} ours {flops / ours[0] / 1e9:.0f} / "
              f"{flops / ours[1] / 1e9:.0f}  cudnn {flops / theirs / 1e9:.0f}  addr%2MB {addrs}",
              flush=True)


if __name__ == "__main__":
    main()
