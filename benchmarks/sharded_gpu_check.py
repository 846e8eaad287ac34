"""Mosaic attention split over the GPUs of one host under ``jit``: correct, local, and timed.

``PYTHONPATH=. python benchmarks/sharded_gpu_check.py OUT_JSON``

On every device of a ('data', 'model') mesh (data = all devices), ``jax.grad`` of
``fa3_jax.attention`` (causal, ALiBi, packed documents, GQA; bf16) with the batch
sharded over the devices. It must equal, bit for bit, the same call unsharded on one GPU
(the kernels are deterministic and per row), and the compiled program must hold no
all-gather (each GPU runs its own rows); the error against the float32 reference is
reported. The same call on an explicit-sharding mesh (shard_map path) must be identical too. Then
fwd+bwd time of the sharded call against the same per-device batch on one GPU: with the
work split, the two should match. Table last, JSON to OUT_JSON.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import fa3_jax
from fa3_jax.benchmark import time_calls


def _inputs(batch, seq, heads, heads_kv, head_dim):
    keys = jax.random.split(jax.random.key(batch + seq), 5)
    q = jax.random.normal(keys[0], (batch, seq, heads, head_dim), jnp.bfloat16)
    k = jax.random.normal(keys[1], (batch, seq, heads_kv, head_dim), jnp.bfloat16)
    v = jax.random.normal(keys[2], (batch, seq, heads_kv, head_dim), jnp.bfloat16)
    dout = jax.random.normal(keys[3], q.shape, jnp.bfloat16)
    starts = jax.random.bernoulli(keys[4], 1 / 512, (batch, seq)).at[:, 0].set(True)
    seg = jnp.cumsum(starts, axis=1, dtype=jnp.int32)
    return q, k, v, dout, seg


def _fwd_bwd(impl, slopes):
    def f(q, k, v, dout, seg):
        def out(q, k, v):
            o = fa3_jax.attention(
                q, k, v, causal=True, alibi_slopes=slopes, segment_ids=seg, implementation=impl
            )
            return o.astype(jnp.float32)

        o, vjp = jax.vjp(out, q, k, v)
        return (o, *vjp(dout.astype(jnp.float32)))

    return f


def main(out_path: str) -> int:
    n = jax.device_count()
    mesh = jax.make_mesh((n, 1), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    one = jax.devices()[0]
    batch_per_device, seq, heads, heads_kv, head_dim = 4, 2048, 16, 8, 128
    q, k, v, dout, seg = _inputs(batch_per_device * n, seq, heads, heads_kv, head_dim)
    slopes = jnp.asarray(fa3_jax.alibi_slopes(heads))
    sh4 = NamedSharding(mesh, PartitionSpec("data"))
    sharded = [jax.device_put(x, sh4) for x in (q, k, v, dout, seg)]
    ours = jax.jit(_fwd_bwd("mosaic", slopes))
    hlo = ours.lower(*sharded).compile().as_text()
    got = ours(*sharded)
    on_one = [jax.device_put(x.astype(jnp.float32), one) for x in (q, k, v, dout)]
    want = jax.jit(_fwd_bwd("reference", slopes))(*on_one, jax.device_put(seg, one))
    names = ("out", "dq", "dk", "dv")
    errors = {
        name: float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b))))
        for name, a, b in zip(names, got, want, strict=True)
    }
    scale = {
        name: float(np.max(np.abs(np.asarray(b)))) for name, b in zip(names, want, strict=True)
    }
    # the same jitted function: it retraces for each placement of its inputs
    whole = ours(*(jax.device_put(x, one) for x in (q, k, v, dout, seg)))
    identical = all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, whole, strict=True)
    )
    explicit_mesh = jax.make_mesh((n, 1), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(explicit_mesh):
        explicit_args = [
            jax.device_put(x, NamedSharding(explicit_mesh, PartitionSpec("data")))
            for x in (q, k, v, dout, seg)
        ]
        explicit = ours(*explicit_args)
    explicit_identical = all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(explicit, whole, strict=True)
    )
    local = [jax.device_put(x[:batch_per_device], one) for x in (q, k, v, dout, seg)]
    record = {
        "device": one.device_kind,
        "devices": n,
        "jax_version": jax.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shape": [batch_per_device * n, seq, heads, heads_kv, head_dim],
        "all_gathers_in_hlo": hlo.count("all-gather"),
        "identical_to_one_gpu": identical,
        "explicit_mesh_identical_to_one_gpu": explicit_identical,
        "explicit_out_sharding": str(explicit[0].sharding.spec),
        "max_abs_error": errors,
        "max_abs_reference": scale,
        "out_sharding": str(got[0].sharding.spec),
        "sharded_ms": time_calls(ours, sharded, iters=10, repeats=3),
        "one_gpu_same_per_device_batch_ms": time_calls(ours, local, iters=10, repeats=3),
    }
    ok = identical and explicit_identical and record["all_gathers_in_hlo"] == 0
    record["ok"] = ok
    with open(out_path, "w") as f:
        json.dump(record, f, indent=1)
    print("| check | value |\n|---|---|")
    for key, value in record.items():
        print(f"| {key} | {value} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
