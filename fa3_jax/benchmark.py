"""Times fa3_jax.attention and its peers in one run: ``python -m fa3_jax.benchmark``.

The grid is FlashAttention-3's: ``batch * seq = --tokens`` (16384) and ``heads *
head_dim = --hidden`` (2048). FLOPs are counted as in ``shared/ANCHORS.md``:
``4 * batch * seq_q * seq_k * heads * head_dim`` for the forward (halved when
causal; for masked runs the exact number of visible query-key pairs is used),
and 2.5x that for the backward, which is timed alone: the forward runs once and
its saved residuals feed every timed backward call.
Timing (``--timer``), reported per call:
  ``cupti`` (the default on a GPU): GPU time, the sum of the durations of the
  kernels one call launches, median over ``--repeats * --iters`` back-to-back
  calls; CUPTI for JAX (``jax.experimental.mosaic.gpu.profiler.measure``) and
  the torch profiler (Kineto, also CUPTI) for torch. Every peer is timed the
  same way, and host dispatch cost (which differs between JAX and torch and
  showed in calls of tens of us: benchmarks/NOTES.md, "Session 5") is left out.
  ``wall``: the median over ``--repeats`` of ``--iters`` back-to-back calls,
  wall clock for JAX and CUDA events for torch.

Peers: cuDNN and XLA through ``jax.nn.dot_product_attention``, JAX's own Mosaic
GPU FA3 (``attention_mgpu``; fp16, pre-scaled q, no masks, no causal backward)
and torch SDPA with its cuDNN and FlashAttention-2 backends (in a child process
that times one round per request, so torch's backends take their turn in the
same interleaved rounds as the JAX implementations: ``fa3_jax._bench_torch``).
A peer that cannot run a configuration gets a record with ``error`` instead of
``ms``. Results: a JSON list of records and a
markdown table in ``--out``.

Masked runs (window, segments, block_sparse) are also set against the unmasked
run of the same table: ours takes ``time / ideal`` of the time the unmasked run
would take for the masked share of the work, the share counted in visible
query-key pairs, and for the forward also in the tiles its kernel visits (the
heuristic config's q and kv tiles).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import fa3_jax
from fa3_jax import _bench_torch, _platform
from fa3_jax._mosaic import default_forward_config
from fa3_jax.masks import MaskSpec, tile_visibility

PEERS = ("fa3_jax", "cudnn", "jax_mgpu", "xla", "torch_cudnn", "torch_fa2")
# fp8: float8_e4m3fn inputs, forward only, fa3_jax only (the peers take no FP8 here)
DTYPES = {"fp16": jnp.float16, "bf16": jnp.bfloat16, "fp8": jnp.float8_e4m3fn}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One benchmark configuration (self-attention, heads_q == heads_kv)."""

    mode: str  # "fwd" or "bwd"
    dtype: str  # "fp16" or "bf16"
    batch: int
    seq: int
    heads: int
    head_dim: int
    causal: bool
    mask: str = "none"  # none | window | segments | alibi | block_sparse:<density>

    def shape(self):
        return (self.batch, self.seq, self.heads, self.head_dim)


# ---------------------------------------------------------------- masks & FLOPs
WINDOW_LEFT = 1024
DOCUMENTS = 8
SPARSE_BLOCK = 128


