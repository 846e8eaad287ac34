"""Forward config changes against the heuristic's config, timed in interleaved rounds on the FA3
grid sizes (batch * seq = 16384, heads * D = 2048), inference forward (no LSE).

``PYTHONPATH=. python benchmarks/forward_config_ab.py OUT RUNS VARIANT [VARIANT ...]``

RUNS: comma-separated ``D:S:causal|dense``; each VARIANT ``label=field:value;field:value`` (a
``ForwardConfig`` change, values as Python literals). Five rounds, each timing every config in
turn; fp16 and bf16. A table, and JSON in OUT/forward_config_ab.json.
"""

import ast
import dataclasses
import json
import statistics
import sys

import jax
import jax.numpy as jnp

from fa3_jax import _mosaic
from fa3_jax.benchmark import gpu_time
from fa3_jax.config import forward_config
from fa3_jax.masks import MaskSpec


def parse_variant(text):
    label, _, changes = text.partition("=")
    fields = (item.split(":", 1) for item in changes.split(";") if item)
    return label, {name: ast.literal_eval(value) for name, value in fields}


def grid_inputs(d, s, causal, dtype):
    """(q, k, v), the forward's FLOPs, MaskSpec and softmax scale of one FA3 grid size."""
    b, h = 16384 // s, 2048 // d
    ks = jax.random.split(jax.random.key(0), 3)
    qkv = tuple(jax.random.normal(x, (b, s, h, d), dtype) for x in ks)
    flops = 4 * b * s * s * h * d / (2 if causal else 1)
    return qkv, flops, MaskSpec(s, s, causal), d**-0.5


def interleaved_ms(fns, args, rounds):
    """{label: [ms per call of each round]}: every round times each of ``fns`` in turn."""
    ms = {label: [] for label in fns}
    for _ in range(rounds):
        for label, fn in fns.items():
            ms[label].append(gpu_time(fn, args, calls=60)[0])
    return ms


def main(out_dir, runs, variants, rounds=5):
    rows = []
    for run in runs.split(","):
        d, s, mask = run.split(":")
        d, s, causal = int(d), int(s), mask == "causal"
        for dtype in (jnp.float16, jnp.bfloat16):
            qkv, flops, spec, scale = grid_inputs(d, s, causal, dtype)
            base = forward_config(d, dtype, causal=causal, seq_k=s)
            configs = {"default": base}
            configs.update((lb, dataclasses.replace(base, **ch)) for lb, ch in variants)
            call = dict(spec=spec, softmax_scale=scale, softcap=None, alibi_slopes_BH=None,
                        segment_ids=None, block_mask=None, with_lse=False)
            fns = {label: jax.jit(lambda q, k, v, c=config, call=call: _mosaic.mha_forward(
                q, k, v, config=c, **call)[0]) for label, config in configs.items()}
            ms = interleaved_ms(fns, qkv, rounds)
            row = dict(
                d=d,
                s=s,
                causal=causal,
                dtype=jnp.dtype(dtype).name,
                ms_rounds=ms,
                tflops={lb: round(flops / statistics.median(t) / 1e9, 1) for lb, t in ms.items()},
            )
            print(row, flush=True)
            rows.append(row)
            with open(f"{out_dir}/forward_config_ab.json", "w") as f:
                json.dump(
                    dict(
                        device=jax.devices()[0].device_kind,
                        jax=jax.__version__,
                        variants=dict(variants),
                        rows=rows,
                    ),
                    f,
                    indent=1,
                )
    labels = [lb for lb, _ in variants]
    print("\n| D | S | causal | dtype | default | " + " | ".join(labels) + " |")
    for r in rows:
        t = r["tflops"]
        cells = [f"{t[lb]} ({100 * (t[lb] / t['default'] - 1):+.1f}%)" for lb in labels]
        print(
            f"| {r['d']} | {r['s']} | {r['causal']} | {r['dtype']} | {t['default']} | "
            + " | ".join(cells)
            + " |"
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [parse_variant(v) for v in sys.argv[3:]])
