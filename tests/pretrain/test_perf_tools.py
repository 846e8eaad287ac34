"""XLA flags, the bf16-gradient tied logits and the profile summary of `pretrain.benchmark`."""

import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.model import tied_logits
from pretrain.trace_summary import find_trace, format_summary, summarize_trace
from pretrain.xla_flags import GPU_FLAGS, apply_gpu_flags


def test_gpu_flags_are_added_once_and_user_values_win():
    env = {}
    assert apply_gpu_flags(env) == " ".join(GPU_FLAGS)
    assert apply_gpu_flags(env) == " ".join(GPU_FLAGS)  # idempotent
    env = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true --xla_dump_to=/tmp/x"}
    flags = apply_gpu_flags(env).split()
    assert flags[:2] == ["--xla_gpu_enable_triton_gemm=true", "--xla_dump_to=/tmp/x"]
    assert "--xla_gpu_enable_triton_gemm=false" not in flags
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tied_logits_matches_einsum_and_its_gradients(dtype):
    kx, ke, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 5, 16), jnp.float32)
    emb = jax.random.normal(ke, (40, 16), jnp.float32)
    probe = jax.random.normal(kg, (2, 5, 40), jnp.float32)

    def plain(x, emb):
        return jnp.einsum("bsd,vd->bsv", x, emb, precision="highest")

    def ours(x, emb):
        return tied_logits(x.astype(dtype), emb.astype(dtype))

    out = ours(x, emb)
    assert out.dtype == jnp.float32
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    np.testing.assert_allclose(out, plain(x, emb), rtol=tol, atol=tol * 4)
    want = jax.grad(lambda x, e: jnp.sum(plain(x, e) * probe), argnums=(0, 1))(x, emb)
    got = jax.grad(lambda x, e: jnp.sum(ours(x, e) * probe), argnums=(0, 1))(x, emb)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == jnp.float32
        scale = float(jnp.max(jnp.abs(w)))
        np.testing.assert_allclose(g, w, rtol=0, atol=tol * 4 * scale)


def _write_trace(path, events):
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)


def test_trace_summary_adds_up_device_ops_per_thread(tmp_path):
    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 7, "tid": 3, "name": "thread_name", "args": {"name": "XLA Ops"}},
    ]
    ops = [
        {"ph": "X", "pid": 7, "tid": 3, "name": "gemm", "dur": 30.0},
        {"ph": "X", "pid": 7, "tid": 3, "name": "gemm", "dur": 30.0},
        {"ph": "X", "pid": 7, "tid": 3, "name": "fusion", "dur": 40.0},
        {"ph": "X", "pid": 1, "tid": 9, "name": "host work", "dur": 1e6},
    ]
    trace = tmp_path / "plugins/profile/run1/perfetto_trace.json.gz"
    _write_trace(trace, meta + ops)
    assert find_trace(tmp_path) == trace
    summary = summarize_trace(trace)
    assert summary == {"XLA Ops": [("gemm", 60.0, 2), ("fusion", 40.0, 1)]}
    table = format_summary(summary, steps=2)
    assert "XLA Ops: 0.1 ms per step" in table and "| gemm | 0.03 | 60.0 | 1 |" in table
    with pytest.raises(ValueError, match="TPU"):
        summarize_trace(trace, process="/device:TPU:0")
    with pytest.raises(FileNotFoundError):
        find_trace(tmp_path / "nothing")
