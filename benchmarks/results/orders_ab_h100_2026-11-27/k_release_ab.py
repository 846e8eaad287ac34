"""Forward A/B: with segment ids, free the K slot at once on full tiles (after reading the kv ids
on partial ones) against after every tile's logits. Run from the repo root once per tree, in
alternation: ``TAG=base PYTHONPATH=. python …/k_release_ab.py``, ``TAG=new PYTHONPATH=ab_new:.
…`` (``ab_new``: the candidate tree's ``fa3_jax``). Default configs (the dynamic order)."""

import json
import os
import sys

import jax.numpy as jnp

sys.path.insert(0, "benchmarks")  # run from the repo root
from mosaic_forward_check import bench  # noqa: E402

from fa3_jax.config import forward_config  # noqa: E402

# (head dim, seq per row, causal, dtype, tokens per document)
RUNS = [(128, 16384, True, jnp.bfloat16, 2048), (128, 16384, True, jnp.bfloat16, 1024),
        (64, 16384, True, jnp.float16, 2048), (128, 2048, True, jnp.bfloat16, 2048)]

tag = os.environ["TAG"]
for d, s, causal, dtype, doc_len in RUNS:
    config = forward_config(d, dtype, causal=causal, segments=True, seq_k=s)
    r = bench(d, s, causal, dtype, [(tag, config)], peers=False, doc_len=doc_len)
    print(tag, d, s, doc_len, json.dumps(r["tflops"]), flush=True)
