"""One consumer warpgroup per CTA (meant to run two CTAs per SM) against the default forward.

Ran from ``benchmarks/`` with ``one_consumer.patch`` applied:
``MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=. python benchmarks/one_consumer_ab.py OUT``.
"""

import dataclasses
import json
import sys

import jax.numpy as jnp

sys.path.insert(0, "benchmarks")
from mosaic_forward_check import bench, check  # noqa: E402

from fa3_jax.config import forward_config, with_consumers  # noqa: E402

out = sys.argv[1]
f16, b16 = jnp.float16, jnp.bfloat16
report = []
checks = [
    ("c1-causal", dict(b=2, sq=1000, sk=1000, hq=4, hkv=2, d=64, dtype=f16, causal=True)),
    ("c1-dense", dict(b=2, sq=777, sk=1501, hq=4, hkv=4, d=64, dtype=b16)),
]
for name, kw in checks:
    base = forward_config(64, kw["dtype"], causal=kw.get("causal", False), seq_k=kw["sk"])
    order = "dynamic" if kw.get("causal") else base.tile_order
    cfg = with_consumers(base, 1, persistent=True, num_ctas=264, num_stages=2, tile_order=order)
    r = check(name, **kw, config=cfg)
    print(r, flush=True)
    report.append(r)
runs = [(64, 512, True, f16), (64, 1024, True, f16), (64, 2048, True, f16),
        (64, 1024, False, f16), (128, 512, True, b16), (128, 1024, True, b16)]
for d, s, causal, dt in runs:
    base = forward_config(d, dt, causal=causal, seq_k=s)
    c1 = with_consumers(base, 1, persistent=True, num_stages=2, overlap=True,
                        block_kv=128 if d == 64 else 64, tile_order="dynamic")
    variants = [("default", base), ("c1_132", dataclasses.replace(c1, num_ctas=132)),
                ("c1_264", dataclasses.replace(c1, num_ctas=264)), ("default_again", base)]
    r = bench(d, s, causal, dt, variants, peers=True)
    print(r, flush=True)
    report.append(r)
    with open(f"{out}/one_consumer.json", "w") as f:
        json.dump(report, f, indent=1)
