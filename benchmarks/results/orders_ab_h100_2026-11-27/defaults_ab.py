"""Forward: the heuristic's config against the dynamic order where the heuristic does not pick
it yet (this folder's README, table 3): causal fp16 at head dims 64 and 128 (cuDNN alongside),
the 16k causal window and block masks of 128 x 128 blocks at 16k (bf16 D128, dense = 1.0).

From the repo root on the GPU machine: ``PYTHONPATH=. python
benchmarks/results/orders_ab_h100_2026-11-27/defaults_ab.py``.
"""

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, "benchmarks")  # run from the repo root
from mosaic_forward_check import _inputs, _time, bench  # noqa: E402

from fa3_jax import BlockMask, _mosaic  # noqa: E402
from fa3_jax._mosaic import default_forward_config  # noqa: E402
from fa3_jax.masks import MaskSpec  # noqa: E402


def _dynamic(config):
    return dataclasses.replace(config, persistent=True, tile_order="dynamic", prefetch_q=True)


def _variants(config):
    return [("default", config), ("dynamic", _dynamic(config)), ("default_again", config)]


def block_sparse(density, s=16384, d=128, dtype=jnp.bfloat16, block=128):
    """TFLOP/s (dense non-causal FLOPs) of each variant on a random block mask."""
    h = 2048 // d
    q, k, v = _inputs(jax.random.key(0), 1, s, s, h, h, d, dtype)
    n = s // block
    blocks = np.random.default_rng(0).random((1, n, n)) < density
    bm = BlockMask(jnp.asarray(blocks), block, block)
    spec = MaskSpec(s, s, False, None, None)
    base = default_forward_config(d, dtype, spec, has_segments=False, block_k=block)
    flops = 4 * s * s * h * d
    out = {}
    for label, cfg in _variants(base):
        fn = jax.jit(lambda q, k, v, cfg=cfg: _mosaic.mha_forward(
            q, k, v, spec=spec, softmax_scale=d**-0.5, softcap=None, alibi_slopes_BH=None,
            segment_ids=None, block_mask=bm, config=cfg)[0])
        out[label] = round(flops / _time(fn, q, k, v) / 1e12, 1)
    return out


def main():
    for d in (64, 128):
        for s in (512, 1024, 2048, 4096, 8192, 16384):
            spec = MaskSpec(s, s, True, None, None)
            base = default_forward_config(d, jnp.float16, spec, has_segments=False, block_k=None)
            r = bench(d, s, True, jnp.float16, _variants(base), peers=False)
            r["tflops"]["cudnn"] = bench(d, s, True, jnp.float16, [], peers=True)["tflops"]["cudnn"]
            print("causal", d, s, base.tile_order, json.dumps(r["tflops"]), flush=True)
    spec = MaskSpec(16384, 16384, True, 1024, 0)
    base = default_forward_config(128, jnp.bfloat16, spec, has_segments=False, block_k=None)
    r = bench(128, 16384, True, jnp.bfloat16, _variants(base), peers=False, window=(1024, 0))
    print("window", 128, 16384, base.tile_order, json.dumps(r["tflops"]), flush=True)
    for density in (0.2, 0.5, 0.8, 1.0):
        print("block_sparse", density, json.dumps(block_sparse(density)), flush=True)


if __name__ == "__main__":
    main()
