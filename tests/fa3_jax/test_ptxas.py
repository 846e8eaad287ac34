"""On a Hopper GPU: ptxas keeps every wgmma of the kernels the library picks asynchronous.

ptxas serializes all wgmma instructions of a kernel (its info C7513, "wgmma.mma_async
instructions are serialized due to non wgmma instructions defining input registers ...") when
some instruction writes a register an in-flight wgmma still reads. LLVM, which sees an inline-asm
wgmma read its register operands (P V's P) at issue, may give the next tile's P those registers:
one such variant of the forward ran 13-22% slower with nothing else to show for it
(benchmarks/NOTES.md, "Session 19"). The default configs compile clean today; this test keeps it
so, through ``fa3_jax.attention``, its gradient (the forward, the dK/dV and dQ kernels or the
fused one) and its inference forward (no LSE) over the heuristic's main branches.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
import fa3_jax

CASES = [
    # (name, batch, seq, heads, heads_kv, head_dim, dtype, attention keywords)
    ("dense-d64-1k", 4, 1024, 8, 8, 64, "float16", {}),
    ("dense-d64-8k", 1, 8192, 8, 8, 64, "float16", {}),
    ("causal-d64-512", 4, 512, 8, 8, 64, "float16", {"causal": True}),
    ("causal-d64-2k", 2, 2048, 8, 8, 64, "float16", {"causal": True}),
    ("causal-d64-4k", 1, 4096, 8, 8, 64, "bfloat16", {"causal": True}),
    ("dense-d128-16k", 1, 16384, 4, 4, 128, "bfloat16", {}),
    ("causal-d128-1k", 4, 1024, 8, 8, 128, "float16", {"causal": True}),
    ("causal-d128-4k-gqa", 1, 4096, 8, 2, 128, "bfloat16", {"causal": True}),
    ("window-d128-4k", 1, 4096, 8, 8, 128, "bfloat16",
     {"causal": True, "window_size": (1024, 0)}),
    ("documents-d128-4k", 1, 4096, 8, 8, 128, "bfloat16", {"causal": True, "segments": True}),
    ("alibi-documents-d128-2k", 2, 2048, 8, 8, 128, "bfloat16",
     {"causal": True, "segments": True, "alibi": True}),
    ("block-sparse-d128-4k", 1, 4096, 8, 8, 128, "bfloat16", {"block_sparse": True}),
    ("causal-d256-2k", 1, 2048, 4, 4, 256, "float16", {"causal": True}),
]

for name, b, s, h, h_kv, d, dtype, kw in CASES:
    kw = dict(kw)
    q = jax.ShapeDtypeStruct((b, s, h, d), jnp.dtype(dtype))
    kv = jax.ShapeDtypeStruct((b, s, h_kv, d), jnp.dtype(dtype))
    ids = jax.ShapeDtypeStruct((b, s), jnp.int32)
    segments = kw.pop("segments", False)
    if kw.pop("alibi", False):
        kw["alibi_slopes"] = jnp.linspace(0.02, 0.3, h, dtype=jnp.float32)
    if kw.pop("block_sparse", False):
        keep = np.random.default_rng(0).random((h, s // 128, s // 128)) < 0.5
        kw["block_mask"] = fa3_jax.BlockMask(jnp.asarray(keep), 128, 128)

    def loss(q, k, v, ids, kw=kw, segments=segments):
        out = fa3_jax.attention(q, k, v, segment_ids=ids if segments else None,
                                implementation="mosaic", **kw)
        return jnp.sum(out.astype(jnp.float32))

    print(f"== {name}", flush=True)
    jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, ids).compile()
    jax.jit(loss).lower(q, kv, kv, ids).compile()  # inference: the forward without its LSE
print("== done", flush=True)
"""


@pytest.mark.gpu
def test_no_kernel_serializes_its_wgmma():
    env = dict(os.environ, MOSAIC_GPU_DUMP_PTXAS="1")
    run = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:]
    sections = re.split(r"^== ", run.stdout, flags=re.MULTILINE)[1:]
    assert sections and sections[-1].startswith("done"), run.stdout[-3000:]
    # the dump is on (else the check below could not fail): every case compiled some kernel
    compiled = {s.split("\n", 1)[0]: s for s in sections[:-1]}
    assert all("ptxas info" in text for text in compiled.values()), run.stdout[-3000:]
    serialized = [name for name, text in compiled.items() if "C7513" in text]
    assert not serialized, f"ptxas serialized the wgmma of: {serialized}"
