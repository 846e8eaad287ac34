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


def test_records_carry_each_kernels_time(monkeypatch, tmp_path):
    """With CUPTI the records name the kernels one call launches and give each one's median
    over the rounds (here a stand-in timer: the CPU has no CUPTI)."""
    times = iter([1.0, 3.0, 2.0])

    def timed(fn, args, cli):
        ms = next(times)
        return ms, [("delta", 0.5), ("attention", ms - 0.5)]

    monkeypatch.setattr(benchmark, "_timed", timed)
    records = benchmark.main(["--tokens", "128", "--hidden", "64", "--seqlens", "128",
                              "--head-dims", "32", "--dtype", "bf16", "--mode", "fwd",
                              "--causal", "no", "--impls", "fa3_jax", "--rounds", "3",
                              "--out", str(tmp_path)])
    [rec] = records
    assert rec["ms"] == 2.0 and rec["ms_rounds"] == [1.0, 3.0, 2.0]
    assert rec["kernels"] == ["delta", "attention"] and rec["kernel_ms"] == [0.5, 1.5]


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
    and not timed again; the result is the median over rounds, each kernel's too."""
    calls = []

    def timer(name, values):
        it = iter(values)

        def time_one():
            calls.append(name)
            ms = next(it)
            return ms, [(f"{name}_prep", 0.25), (f"{name}_kernel", ms - 0.25)]

        return time_one

    def broken():
        calls.append("broken")
        raise RuntimeError("cannot run")

    out = benchmark.time_rounds(
        {"a": timer("a", [3.0, 1.0, 2.0]), "broken": broken, "b": timer("b", [5.0, 9.0, 4.0])},
        rounds=3,
    )
    assert calls == ["a", "broken", "b", "a", "b", "a", "b"]
    assert out["a"] == (2.0, [3.0, 1.0, 2.0], [("a_prep", 0.25), ("a_kernel", 1.75)])
    assert out["b"] == (5.0, [5.0, 9.0, 4.0], [("b_prep", 0.25), ("b_kernel", 4.75)])
    assert out["broken"] == "RuntimeError: cannot run"


@pytest.mark.parametrize("launches,expected", [
    # every call launches the same two kernels: each one's median
    ([[("prep", 0.1), ("attn", 2.0)], [("prep", 0.3), ("attn", 1.0)],
      [("prep", 0.2), ("attn", 3.0)]], (2.1, [("prep", 0.2), ("attn", 2.0)])),
    # a call that launched something else: the names of the first call, no times
    ([[("prep", 0.1), ("attn", 2.0)], [("attn", 1.0)], [("prep", 0.2), ("attn", 3.0)]],
     (2.1, [("prep", None), ("attn", None)])),
])
def test_gpu_time_reports_each_kernel(monkeypatch, launches, expected):
    """CUPTI's per-call kernel lists give the median summed time and each kernel's median."""
    from jax.experimental.mosaic.gpu import profiler

    seen = {}

    def measure(fn, *, aggregate, iterations):
        seen.update(aggregate=aggregate, iterations=iterations)
        return lambda *args: (fn(*args), launches)

    monkeypatch.setattr(profiler, "measure", measure)
    total, kernels = benchmark.gpu_time(lambda x: x, (1,), calls=3)
    assert seen == {"aggregate": False, "iterations": 3}
    assert total == pytest.approx(expected[0])
    assert [n for n, _ in kernels] == [n for n, _ in expected[1]]
    for (_, ms), (_, want) in zip(kernels, expected[1], strict=True):
        assert ms == (None if want is None else pytest.approx(want))


def test_kernel_medians_need_the_same_kernels_every_round():
    rounds = [[("prep", 0.1), ("attn", 2.0)], [("prep", 0.3), ("attn", 1.0)]]
    assert benchmark._kernel_medians(rounds) == [("prep", 0.2), ("attn", 1.5)]
    assert benchmark._kernel_medians([[("attn", 1.0)], *rounds]) == [("attn", None)]
    assert benchmark._kernel_medians([[("attn", None)], [("attn", 1.0)]]) == [("attn", None)]
    assert benchmark._kernel_medians([None, None]) is None


#: Stands in for the torch child: answers the n-th request for an impl with n ms, an error
#: for impl "bad", exits for "die" (after a line on stderr) and never answers "hang".
_FAKE_WORKER = r"""
import collections, json, sys, time
answers, sys.stdout = sys.stdout, sys.stderr
setup = json.loads(sys.stdin.readline())
seen = collections.Counter()
for line in sys.stdin:
    req = json.loads(line)
    impl = req["impl"]
    seen[impl] += 1
    if impl == "die":
        print("worker: fatal problem", file=sys.stderr, flush=True)
        sys.exit(7)
    if impl == "hang":
        time.sleep(60)
    if impl == "count":
        answer = {"ms": 0.0, "seen": dict(seen), "setup": setup}
    elif impl == "bad":
        answer = {"error": "ValueError: no kernel for " + str(req["problem"]["seq"])}
    else:
        print("noise on stdout goes to stderr")
        answer = {"ms": float(seen[impl])}
    print(json.dumps(answer), file=answers, flush=True)
"""


