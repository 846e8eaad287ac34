"""Compile (not run) forward kernels for their PTX, on the GPU machine:
``MOSAIC_GPU_DUMP_PTX=1 MOSAIC_GPU_DUMP_PTXAS=1 python benchmarks/ptx_forward.py > DUMP.log 2>&1``,
then here: ``python benchmarks/sass_loops.py split DUMP.log DIR`` and ptxas/nvdisasm on each
``k<i>.ptx`` (one per kernel, in the order of the ``==`` lines).

Head dim 64 at 4k, bf16, on the FA3 grid shape: causal with the default config (two consumers,
persistent), causal and dense on the two- and three-consumer grid: where causal trails dense
per visited pair (benchmarks/NOTES.md, "Session 12").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fa3_jax import _mosaic
from fa3_jax.config import ForwardConfig, forward_config, with_consumers
from fa3_jax.masks import MaskSpec


def main(seq: int = 4096, d: int = 64) -> None:
    dtype = jnp.bfloat16
    two = ForwardConfig(block_kv=128, num_stages=3, pingpong=False)
    runs = [
        ("causal_default", True, forward_config(d, dtype, causal=True, seq_k=seq)),
        ("causal_grid2", True, two),
        ("dense_grid2", False, two),
        ("causal_grid3", True, with_consumers(two, 3)),
    ]
    b, h = 16384 // seq, 2048 // d
    q = jax.ShapeDtypeStruct((b, seq, h, d), dtype)
    for label, causal, cfg in runs:
        spec = MaskSpec(seq, seq, causal)
        fn = jax.jit(lambda q, k, v, cfg=cfg, spec=spec: _mosaic.mha_forward(
            q, k, v, spec=spec, softmax_scale=d**-0.5, softcap=None, alibi_slopes_BH=None,
            segment_ids=None, block_mask=None, config=cfg))
        print(f"== {label} D{d} S{seq} {cfg}", flush=True)
        fn.lower(q, q, q).compile()


if __name__ == "__main__":
    main()
