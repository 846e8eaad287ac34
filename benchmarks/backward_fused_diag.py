"""Where the fused-dQ backward's time goes: one GPU run, a table last.

``PYTHONPATH=. python benchmarks/backward_fused_diag.py OUT.json``

Times, per size (bf16, FA3 grid: batch * seq = 16384, heads * head_dim = 2048):
``mha_backward`` with ``dq='kernel'`` (two kernels) and ``dq='atomic'``; the
dK/dV kernel alone in both modes; and two timing-only ablations of the fused
kernel, made by patching its TMA store in this process (their gradients are
wrong): ``no-reduce`` (plain stores: the cost of the fp32 reduce-adds) and
``no-store`` (no dQ store at all: the cost of the dQ GEMM, dS staging and
barriers alone).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp

from benchmarks.backward_gpu_check import inputs, timeit
from fa3_jax._mosaic import backward_dkdv
from fa3_jax._mosaic.backward import mha_backward
from fa3_jax._mosaic.backward_preprocess import backward_residuals
from fa3_jax._mosaic.backward_scores import ScoreParams
from fa3_jax.config import BackwardConfig
from fa3_jax.masks import MaskSpec, tile_metadata

_copy = backward_dkdv.plgpu.copy_smem_to_gmem


def _patched(mode):
    def copy(src, dst, *args, reduction_op=None, **kwargs):
        if reduction_op is None or mode == "as-is":
            return _copy(src, dst, *args, reduction_op=reduction_op, **kwargs)
        if mode == "no-reduce":
            return _copy(src, dst, *args, **kwargs)
        return None  # no-store

    return copy


def run(d, seq, causal, results):
    batch, heads = 16384 // seq, 2048 // d
    spec = MaskSpec(seq, seq, causal)
    q, k, v, do = inputs(batch, seq, heads, heads, d, jnp.bfloat16, 1)
    out, lse = do * 0.5, jnp.full((batch, heads, seq), 6.0, jnp.float32)
    fl = 4 * batch * seq * seq * heads * d * (0.5 if causal else 1.0) * 2.5
    base = BackwardConfig(register_operands=True)
    params = ScoreParams(spec, d**-0.5, None, False, False)
    rows = {}
    for mode in ("kernel", "atomic"):
        cfg = dataclasses.replace(base, dq=mode)
        full = jax.jit(
            lambda *a, cfg=cfg: mha_backward(*a, spec=spec, softmax_scale=d**-0.5, config=cfg)
        )
        rows[f"{mode}: whole backward"] = timeit(full, (q, k, v, out, lse, do))
        lse2, delta = backward_residuals(out, do, lse, None, seq)
        meta = tile_metadata(spec, cfg.block_q_dkv, cfg.tile_kv_dkv, transpose=True)
        variants = ("as-is",) if mode == "kernel" else ("as-is", "no-reduce", "no-store")
        for variant in variants:
            backward_dkdv.plgpu.copy_smem_to_gmem = _patched(variant)
            try:
                kern = jax.jit(
                    lambda *a, cfg=cfg, meta=meta: backward_dkdv.dkdv_kernel_call(
                        *a, meta, params=params, cfg=cfg
                    )
                )
                rows[f"{mode}: dK/dV kernel {variant}"] = timeit(kern, (q, k, v, do, lse2, delta))
            finally:
                backward_dkdv.plgpu.copy_smem_to_gmem = _copy
    for name, ms in rows.items():
        rec = dict(d=d, seq=seq, causal=causal, what=name, ms=ms, tflops=fl / ms / 1e9)
        results.append(rec)
        print(json.dumps(rec), flush=True)


def main():
    out = pathlib.Path(sys.argv[1])
    print(jax.devices(), flush=True)
    results = []
    for d, seq, causal in [
        (128, 4096, False),
        (64, 4096, False),
        (128, 1024, False),
        (128, 16384, False),
    ]:
        run(d, seq, causal, results)
        out.write_text(json.dumps(results, indent=1))
    print("\n| D | S | causal | what | ms | TFLOP/s (2.5 x fwd) |\n|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['d']} | {r['seq']} | {r['causal']} | {r['what']} | {r['ms']:.3f} | "
            f"{r['tflops']:.0f} |"
        )


if __name__ == "__main__":
    main()
