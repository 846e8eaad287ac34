"""Kernel launches to profile: ``ncu ... python benchmarks/ncu_kernels.py fwd|bwd D S MASK``.

FA3 grid shape (batch * seq = 16384, heads * head_dim = 2048), fp16, the default configs; three
calls. ``fwd`` runs one forward kernel per call (profile with ``--launch-skip 2 --launch-count 1``);
``bwd`` runs the backward alone from given residuals, two Mosaic kernels per call, dK/dV then dQ
(``--launch-skip 4 --launch-count 2``). MASK: ``causal``, ``dense`` or ``tail`` (dense with 8
keys fewer: element masks compiled in, the last kv tile of each row partial). An optional fifth
argument, ``kernel`` or ``atomic``, forces the backward's dQ mode (``atomic``: one Mosaic kernel
per call, ``--launch-skip 2 --launch-count 1``); for ``fwd`` it names the dtype: ``fp16``
(default), ``bf16`` or ``fp8`` (float8_e4m3fn from ``quantize_fp8``, with descales; the
forward then launches V's transpose before the kernel: profile with ``-k regex:mosaic``).
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp

from fa3_jax import _mosaic
from fa3_jax.config import default_backward_config
from fa3_jax.fp8 import quantize_fp8
from fa3_jax.masks import MaskSpec


def main(mode: str, d: int, s: int, mask: str, extra: str | None = None, lse: str = "") -> None:
    b, h = 16384 // s, 2048 // d
    causal = mask == "causal"
    keys = s - 8 if mask == "tail" else s
    dq = extra if mode == "bwd" else None
    dtype = {"fp16": jnp.float16, "bf16": jnp.bfloat16, "fp8": jnp.float32}[
        extra if mode == "fwd" and extra else "fp16"
    ]
    q_BSHD, k_BSHD, v_BSHD, do_BSHD = (
        jax.random.normal(key, (b, s, h, d), dtype)
        for key in jax.random.split(jax.random.key(0), 4)
    )
    descale = None
    if extra == "fp8" and mode == "fwd":
        (q_BSHD, dq_), (k_BSHD, dk_), (v_BSHD, dv_) = map(quantize_fp8, (q_BSHD, k_BSHD, v_BSHD))
        descale = (dq_, dk_, dv_)
    k_BSHD, v_BSHD = k_BSHD[:, :keys], v_BSHD[:, :keys]
    spec = MaskSpec(s, keys, causal, None, None)
    common = dict(
        spec=spec,
        softmax_scale=d**-0.5,
        softcap=None,
        alibi_slopes_BH=None,
        segment_ids=None,
        block_mask=None,
    )
    forward = jax.jit(
        lambda q, k, v: _mosaic.mha_forward(
            q, k, v, **common, descale_BG=descale, with_lse=lse != "nolse"
        )
    )
    if mode == "fwd":
        for _ in range(3):
            jax.block_until_ready(forward(q_BSHD, k_BSHD, v_BSHD))
        return
    out_BSHD, lse_BHS = forward(q_BSHD, k_BSHD, v_BSHD)
    config = None
    if dq is not None:
        kind = "masked" if causal else "dense"
        config = dataclasses.replace(default_backward_config(d, seq_k=s, kind=kind), dq=dq)
    backward = jax.jit(
        lambda q, k, v, o, lse, do: _mosaic.mha_backward(
            q, k, v, o, lse, do, **common, config=config
        )
    )
    for _ in range(3):
        jax.block_until_ready(backward(q_BSHD, k_BSHD, v_BSHD, out_BSHD, lse_BHS, do_BSHD))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], *sys.argv[5:])
