"""Forward A/B of work orders with segment ids whose q ids load with Q (this folder's README).

From the repo root on the GPU machine, once per tree: ``TAG=base PYTHONPATH=ab_base:. python
benchmarks/results/orders_ab_h100_2026-11-27/orders_ab.py`` (``ab_base``: ``git archive`` of
the base tree's ``fa3_jax``; runs only the variants the trees differ in), then ``TAG=new
PYTHONPATH=. …`` (every variant, the default twice); ``CHECK=1`` first checks the grid and every
persistent order with segment ids against the reference on the GPU.
"""

import dataclasses
import json
import os
import sys

import jax.numpy as jnp

sys.path.insert(0, "benchmarks")  # run from the repo root
from mosaic_forward_check import bench, check  # noqa: E402

from fa3_jax.config import forward_config  # noqa: E402

BF, F16 = jnp.bfloat16, jnp.float16
CHECKS = [
    ("seg-d128-bf16-causal",
     dict(b=2, sq=1000, sk=1000, hq=4, hkv=2, d=128, dtype=BF, causal=True, segments=True)),
    ("seg-d64-f16", dict(b=2, sq=777, sk=777, hq=4, hkv=1, d=64, dtype=F16, segments=True)),
    ("seg-d128-win-alibi",
     dict(b=1, sq=2048, sk=2048, hq=4, hkv=4, d=128, dtype=BF, causal=True, window=(300, 0),
          alibi=True, segments=True, softcap=30.0)),
]
# (head dim, seq per row, causal, dtype, tokens per document or None)
DOCS = [(128, 16384, True, BF, 2048), (128, 16384, True, BF, 1024), (64, 16384, True, F16, 2048),
        (128, 16384, False, BF, 2048), (128, 2048, True, BF, 2048)]
CAUSAL = [(64, 1024, True, F16, None), (64, 4096, True, F16, None), (128, 1024, True, F16, None),
          (128, 4096, True, F16, None), (128, 16384, True, F16, None)]


def _orders(base, everything):
    """(label, config) variants: the grid default, then persistent CTAs in each order."""
    def persistent(order):
        return dataclasses.replace(base, persistent=True, tile_order=order, prefetch_q=True)

    if not everything:
        return [("grid", base), ("dynamic", persistent("dynamic"))]
    return [("grid", base), ("q_tiles", persistent("q_tiles")), ("lpt", persistent("lpt")),
            ("balanced", persistent("balanced")), ("dynamic", persistent("dynamic")),
            ("grid_again", base)]


def main():
    tag = os.environ.get("TAG", "base")
    everything = tag != "base"
    if os.environ.get("CHECK"):
        for name, kw in CHECKS:
            base = forward_config(kw["d"], kw["dtype"], causal=kw.get("causal", False),
                                  masked=True)
            for label, config in _orders(base, everything=True)[:5]:
                print(tag, json.dumps(check(f"{name}-{label}", **kw, config=config)), flush=True)
    for d, s, causal, dtype, doc_len in DOCS:
        base = forward_config(d, dtype, causal=causal, masked=True)
        r = bench(d, s, causal, dtype, _orders(base, everything), peers=False, doc_len=doc_len)
        print(tag, d, s, causal, doc_len, json.dumps(r["tflops"]), flush=True)
    for d, s, causal, dtype, _ in CAUSAL:
        base = forward_config(d, dtype, causal=causal, seq_k=s)
        variants = [("default", base), ("dynamic", dataclasses.replace(
            base, persistent=True, tile_order="dynamic", prefetch_q=True))]
        if everything:
            variants.append(("default_again", base))
        r = bench(d, s, causal, dtype, variants, peers=False)
        print(tag, d, s, causal, json.dumps(r["tflops"]), flush=True)


if __name__ == "__main__":
    main()
