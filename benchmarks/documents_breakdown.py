"""Packed documents against the same documents as a batch: where the time goes, per kernel.

Run on a Hopper machine from the repo root:
``PYTHONPATH=. python benchmarks/documents_breakdown.py --out DIR``.
bf16, head dim 128, 16 heads, 16k tokens, causal. Each case runs through ``fa3_jax.attention``
(forward, and the backward pullback alone, as ``fa3_jax.benchmark`` times it), CUPTI times every
kernel of a call (median over calls), and TFLOP/s count visible pairs, so rows compare directly:

- ``documents``: one 16k row, 8 documents of 2k (segment ids) — the issue's packed-documents case;
- ``batch``: the same 8 documents as 8 rows of 2k (what a per-document launch would do);
- ``causal``: one 16k row, no documents (the issue's dense reference).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import fa3_jax
from fa3_jax.benchmark import gpu_time

D, HEADS, TOKENS, DOC = 128, 16, 16384, 2048


def _case(name):
    """(batch, seq, kwargs, visible pairs per head)."""
    if name == "documents":
        ids = jnp.asarray(np.arange(TOKENS, dtype=np.int32) // DOC)[None]
        return 1, TOKENS, dict(segment_ids=ids), (TOKENS // DOC) * DOC * (DOC + 1) // 2
    if name == "batch":
        return TOKENS // DOC, DOC, {}, (TOKENS // DOC) * DOC * (DOC + 1) // 2
    return 1, TOKENS, {}, TOKENS * (TOKENS + 1) // 2


def run(name, mode, calls):
    b, s, kw, pairs = _case(name)
    rng = np.random.default_rng(0)
    q, k, v, do = (jnp.asarray(rng.standard_normal((b, s, HEADS, D)), jnp.bfloat16)
                   for _ in range(4))

    def fwd(q, k, v):
        return fa3_jax.attention(q, k, v, causal=True, **kw)

    if mode == "fwd":
        kernels = gpu_time(jax.jit(fwd), (q, k, v), calls=calls)[1]
        flops = 4.0 * HEADS * D * pairs
    else:
        _, pullback = jax.jit(lambda q, k, v: jax.vjp(fwd, q, k, v))(q, k, v)
        kernels = gpu_time(jax.jit(lambda p, do: p(do)), (pullback, do), calls=calls)[1]
        flops = 10.0 * HEADS * D * pairs
    total = sum(ms for _, ms in kernels)
    attn = sum(ms for n, ms in kernels if "mosaic" in n)
    return dict(case=name, mode=mode, ms=total, attention_ms=attn, other_ms=total - attn,
                tflops=flops / (total * 1e-3) / 1e12,
                attention_tflops=flops / (attn * 1e-3) / 1e12, kernels=kernels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--calls", type=int, default=60)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  device=jax.devices()[0].device_kind, jax=jax.__version__, rows=[])
    for mode in ("fwd", "bwd"):
        for name in ("documents", "batch", "causal"):
            row = run(name, mode, args.calls)
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
            (args.out / "documents_breakdown.json").write_text(json.dumps(report, indent=1))
    print("| mode | case | ms | TF/s | attention kernels ms | TF/s | other kernels ms |")
    print("|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        print(f"| {r['mode']} | {r['case']} | {r['ms']:.3f} | {r['tflops']:.0f} | "
              f"{r['attention_ms']:.3f} | {r['attention_tflops']:.0f} | {r['other_ms']:.3f} |")


if __name__ == "__main__":
    main()
