"""Forward A/B of segment-id handling (tables 1 and 2 of this folder's README).

From the repo root on the GPU machine, once per tree: ``TAG=base PYTHONPATH=ab_base:. python
benchmarks/results/segments_ab_h100_2026-11-27/forward_ab.py``
(``ab_base``: ``git archive`` of the base tree's ``fa3_jax``), then ``TAG=new PYTHONPATH=. …``;
``CHECK=1`` first checks segment ids against the reference on the GPU.
"""

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
    ("seg-d256-f16-causal",
     dict(b=1, sq=640, sk=640, hq=2, hkv=2, d=256, dtype=F16, causal=True, segments=True)),
]
# (head dim, seq per row, causal, dtype, tokens per document)
RUNS = [(128, 2048, True, BF, 2048), (128, 16384, True, BF, 2048), (128, 16384, True, BF, 16384),
        (64, 16384, True, F16, 2048), (128, 16384, False, BF, 2048)]


def main():
    tag = os.environ.get("TAG", "base")
    if os.environ.get("CHECK"):
        for name, kw in CHECKS:
            print(tag, json.dumps(check(name, **kw)), flush=True)
    for d, s, causal, dtype, doc_len in RUNS:
        config = forward_config(d, dtype, causal=causal, masked=True)
        r = bench(d, s, causal, dtype, [(tag, config)], peers=False, doc_len=doc_len)
        print(d, s, causal, doc_len, json.dumps(r["tflops"]), flush=True)


if __name__ == "__main__":
    main()
