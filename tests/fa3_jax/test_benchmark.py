"""The benchmark harness runs end to end (CPU, tiny grid) and writes its records."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

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
            "--rounds",
            "2",
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
    assert all(len(r["ms_rounds"]) == 2 and r["ms"] == np.median(r["ms_rounds"]) for r in ours)
    xla_alibi = [r for r in records if r["impl"] == "xla" and r["mask"] == "alibi"]
    assert xla_alibi and all("materialized" in r["error"] for r in xla_alibi)
    saved = json.loads(next(tmp_path.glob("*-smoke.json")).read_text())
    assert saved == records
    table = next(tmp_path.glob("*-smoke.md")).read_text()
    assert "median over 2 interleaved rounds" in table and all(r["rounds"] == 2 for r in records)
    assert "| bwd | bf16 | 32 | yes | block_sparse:0.5 | 128 |" in table
    # masked rows against ours unmasked: pairs for both modes, tiles for the forward
    assert "| fwd | bf16 | 32 | yes | window | 128 |" in table.split("time / ideal (tiles)")[1]
    assert all("visible_pairs" in r for r in ours)
    assert all("visited_tiles" in r for r in ours if r["mode"] == "fwd" and r["mask"] != "alibi")


def test_masked_flops_count_visible_pairs():
    p = benchmark.Problem("fwd", "bf16", 1, 256, 2, 32, True, "segments")
    _, dense = benchmark.mask_inputs(p)
    # 8 documents of 32 tokens, causal inside each: 8 * 32 * 33 / 2 visible pairs.
    assert benchmark.flops(p, dense) == 4.0 * 2 * 32 * (8 * 32 * 33 // 2)
    assert benchmark.flops(benchmark.Problem("bwd", "bf16", 2, 256, 2, 32, False), None) == (
        2.5 * 4.0 * 2 * 2 * 32 * 256 * 256
    )


def test_visited_tiles_follow_the_forward_tiles():
    """Causal 256 x 256 in 128 x 128 tiles (head dim 64's causal tiles) visits 3 of 4 tiles
    per (batch, head); 8 documents of 32 tokens keep only the 2 diagonal tiles."""
    p = benchmark.Problem("fwd", "bf16", 2, 256, 3, 64, True)
    assert benchmark.visited_tiles(p, {}) == 2 * 3 * 3
    docs = dataclasses.replace(p, mask="segments")
    assert benchmark.visited_tiles(docs, benchmark.mask_inputs(docs)[0]) == 2 * 3 * 2
    dense = dataclasses.replace(p, causal=False)
    assert benchmark.visited_tiles(dense, {}) == 2 * 3 * 4


def _rec(mask, ms, pairs, tiles=None, mode="fwd"):
    rec = dict(impl="fa3_jax", mode=mode, dtype="bf16", head_dim=128, causal=True, seq_q=1024,
               mask=mask, ms=ms, visible_pairs=pairs)
    if tiles is not None:
        rec["visited_tiles"] = tiles
    return rec


def test_mask_overheads_against_the_unmasked_run():
    records = [
        _rec("none", 2.0, 1000.0, 40),
        _rec("window", 0.6, 200.0, 10),  # ideal 0.4 by pairs, 0.5 by tiles
        _rec("segments", 1.0, 500.0, 25, mode="bwd"),  # no unmasked bwd run: no row
        _rec("alibi", 2.1, 1000.0, 40),
        dict(_rec("block_sparse:0.5", 1.0, 500.0, 20), impl="cudnn"),
    ]
    (row,) = benchmark.mask_overheads(records)
    assert row["mask"] == "window"
    assert row["visible_pairs_share"] == 0.2
    assert row["visible_pairs_vs_ideal"] == pytest.approx(1.5)
    assert row["visited_tiles_share"] == 0.25
    assert row["visited_tiles_vs_ideal"] == pytest.approx(1.2)
    table = benchmark.markdown(records, dict(device="cpu", date="d", jax_version="v",
                                             timer="wall", rounds=3, command="c"))
    assert "| fwd | bf16 | 128 | yes | window | 1024 | 0.200 | 1.50 | 0.250 | 1.20 |" in table


def test_rounds_interleave_the_implementations_and_report_medians():
    """Each round times every implementation once, in turn; a failing one is reported once
    and not timed again; the result is the median over rounds."""
    calls = []

    def timer(name, values):
        it = iter(values)

        def time_one():
            calls.append(name)
            return next(it), [f"{name}_kernel"]

        return time_one

    def broken():
        calls.append("broken")
        raise RuntimeError("cannot run")

    out = benchmark.time_rounds(
        {"a": timer("a", [3.0, 1.0, 2.0]), "broken": broken, "b": timer("b", [5.0, 9.0, 4.0])},
        rounds=3,
    )
    assert calls == ["a", "broken", "b", "a", "b", "a", "b"]
    assert out["a"] == (2.0, [3.0, 1.0, 2.0], ["a_kernel"])
    assert out["b"] == (5.0, [5.0, 9.0, 4.0], ["b_kernel"])
    assert out["broken"] == "RuntimeError: cannot run"
