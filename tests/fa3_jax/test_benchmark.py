"""The benchmark harness runs end to end (CPU, tiny grid) and writes its records."""

from __future__ import annotations

import json

from fa3_jax import benchmark

KEYS = {
    "impl",
    "mode",
    "dtype",
    "batch",
    "seq_q",
    "seq_k",
    "heads_q",
    "heads_kv",
    "head_dim",
    "causal",
    "mask",
    "device",
    "date",
    "jax_version",
    "command",
}


def test_benchmark_writes_records(tmp_path):
    records = benchmark.main(
        [
            "--tokens",
            "256",
            "--hidden",
            "64",
            "--seqlens",
            "128",
            "--head-dims",
            "32",
            "--dtype",
            "bf16",
            "--mode",
            "fwd,bwd",
            "--causal",
            "yes",
            "--masks",
            "none,window,segments,alibi,block_sparse:0.5",
            "--impls",
            "fa3_jax,xla,torch_fa2",
            "--iters",
            "1",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
            "--tag",
            "smoke",
        ]
    )
    assert len(records) == 2 * 5 * 2 + 2  # torch only for mask none
    for rec in records:
        assert KEYS <= rec.keys()
        assert ("ms" in rec and "tflops" in rec) != ("error" in rec)
    ours = [r for r in records if r["impl"] == "fa3_jax"]
    assert all("ms" in r for r in ours)
    assert all(r["ms"] > 0 for r in ours)  # the backward is timed alone, not subtracted
    xla_alibi = [r for r in records if r["impl"] == "xla" and r["mask"] == "alibi"]
    assert xla_alibi and all("materialized" in r["error"] for r in xla_alibi)
    saved = json.loads(next(tmp_path.glob("*-smoke.json")).read_text())
    assert saved == records
    table = next(tmp_path.glob("*-smoke.md")).read_text()
    assert "| bwd | bf16 | 32 | yes | block_sparse:0.5 | 128 |" in table


def test_masked_flops_count_visible_pairs():
    p = benchmark.Problem("fwd", "bf16", 1, 256, 2, 32, True, "segments")
    _, dense = benchmark.mask_inputs(p)
    # 8 documents of 32 tokens, causal inside each: 8 * 32 * 33 / 2 visible pairs.
    assert benchmark.flops(p, dense) == 4.0 * 2 * 32 * (8 * 32 * 33 // 2)
    assert benchmark.flops(benchmark.Problem("bwd", "bf16", 2, 256, 2, 32, False), None) == (
        2.5 * 4.0 * 2 * 2 * 32 * 256 * 256
    )
