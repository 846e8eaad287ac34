"""Forward and backward A/B through ``fa3_jax.attention`` (table 3 of this folder's README).

Run as ``forward_ab.py`` (``TAG``, ``PYTHONPATH``, ``CHECK=1`` for gradient checks against the
float32 reference path on random documents).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, "benchmarks")  # run from the repo root
import documents_breakdown  # noqa: E402

import fa3_jax  # noqa: E402

# (batch, seq, heads_q, heads_kv, head dim, dtype, causal)
CHECKS = [(2, 1000, 4, 2, 128, jnp.bfloat16, True), (1, 777, 4, 1, 64, jnp.float16, False),
          (1, 4096, 4, 4, 128, jnp.bfloat16, True)]


def check(b, s, h, hkv, d, dtype, causal, rng):
    """Relative max errors of dQ, dK, dV (Mosaic vs the float32 reference) and any NaN."""
    q = jnp.asarray(rng.standard_normal((b, s, h, d)), dtype)
    k, v = (jnp.asarray(rng.standard_normal((b, s, hkv, d)), dtype) for _ in range(2))
    ids = jnp.asarray(np.cumsum(rng.random((b, s)) < 6.0 / s, axis=1), jnp.int32)
    weights = jnp.cos(jnp.arange(d))

    def grads(impl, *args):
        def loss(q, k, v):
            o = fa3_jax.attention(q, k, v, causal=causal, segment_ids=ids, implementation=impl)
            return (o.astype(jnp.float32) * weights).sum()

        return jax.jit(jax.grad(loss, (0, 1, 2)))(*args)

    got = grads("mosaic", q, k, v)
    want = grads("reference", *(x.astype(jnp.float32) for x in (q, k, v)))
    errs = [float(jnp.abs(g.astype(jnp.float32) - w).max() / jnp.abs(w).max())
            for g, w in zip(got, want, strict=True)]
    return errs, any(bool(jnp.isnan(g).any()) for g in got)


def main():
    tag = os.environ.get("TAG", "base")
    if os.environ.get("CHECK"):
        rng = np.random.default_rng(0)
        for case in CHECKS:
            errs, nan = check(*case, rng)
            errs = [f"{e:.2e}" for e in errs]
            print(tag, "check", case, "rel max err dq/dk/dv", errs, "nan", nan, flush=True)
    for mode in ("fwd", "bwd"):
        for name in ("documents", "batch"):
            r = documents_breakdown.run(name, mode, 60)
            kernels = [round(ms * 1e3) for n, ms in r["kernels"] if "mosaic" in n]
            print(tag, mode, name, round(r["tflops"]), kernels, flush=True)


if __name__ == "__main__":
    main()