def test_torch_worker_compiles():
    """The real child script (run on a GPU machine with torch) is at least valid Python."""
    compile(benchmark._bench_torch._WORKER, "torch worker", "exec")


def _fake_peers(monkeypatch, timeout_s=30.0):
    monkeypatch.setattr(benchmark._bench_torch, "_WORKER", _FAKE_WORKER)
    return benchmark._bench_torch.TorchPeers(iters=2, repeats=1, timer="wall",
                                             timeout_s=timeout_s)


def test_torch_peers_take_their_turn_in_each_round(monkeypatch):
    """torch's backends are timed one round per request in a child that stays up, inside the
    same interleaved rounds as the JAX implementations; a backend that fails is asked once."""
    problem = benchmark.Problem("fwd", "bf16", 2, 128, 4, 32, True)
    peers = _fake_peers(monkeypatch)
    try:
        calls = []

        def jax_impl():
            calls.append("jax")
            return 1.5, [("kernel", 1.5)]

        def logged(name, timer):
            def one_round():
                calls.append(name)
                return timer()
            return one_round

        out = benchmark.time_rounds(
            {"fa3_jax": jax_impl,
             "torch_cudnn": logged("torch_cudnn", peers.timer("torch_cudnn", problem)),
             "bad": logged("bad", peers.timer("bad", problem))},
            rounds=3,
        )
        assert calls == ["jax", "torch_cudnn", "bad", "jax", "torch_cudnn", "jax", "torch_cudnn"]
        assert out["torch_cudnn"] == (2.0, [1.0, 2.0, 3.0], None)
        assert out["bad"] == "RuntimeError: ValueError: no kernel for 128"
        count = peers._child.ask({"impl": "count", "problem": {}})
        assert count["seen"] == {"torch_cudnn": 3, "bad": 1, "count": 1}
        assert count["setup"] == {"iters": 2, "repeats": 1, "timer": "wall"}
    finally:
        peers.close()


@pytest.mark.parametrize("impl,timeout_s,error,message,later", [
    ("die", 30.0, RuntimeError, "exited with 7: worker: fatal problem", "exited with 7"),
    ("hang", 0.5, TimeoutError, "no answer within 0.5 s", "exited"),
])
def test_torch_child_that_exits_or_hangs_is_reported(monkeypatch, impl, timeout_s, error, message,
                                                      later):
    """A child that exits reports its stderr; one that hangs is stopped; later rounds fail fast."""
    problem = benchmark.Problem("bwd", "fp16", 2, 128, 4, 32, False)
    peers = _fake_peers(monkeypatch, timeout_s=timeout_s)
    try:
        with pytest.raises(error, match=message):
            peers.timer(impl, problem)()
        with pytest.raises(RuntimeError, match=later):
            peers.timer("torch_fa2", problem)()
    finally:
        peers.close()


def test_torch_records_come_from_the_child_in_each_round(monkeypatch, tmp_path):
    """Through ``main``: on a GPU the torch backends' records carry a time per round from the
    child; masked problems have no torch records (SDPA takes no such masks), FP8 ones an error."""
    monkeypatch.setattr(benchmark, "_torch_peers", lambda args, device: _fake_peers(monkeypatch))
    records = benchmark.main(["--tokens", "256", "--hidden", "64", "--seqlens", "128",
                              "--head-dims", "32", "--dtype", "bf16,fp8", "--mode", "fwd",
                              "--causal", "no", "--masks", "none,window",
                              "--impls", "fa3_jax,torch_cudnn,torch_fa2", "--iters", "1",
                              "--repeats", "1", "--rounds", "3", "--out", str(tmp_path),
                              "--tag", "torch"])
    torch = [r for r in records if r["impl"].startswith("torch") and r["dtype"] == "bf16"]
    assert [(r["impl"], r["mask"], r["ms_rounds"]) for r in torch] == [
        ("torch_cudnn", "none", [1.0, 2.0, 3.0]), ("torch_fa2", "none", [1.0, 2.0, 3.0])]
    assert all(r["ms"] == 2.0 for r in torch)
    fp8 = [r for r in records if r["impl"].startswith("torch") and r["dtype"] == "fp8"]
    assert [r["error"] for r in fp8] == ["torch SDPA is not timed on float8 inputs here"] * 2
    assert "| fwd | bf16 | 32 | no | none | 128 |" in next(tmp_path.glob("*-torch.md")).read_text()
