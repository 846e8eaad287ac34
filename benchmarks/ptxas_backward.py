"""Compile (not run) the backward for ptxas' register and spill report, on the GPU machine:
``MOSAIC_GPU_DUMP_PTXAS=1 python benchmarks/ptxas_backward.py [HEAD_DIMS [DQ_MODES [VARIANTS]]]``,
then grep ``spill``. ``VARIANTS``: ``;``-separated sets of ``BackwardConfig`` overrides, e.g.
``"producer_registers=40;producer_registers=24,register_operands=False"`` (ints and booleans).

Both dQ modes (``kernel``: dK/dV and dQ kernels; ``atomic``: dQ added by the dK/dV kernel) at
head dim 64/128, dense and causal, bf16, S 4096 (FA3 grid shape). The fused path loses 12-38% on
masked head dim 128 walks, where it spills (benchmarks/NOTES.md, "Session 8" and "Session 9").
"""

from __future__ import annotations

import dataclasses
import itertools
import sys

import jax
import jax.numpy as jnp

from fa3_jax._mosaic.backward import mha_backward
from fa3_jax.config import BackwardConfig
from fa3_jax.masks import MaskSpec


def _overrides(text: str) -> dict:
    """``"a=1,b=False"`` -> ``{"a": 1, "b": False}``."""
    out = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        out[key] = (
            {"True": True, "False": False}.get(value) if value in ("True", "False") else int(value)
        )
    return out


def main(
    head_dims=(64, 128), dq_modes=("kernel", "atomic"), variants=("",), seq: int = 4096
) -> None:
    runs = [
        (dq, d, causal, True, False)
        for dq in dq_modes
        for causal in (False, True)
        for d in head_dims
    ]
    if 128 in head_dims and "atomic" in dq_modes:
        runs.append(("atomic", 128, True, False, False))  # element masks on every tile
        runs.append(("atomic", 128, True, True, True))  # ALiBi (the pretraining model's)
    for (dq, d, causal, branch, alibi), variant in itertools.product(runs, variants):
        b, h = 16384 // seq, 2048 // d
        q = jax.ShapeDtypeStruct((b, seq, h, d), jnp.bfloat16)
        lse = jax.ShapeDtypeStruct((b, h, seq), jnp.float32)
        slopes = jnp.linspace(0.02, 0.3, h, dtype=jnp.float32)[None] if alibi else None
        cfg = dataclasses.replace(
            BackwardConfig(register_operands=True, dq=dq, block_kv_dq=128, branch_masks=branch),
            **_overrides(variant),
        )
        spec = MaskSpec(seq, seq, causal)
        fn = jax.jit(
            lambda *a, cfg=cfg, spec=spec, slopes=slopes: mha_backward(
                *a, spec=spec, softmax_scale=0.1, alibi_slopes_BH=slopes, config=cfg
            )
        )
        print(
            f"== dq={dq} D{d} causal={causal} branch_masks={branch} alibi={alibi} {variant}",
            flush=True,
        )
        fn.lower(q, q, q, q, lse, q).compile()


if __name__ == "__main__":
    dims = tuple(int(d) for d in sys.argv[1].split(",")) if len(sys.argv) > 1 else (64, 128)
    modes = tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else ("kernel", "atomic")
    main(dims, modes, tuple(sys.argv[3].split(";")) if len(sys.argv) > 3 else ("",))
