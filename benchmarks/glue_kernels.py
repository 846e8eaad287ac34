"""The backward's XLA glue around the Mosaic kernels, in several formulations, per kernel.

Run on a Hopper machine from the repo root:
``PYTHONPATH=. python benchmarks/glue_kernels.py --out DIR``.
At the benchmark grid's sizes (batch * seq = 16384 tokens, heads * head_dim = 2048, bf16),
times (CUPTI, median) the three memory-bound steps of ``fa3_jax``'s backward outside its
kernels: ``delta = rowsum(dO * O)`` as f32 ``[B, H, S]``; the fused dQ path's zero-initialised
f32 accumulator ``[B, H, D / 32, S, 32]``; and its conversion to ``dQ [B, S, H, D]`` in the input
dtype. Each formulation is checked against the first one; the GB/s column counts the bytes
each step must move.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from fa3_jax.benchmark import gpu_time

C = 32  # the fused dQ accumulator's column block (backward_dkdv._DQ_BLOCK)


def delta_variants():
    f32 = jnp.float32

    def einsum(o, do):
        return jnp.einsum("bshd,bshd->bhs", o.astype(f32), do.astype(f32))

    def sum_then_transpose(o, do):
        return (o.astype(f32) * do.astype(f32)).sum(-1).transpose(0, 2, 1)

    def sum_barrier_transpose(o, do):
        rows = jax.lax.optimization_barrier((o.astype(f32) * do.astype(f32)).sum(-1))
        return rows.transpose(0, 2, 1)

    def transpose_inputs(o, do):
        return (o.astype(f32) * do.astype(f32)).transpose(0, 2, 1, 3).sum(-1)

    def dot_general(o, do):
        # batched (b, s, h) dot over d, f32 result
        return jax.lax.dot_general(
            o, do, (((3,), (3,)), ((0, 1, 2), (0, 1, 2))), preferred_element_type=f32
        ).transpose(0, 2, 1)

    return dict(einsum=einsum, sum_then_transpose=sum_then_transpose,
                sum_barrier_transpose=sum_barrier_transpose, transpose_inputs=transpose_inputs,
                dot_general=dot_general)


def zero_variants(shape):
    n = int(np.prod(shape))
    return dict(
        zeros=lambda: jnp.zeros(shape, jnp.float32),
        flat_reshape=lambda: jnp.zeros((n,), jnp.float32).reshape(shape),
    )


def convert_variants(scale, dtype):
    def current(acc):
        b, h, n, s, c = acc.shape
        out = acc.transpose(0, 3, 1, 2, 4).reshape(b, s, h, n * c)
        return (out * scale).astype(dtype)

    def convert_barrier_transpose(acc):
        b, h, n, s, c = acc.shape
        small = jax.lax.optimization_barrier((acc * scale).astype(dtype))
        return small.transpose(0, 3, 1, 2, 4).reshape(b, s, h, n * c)

    def merged_heads(acc):
        # [B, H*N, S, C] -> [B, S, H*N, C]: one swap of two axes
        b, h, n, s, c = acc.shape
        out = jnp.swapaxes(acc.reshape(b, h * n, s, c), 1, 2).reshape(b, s, h, n * c)
        return (out * scale).astype(dtype)

    return dict(current=current, convert_barrier_transpose=convert_barrier_transpose,
                merged_heads=merged_heads)


def _us(fn, *args):
    return gpu_time(jax.jit(fn), args, calls=40)[0] * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for d, s in ((64, 2048), (128, 2048), (128, 16384)):
        b, h = 16384 // s, 2048 // d
        o, do = (jnp.asarray(rng.standard_normal((b, s, h, d)), jnp.bfloat16) for _ in range(2))
        acc_shape = (b, h, d // C, s, C)
        acc = jnp.asarray(rng.standard_normal(acc_shape), jnp.float32)
        groups = [
            ("delta", delta_variants(), (o, do), 2 * o.size * 2 + b * h * s * 4),
            ("zero_dq_acc", zero_variants(acc_shape), (), acc.size * 4),
            ("convert_dq", convert_variants(0.088, jnp.bfloat16), (acc,),
             acc.size * 4 + acc.size * 2),
        ]
        for step, variants, inputs, nbytes in groups:
            want = None
            for name, fn in variants.items():
                got = np.asarray(jax.jit(fn)(*inputs), np.float32)
                if want is None:
                    want = got
                err = float(np.abs(got - want).max()) if got.shape == want.shape else None
                us = _us(fn, *inputs)
                row = dict(d=d, s=s, step=step, variant=name, us=round(us, 1),
                           gbps=round(nbytes / us * 1e-3), max_diff=err)
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  device=jax.devices()[0].device_kind, jax=jax.__version__, rows=rows)
    (args.out / "glue_kernels.json").write_text(json.dumps(report, indent=1))
    print("| D | S | step | variant | us | GB/s | max diff |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['d']} | {r['s']} | {r['step']} | {r['variant']} | {r['us']} | {r['gbps']} "
              f"| {r['max_diff']} |")


if __name__ == "__main__":
    main()