def mask_inputs(problem: Problem, seed: int = 0):
    """fa3_jax keyword arguments and a dense bool mask ``[B or 1, 1, S, S]`` (or None)."""
    s = problem.seq
    if problem.mask == "none":
        return {}, None
    if problem.mask == "window":
        i, j = np.arange(s)[:, None], np.arange(s)[None, :]
        dense = (j >= i - WINDOW_LEFT) & (j <= (i if problem.causal else i + WINDOW_LEFT))
        right = 0 if problem.causal else WINDOW_LEFT
        return {"window_size": (WINDOW_LEFT, right)}, dense[None, None]
    if problem.mask == "segments":
        seg = np.repeat(np.arange(DOCUMENTS, dtype=np.int32), -(-s // DOCUMENTS))[:s]
        seg = np.broadcast_to(seg, (problem.batch, s))
        dense = seg[:, None, :, None] == seg[:, None, None, :]
        if problem.causal:
            dense = dense & np.tril(np.ones((s, s), bool))
        return {"segment_ids": jnp.asarray(seg)}, dense
    if problem.mask == "alibi":
        # The ALiBi paper's slopes, 2^(-8 h / H) for h = 1..H; every key stays visible.
        heads = np.arange(1, problem.heads + 1)
        return {
            "alibi_slopes": jnp.asarray(2.0 ** (-8.0 * heads / problem.heads), jnp.float32)
        }, None
    if problem.mask.startswith("block_sparse:"):
        density = float(problem.mask.split(":")[1])
        n = -(-s // SPARSE_BLOCK)
        blocks = np.random.default_rng(seed).random((1, n, n)) < density
        dense = np.repeat(np.repeat(blocks, SPARSE_BLOCK, 1), SPARSE_BLOCK, 2)[:, :s, :s]
        if problem.causal:
            dense = dense & np.tril(np.ones((s, s), bool))
        bm = fa3_jax.BlockMask(jnp.asarray(blocks), SPARSE_BLOCK, SPARSE_BLOCK)
        return {"block_mask": bm}, dense[None]
    raise ValueError(f"unknown mask {problem.mask!r}")


def visible_pairs(problem: Problem, dense_mask) -> float:
    """Query-key pairs per head the FLOPs count: all of them (half when causal) without
    a mask, else the exact number the mask shows, over the batch."""
    b, s, _, _ = problem.shape()
    if dense_mask is None:
        return b * s * s / (2 if problem.causal else 1)
    return float(np.broadcast_to(dense_mask, (b, 1, s, s)).sum(dtype=np.int64))


def flops(problem: Problem, dense_mask) -> float:
    """Forward or backward FLOPs (see the module docstring)."""
    _, _, h, d = problem.shape()
    fwd = 4.0 * h * d * visible_pairs(problem, dense_mask)
    return fwd * (2.5 if problem.mode == "bwd" else 1.0)


def visited_tiles(problem: Problem, kwargs: dict) -> int:
    """Tiles fa3_jax's Mosaic forward visits for ``problem`` with the mask ``kwargs`` (from
    :func:`mask_inputs`): the q and kv tiles of the config it runs, over batch and heads."""
    b, s, h, d = problem.shape()
    spec = MaskSpec(s, s, problem.causal, *kwargs.get("window_size", (None, None)))
    block_mask = kwargs.get("block_mask")
    config = default_forward_config(
        d,
        DTYPES[problem.dtype],
        spec,
        has_segments="segment_ids" in kwargs,
        block_k=None if block_mask is None else block_mask.block_k,
    )
    visible, _ = tile_visibility(
        spec,
        config.tile_q,
        config.block_kv,
        segment_ids=kwargs.get("segment_ids"),
        block_mask=block_mask,
    )
    per_BH = np.asarray(visible).sum(axis=(-2, -1), dtype=np.int64)
    return int(np.broadcast_to(per_BH, (b, h)).sum())


def mask_overheads(records: list[dict]) -> list[dict]:
    """Ours on each masked problem against ours unmasked in the same records: the masked
    share of the work (visible pairs, and forward tiles where recorded) and the time over
    the ideal (the unmasked time times that share)."""
    key = ("mode", "dtype", "head_dim", "causal", "seq_q")
    ours = [r for r in records if r["impl"] == "fa3_jax" and "ms" in r]
    unmasked = {tuple(r[k] for k in key): r for r in ours if r["mask"] == "none"}
    rows = []
    for rec in ours:
        base = unmasked.get(tuple(rec[k] for k in key))
        if rec["mask"] in ("none", "alibi") or base is None:
            continue
        row = {k: rec[k] for k in (*key, "mask")}
        for unit in ("visible_pairs", "visited_tiles"):
            if unit in rec and unit in base:
                share = rec[unit] / base[unit]
                row[f"{unit}_share"] = share
                if share > 0:  # a mask that hides everything has no ideal time
                    row[f"{unit}_vs_ideal"] = rec["ms"] / (base["ms"] * share)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- JAX implementations
def _fa3(problem, kwargs, implementation):
    def fn(q, k, v):
        return fa3_jax.attention(
            q, k, v, causal=problem.causal, implementation=implementation, **kwargs
        )

    return fn


def _cudnn(problem, kwargs, dense, implementation="cudnn"):
    if "alibi_slopes" in kwargs:
        raise ValueError(
            "skipped: jax.nn.dot_product_attention takes ALiBi only as a materialized "
            "[H, S, S] bias (see pretrain.benchmark for that baseline)"
        )
    if implementation == "xla" and problem.seq > 4096:
        raise ValueError("skipped: XLA materializes the S x S logits (too slow/large past 4096)")
    mask = None if dense is None or problem.mask == "window" else jnp.asarray(dense)
    window = (
        (WINDOW_LEFT, 0 if problem.causal else WINDOW_LEFT) if problem.mask == "window" else None
    )
    if implementation == "cudnn" and problem.mask == "window" and not problem.causal:
        raise ValueError("cuDNN through JAX takes left-only (causal) windows")

    def fn(q, k, v):
        return jax.nn.dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            is_causal=problem.causal,
            local_window_size=window,
            implementation=implementation,
        )

    return fn


def _jax_mgpu(problem, kwargs, dense):
    from jax.experimental.pallas.ops.gpu import attention_mgpu as mgpu

    if problem.mask != "none":
        raise ValueError("attention_mgpu has no masks or ALiBi")
    if problem.dtype != "fp16":
        raise ValueError("attention_mgpu runs fp16 only")
    if problem.mode == "bwd" and problem.causal:
        raise ValueError("attention_mgpu has no causal backward")
    block_kv = 64 if problem.head_dim == 256 else 128
    # Backward tiles as in JAX's own attention_mgpu tests (64 x 64 for both walks).
    config = mgpu.TuningConfig(
        block_q=64,
        block_kv=block_kv,
        max_concurrent_steps=2,
        causal=problem.causal,
        block_q_dkv=64,
        block_kv_dkv=64,
        block_q_dq=64,
        block_kv_dq=64,
    )
    scale = 1.0 / math.sqrt(problem.head_dim)

    def fn(q, k, v):
        return mgpu.attention((q * scale).astype(q.dtype), k, v, config)

    return fn


def build(impl: str, problem: Problem, masks, fa3_implementation):
    kwargs, dense = masks
    if impl == "fa3_jax":
        return _fa3(problem, kwargs, fa3_implementation)
    if impl == "cudnn":
        return _cudnn(problem, kwargs, dense)
    if impl == "xla":
        return _cudnn(problem, kwargs, dense, implementation="xla")
    if impl == "jax_mgpu":
        return _jax_mgpu(problem, kwargs, dense)
    raise ValueError(f"unknown impl {impl!r}")


def time_calls(fn, args, *, iters: int, repeats: int) -> float:
    """Wall clock: median milliseconds per call over ``repeats`` runs of ``iters`` calls."""
    jax.block_until_ready(fn(*args))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            out = fn(*args)
        jax.block_until_ready(out)
        runs.append((time.perf_counter() - start) * 1e3 / iters)
    return statistics.median(runs)


def gpu_time(fn, args, *, calls: int) -> tuple[float, list[tuple[str, float | None]]]:
    """CUPTI: median over ``calls`` of the summed kernel milliseconds of one call, and the
    kernels one call launches with their medians over the calls (:func:`_kernel_medians`)."""
    from jax.experimental.mosaic.gpu import profiler

    _, per_call = profiler.measure(fn, aggregate=False, iterations=calls)(*args)
    if per_call is None:
        raise RuntimeError("CUPTI saw no kernel launches")
    total = statistics.median(sum(ms for _, ms in c) for c in per_call)
    return total, _kernel_medians(per_call)


def _kernel_medians(runs: list) -> list[tuple[str, float | None]] | None:
    """``[(name, median ms)]`` in the first run's launch order over ``runs`` (each a list of
    ``(name, ms)``: the calls of :func:`gpu_time`, or the rounds of :func:`time_rounds`); the
    milliseconds None where a run did not time a kernel or the runs launched different
    kernels; None when the first run has no kernels (a timer without CUPTI)."""
    if not runs or runs[0] is None:
        return None
    names = [n for n, _ in runs[0]]
    if any(r is None or [n for n, _ in r] != names for r in runs):
        return [(n, None) for n in names]
    per_kernel = []
    for i, name in enumerate(names):
        times = [r[i][1] for r in runs]
        per_kernel.append((name, None if None in times else statistics.median(times)))
    return per_kernel


def _timed(fn, args, cli) -> tuple[float, list[tuple[str, float | None]] | None]:
    if cli.timer == "cupti":
        return gpu_time(fn, args, calls=cli.iters * cli.repeats)
    return time_calls(fn, args, iters=cli.iters, repeats=cli.repeats), None


def jax_timer(impl, problem, masks, args):
    """A function that times one round of ``impl`` on ``problem``: milliseconds per call of
    the forward, or of the backward alone, and, with CUPTI, the kernels one timed call
    launches with their times (:func:`gpu_time`). Built once (inputs, jit), called once per
    round.

    The backward is timed on its own: the forward runs once (``jax.vjp`` under
    ``jit``), and the jitted pullback is timed on the saved residuals, as
    FlashAttention's ``benchmark_backward`` does with ``retain_graph``.
    """
    fn = build(impl, problem, masks, args.fa3_implementation)
    rng = np.random.default_rng(0)
    dt = DTYPES[problem.dtype]
    q, k, v = (jnp.asarray(rng.standard_normal(problem.shape()), dt) for _ in range(3))
    if problem.mode == "fwd":
        timed, timed_args = jax.jit(fn), (q, k, v)
    else:
        do = jnp.asarray(rng.standard_normal(problem.shape()), dt)
        _, pullback = jax.jit(lambda q, k, v: jax.vjp(fn, q, k, v))(q, k, v)
        timed, timed_args = jax.jit(lambda pullback, do: pullback(do)), (pullback, do)
    return lambda: _timed(timed, timed_args, args)


def time_rounds(timers: dict, rounds: int) -> dict:
    """``{impl: (median ms over rounds, [ms per round], kernels) or error string}``;
    ``kernels``: ``[(name, median ms over rounds)]`` in launch order (CUPTI), else None.

    Each round times every impl once, in turn: this card's speed drifts between two
    states ~10% apart from one 60-call measurement to the next (benchmarks/NOTES.md,
    "Session 17"), for every implementation alike, so a ratio of two single measurements
    carries that swing; medians over interleaved rounds do not.
    """
    samples = {impl: [] for impl in timers}
    kernels, errors = {}, {}
    for _ in range(rounds):
        for impl, timer in timers.items():
            if impl in errors:
                continue
            try:
                ms, kernels_of_round = timer()
            except Exception as e:  # a peer that cannot run this configuration
                errors[impl] = f"{type(e).__name__}: {e}"[:300]
                continue
            samples[impl].append(ms)
            kernels.setdefault(impl, []).append(kernels_of_round)
    return {
        impl: errors[impl]
        if impl in errors
        else (statistics.median(samples[impl]), samples[impl], _kernel_medians(kernels[impl]))
        for impl in timers
    }


# ---------------------------------------------------------------- driver
def problems_from(args) -> list[Problem]:
    out = []
    for mode, dtype, d, s, causal, mask in itertools.product(
        args.mode, args.dtype, args.head_dims, args.seqlens, args.causal, args.masks
    ):
        if args.tokens % s or args.hidden % d or (mode, dtype) == ("bwd", "fp8"):
            continue  # FP8 is forward-only
        out.append(Problem(mode, dtype, args.tokens // s, s, args.hidden // d, d, causal, mask))
    return out


def record(problem: Problem, impl: str, result, problem_flops: float, meta: dict) -> dict:
    rec = dict(
        impl=impl,
        mode=problem.mode,
        dtype=problem.dtype,
        batch=problem.batch,
        seq_q=problem.seq,
        seq_k=problem.seq,
        heads_q=problem.heads,
        heads_kv=problem.heads,
        head_dim=problem.head_dim,
        causal=problem.causal,
        mask=problem.mask,
        **meta,
    )
    if isinstance(result, str):
        rec["error"] = result
    else:
        rec["ms"] = result
        rec["tflops"] = problem_flops / (result * 1e-3) / 1e12
    return rec


def _fmt(tflops: float) -> str:
    return f"{tflops:.0f}" if tflops >= 10 else f"{tflops:.2g}"


def _overhead_table(rows: list[dict]) -> list[str]:
    def cell(row, unit):
        share, vs_ideal = row.get(f"{unit}_share"), row.get(f"{unit}_vs_ideal")
        return " | ".join(
            [
                "-" if share is None else f"{share:.3f}",
                "-" if vs_ideal is None else f"{vs_ideal:.2f}",
            ]
        )

    lines = [
        "",
        "Masked runs against ours unmasked in this table: the masked share of the work and "
        "time / ideal (the unmasked time times that share), the share counted in visible "
        "query-key pairs and, for the forward, in the tiles our kernel visits.",
        "",
        "| mode | dtype | D | causal | mask | S | pairs share | time / ideal (pairs) "
        "| tiles share | time / ideal (tiles) |",
        "|" + "---|" * 10,
    ]
    for r in sorted(rows, key=lambda r: (r["mode"], r["head_dim"], r["seq_q"], r["mask"])):
        lines.append(
            f"| {r['mode']} | {r['dtype']} | {r['head_dim']} | {'yes' if r['causal'] else 'no'} "
            f"| {r['mask']} | {r['seq_q']} | {cell(r, 'visible_pairs')} "
            f"| {cell(r, 'visited_tiles')} |"
        )
    return lines


def markdown(records: list[dict], meta: dict) -> str:
    impls = [i for i in PEERS if any(r["impl"] == i for r in records)]
    keys = sorted(
        {
            (r["mode"], r["dtype"], r["head_dim"], r["causal"], r["mask"], r["seq_q"])
            for r in records
        }
    )
    lines = [
        f"# Attention benchmark ({meta['device']}, {meta['date']})",
        "",
        f"jax {meta['jax_version']}; timer: {meta['timer']}; command: `{meta['command']}`. "
        f"TFLOP/s (median over {meta['rounds']} interleaved rounds); "
        "`x` = failed or not applicable (see the JSON's `error`). `vs best` = ours / best peer.",
        "",
        "| mode | dtype | D | causal | mask | S | " + " | ".join(impls) + " | vs best |",
        "|" + "---|" * (7 + len(impls)),
    ]
    for key in keys:
        rows = {
            r["impl"]: r
            for r in records
            if (r["mode"], r["dtype"], r["head_dim"], r["causal"], r["mask"], r["seq_q"]) == key
        }
        cells = [_fmt(rows[i]["tflops"]) if "tflops" in rows.get(i, {}) else "x" for i in impls]
        peers = [rows[i]["tflops"] for i in impls if i != "fa3_jax" and "tflops" in rows.get(i, {})]
        ours = rows.get("fa3_jax", {}).get("tflops")
        ratio = f"{ours / max(peers):.2f}" if ours and peers else "-"
        mode, dtype, d, causal, mask, s = key
        lines.append(
            f"| {mode} | {dtype} | {d} | {'yes' if causal else 'no'} | {mask} | {s} | "
            + " | ".join(cells)
            + f" | {ratio} |"
        )
    overheads = mask_overheads(records)
    if overheads:
        lines += _overhead_table(overheads)
    return "\n".join(lines) + "\n"


def _csv(kind):
    return lambda text: [kind(x) for x in text.split(",") if x]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m fa3_jax.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mode", type=_csv(str), default=["fwd", "bwd"], help="fwd,bwd")
    p.add_argument("--dtype", type=_csv(str), default=["fp16", "bf16"], help="fp16,bf16,fp8")
    p.add_argument("--head-dims", type=_csv(int), default=[64, 128, 256])
    p.add_argument("--seqlens", type=_csv(int), default=[512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument(
        "--causal",
        type=_csv(lambda x: x in ("1", "yes", "true")),
        default=[False, True],
        help="no,yes",
    )
    p.add_argument(
        "--masks",
        type=_csv(str),
        default=["none"],
        help="none,window,segments,alibi,block_sparse:0.2,...",
    )
    p.add_argument("--impls", type=_csv(str), default=list(PEERS), help=",".join(PEERS))
    p.add_argument(
        "--fa3-implementation",
        default=None,
        help="force fa3_jax's implementation (mosaic|reference); default: its choice",
    )
    p.add_argument("--tokens", type=int, default=16384, help="batch * seq")
    p.add_argument("--hidden", type=int, default=2048, help="heads * head_dim")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="times each configuration is timed, the implementations in turn; the median "
        "over rounds is reported",
    )
    p.add_argument(
        "--timer",
        choices=("cupti", "wall"),
        default=None,
        help="cupti: summed GPU kernel time per call (default on a GPU); wall: wall clock "
        "(JAX) / CUDA events (torch) over back-to-back calls (default elsewhere)",
    )
    p.add_argument(
        "--torch-timeout",
        type=int,
        default=300,
        help="seconds one round of a torch backend may take (the torch child is stopped after)",
    )
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
    p.add_argument("--tag", default="attention")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    for name, allowed in (("mode", ("fwd", "bwd")), ("dtype", tuple(DTYPES)), ("impls", PEERS)):
        bad = [x for x in getattr(args, name) if x not in allowed]
        if bad:
            p.error(f"--{name.replace('_', '-')}: unknown {bad}; choose from {allowed}")
    return args


def _torch_peers(args, device) -> _bench_torch.TorchPeers | None:
    """The torch child when torch peers are asked for and ``device`` is a GPU, else None."""
    if not any(i.startswith("torch") for i in args.impls) or device.platform != "gpu":
        return None
    return _bench_torch.TorchPeers(
        iters=args.iters, repeats=args.repeats, timer=args.timer, timeout_s=args.torch_timeout
    )


def _run_problem(problem: Problem, args, fa3_impl: str, meta: dict, torch_peers) -> list[dict]:
    """The records of every implementation in ``args.impls`` on ``problem``, timed in
    interleaved rounds (torch's backends through ``torch_peers``, None without a GPU)."""
    masks = mask_inputs(problem)
    problem_flops = flops(problem, masks[1])
    work = {"visible_pairs": visible_pairs(problem, masks[1])}
    if problem.mode == "fwd" and problem.mask != "alibi":
        work["visited_tiles"] = visited_tiles(problem, masks[0])
    timers, results = {}, {}
    for impl in args.impls:
        if impl.startswith("torch"):
            if problem.mask != "none":
                continue
            if problem.dtype == "fp8":
                results[impl] = "torch SDPA is not timed on float8 inputs here"
            elif torch_peers is None:
                results[impl] = "torch needs a CUDA GPU"
            else:
                timers[impl] = torch_peers.timer(impl, problem)
            continue
        try:
            timers[impl] = jax_timer(impl, problem, masks, args)
        except Exception as e:  # a peer that cannot run this configuration
            results[impl] = f"{type(e).__name__}: {e}"[:300]
    results.update(time_rounds(timers, args.rounds))
    records = []
    for impl in [i for i in args.impls if i in results]:
        result, extra = results[impl], {}
        if impl == "fa3_jax":
            extra = {"implementation": fa3_impl, **work}
        if not isinstance(result, str):
            result, extra["ms_rounds"], kernels = result
            if kernels:
                extra["kernels"] = [name for name, _ in kernels]
                extra["kernel_ms"] = [ms for _, ms in kernels]
        rec = record(problem, impl, result, problem_flops, {**meta, **extra})
        records.append(rec)
        shown = f"{rec['tflops']:7.1f} TFLOP/s" if "tflops" in rec else rec["error"][:80]
        print(
            f"{problem.mode} {problem.dtype} D{problem.head_dim} S{problem.seq} "
            f"causal={problem.causal} {problem.mask:<18} {impl:<12} {shown}",
            flush=True,
        )
    return records


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = jax.devices()[0]
    now = datetime.datetime.now(datetime.UTC)
    if args.timer is None:
        args.timer = "cupti" if device.platform == "gpu" else "wall"
    fa3_impl = args.fa3_implementation or (
        "mosaic" if _platform.mosaic_available() else "reference"
    )
    meta = dict(
        device=device.device_kind,
        date=now.strftime("%Y-%m-%d"),
        jax_version=jax.__version__,
        timer=args.timer,
        rounds=args.rounds,
        command="python -m fa3_jax.benchmark " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    print(
        f"# {meta['device']} | jax {jax.__version__} | fa3_jax implementation: {fa3_impl}",
        flush=True,
    )
    problems = problems_from(args)
    torch_peers = _torch_peers(args, device)
    records = []
    try:
        for problem in problems:
            records += _run_problem(problem, args, fa3_impl, meta, torch_peers)
    finally:
        if torch_peers is not None:
            torch_peers.close()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{now.strftime('%Y%m%d-%H%M')}-{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
    table = markdown(records, meta)
    stem.with_suffix(".md").write_text(table)
    print(table)
    return records


if __name__ == "__main__":
    main()
