"""The forward with and without its LSE output (``mha_forward(with_lse=)``), same configs,
timed in interleaved rounds on the FA3 grid sizes (batch * seq = 16384, heads * D = 2048).

``PYTHONPATH=. python benchmarks/forward_lse_ab.py OUT``: a table, and JSON in OUT.
"""

import json
import statistics
import sys

import jax
import jax.numpy as jnp
from forward_config_ab import grid_inputs, interleaved_ms

from fa3_jax import _mosaic

RUNS = [(64, 512, True), (64, 1024, True), (64, 2048, True), (64, 1024, False),
        (128, 512, True), (128, 1024, True), (128, 16384, True), (128, 512, False)]


def main(out_dir, rounds=5):
    rows = []
    for d, s, causal in RUNS:
        for dtype in (jnp.float16, jnp.bfloat16):
            qkv, flops, spec, scale = grid_inputs(d, s, causal, dtype)
            fns = {}
            for label, with_lse in (("lse", True), ("no_lse", False)):
                fns[label] = jax.jit(lambda q, k, v, w=with_lse, spec=spec, scale=scale:
                                     _mosaic.mha_forward(
                    q, k, v, spec=spec, softmax_scale=scale, softcap=None, alibi_slopes_BH=None,
                    segment_ids=None, block_mask=None, with_lse=w)[0])
            ms = interleaved_ms(fns, qkv, rounds)
            row = dict(d=d, s=s, causal=causal, dtype=jnp.dtype(dtype).name, ms_rounds=ms,
                       tflops={lb: round(flops / statistics.median(t) / 1e9, 1)
                               for lb, t in ms.items()})
            print(row, flush=True)
            rows.append(row)
            with open(f"{out_dir}/forward_lse_ab.json", "w") as f:
                json.dump(dict(device=jax.devices()[0].device_kind, rows=rows), f, indent=1)
    print("\n| D | S | causal | dtype | with LSE | without | change |")
    for r in rows:
        t = r["tflops"]
        print(f"| {r['d']} | {r['s']} | {r['causal']} | {r['dtype']} | {t['lse']} | "
              f"{t['no_lse']} | {100 * (t['no_lse'] / t['lse'] - 1):+.1f}% |")


if __name__ == "__main__":
    main(sys.argv[1])
