"""`python -m pretrain.benchmark`: training throughput and MFU of a preset, per attention backend.

Runs full training steps (forward, backward, AdamW update) on synthetic batches for every
(device count, parallelism, documents, remat policy, attention implementation) variant in one
process and writes one JSON record each: preset, attention, devices, seq_len, global_batch,
tokens_per_s, mfu (fraction of --peak_tflops per device; FLOPs from ModelConfig.flops_per_token,
causal attention included, rematerialisation not), step_ms, device, date, jax_version, command
(plus parallelism, documents, remat, microbatches, params, final_loss; `error` instead of the
timings when a variant fails, e.g. cuDNN rejecting the materialised ALiBi + document bias:
then compare with `--documents single`, where that bias is [1, heads, seq, seq]). With a 1-device
variant of the same documents/remat/attention in the run, multi-device records get
scaling_efficiency = tokens_per_s / (devices × its tokens_per_s). The JSON and markdown files are
rewritten after every variant, so a run cut short keeps the variants it finished.

  python -m pretrain.benchmark                                   # 1.3b, ctx 2048, auto/cudnn/xla
  python -m pretrain.benchmark --devices 1,2 --parallelism fsdp,data   # scaling over 2 GPUs
  python -m pretrain.benchmark --preset tiny --steps 3 --seq_len 64 --batch_per_device 2   # CPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from pretrain.config import ATTENTION_CHOICES, REMAT_CHOICES, make_config
from pretrain.optim import make_optimizer, make_schedule
from pretrain.sharding import batch_sharding, make_mesh
from pretrain.step import make_train_step
from pretrain.trace_summary import find_trace, format_summary, summarize_trace
from pretrain.train import build_state
from pretrain.xla_flags import apply_gpu_flags

__all__ = ["run_benchmark", "synthetic_batch"]

PROFILED_STEPS = 3  # steps traced by --profile, after the timed ones


def synthetic_batch(
    key, batch: int, seq_len: int, vocab: int, documents: str = "packed", mean_doc_len: int = 512
) -> dict:
    """Random tokens; `packed`: documents of random length (attention masks them) with
    segment_ids; `single`: one document per row and no segment_ids (causal + ALiBi only)."""
    k_tok, k_doc, k_src = jax.random.split(key, 3)
    tokens = jax.random.randint(k_tok, (batch, seq_len + 1), 0, vocab, jnp.int32)
    out = {
        "tokens": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "source_ids": jax.random.randint(k_src, (batch, seq_len), 0, 7, jnp.int32),
    }
    if documents == "packed":
        starts = jax.random.bernoulli(k_doc, 1.0 / mean_doc_len, (batch, seq_len))
        out["segment_ids"] = jnp.cumsum(starts.at[:, 0].set(True), axis=1, dtype=jnp.int32)
    return out


def _measure(
    cfg,
    n_devices: int,
    parallelism: str,
    documents: str,
    steps: int,
    warmup: int,
    profile_dir: str | None = None,
):
    data_axis = n_devices if parallelism == "data" else 1
    mesh = make_mesh(data_axis, n_devices // data_axis, devices=jax.devices()[:n_devices])
    built = build_state(cfg, mesh)
    state_sh = jax.tree.map(lambda a: a.sharding, built.abstract_state)
    step_fn = jax.jit(
        make_train_step(
            built.graphdef,
            make_optimizer(cfg.train),
            make_schedule(cfg.train),
            microbatches=cfg.train.microbatches,
            activation_sharding=batch_sharding(mesh, ndim=3),
            microbatch_sharding=batch_sharding(mesh, ndim=3, batch_axis=1),
        ),
        in_shardings=(state_sh, batch_sharding(mesh)),
        donate_argnums=0,
    )
    batch = jax.device_put(
        synthetic_batch(
            jax.random.key(0), cfg.train.global_batch, cfg.seq_len, cfg.model.vocab_size, documents
        ),
        batch_sharding(mesh),
    )
    state = built.init()
    for _ in range(warmup):
        state, metrics = step_fn(state, batch)
    float(metrics["loss"])
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, batch)
    loss = float(metrics["loss"])  # waits for the last step
    seconds = (time.perf_counter() - start) / steps
    if profile_dir:
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            for _ in range(PROFILED_STEPS):
                state, metrics = step_fn(state, batch)
            float(metrics["loss"])
    del state
    return {"step_ms": 1000 * seconds, "loss": loss}


def run_benchmark(args, out: Path) -> list[dict]:
    """Measures every variant of `args` (see `main`); writes the records so far to `out` (JSON,
    and markdown next to it) after each one."""
    records = []
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    device = jax.devices()[0].device_kind
    variants = [
        (n, p, d, r, a)
        for n in args.devices
        for p in (args.parallelism if n > 1 else args.parallelism[:1])
        for d in args.documents
        for r in args.remat
        for a in args.attention
    ]
    for n_devices, parallelism, documents, remat, attention in variants:
        global_batch = args.batch_per_device * n_devices * args.microbatches
        overrides = {
            "attention": attention,
            "global_batch": global_batch,
            "microbatches": args.microbatches,
            "steps": 1000,
            "warmup_steps": 10,
            "dtype": "bfloat16",
            "progress": False,
        }
        if remat:
            overrides["remat"] = remat
        if args.seq_len:
            overrides["seq_len"] = args.seq_len
        cfg = make_config(args.preset, overrides)
        record = {
            "preset": args.preset,
            "attention": attention,
            "devices": n_devices,
            "parallelism": parallelism,
            "documents": documents,
            "seq_len": cfg.seq_len,
            "global_batch": global_batch,
            "microbatches": args.microbatches,
            "remat": cfg.model.remat,
            "params": cfg.model.num_params(),
            "device": device,
            "date": date,
            "jax_version": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "command": args.command,
        }
        profile_dir = None
        if args.profile:
            profile_dir = f"{args.profile}/{attention}-{remat or 'preset'}-{n_devices}dev"
        try:
            timing = _measure(
                cfg, n_devices, parallelism, documents, args.steps, args.warmup, profile_dir
            )
        except Exception as e:  # noqa: BLE001 - a failing variant is recorded, the rest still run
            record["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        else:
            tokens_per_s = global_batch * cfg.seq_len / (timing["step_ms"] / 1000)
            flops = cfg.model.flops_per_token(cfg.seq_len)
            record.update(
                step_ms=timing["step_ms"],
                tokens_per_s=tokens_per_s,
                final_loss=timing["loss"],
                mfu=tokens_per_s * flops / (args.peak_tflops * 1e12 * n_devices),
            )
        records.append(record)
        _add_scaling(records)
        print(json.dumps(record), flush=True)
        _write(out, records)
        if profile_dir and "error" not in record:
            process = "/host:CPU" if jax.devices()[0].platform == "cpu" else "/device:GPU:0"
            summary = summarize_trace(find_trace(profile_dir), process)
            print(format_summary(summary, PROFILED_STEPS), flush=True)
    return records


def _add_scaling(records: list[dict]) -> None:
    """Sets scaling_efficiency on the multi-device records that have a 1-device baseline."""
    key = ("attention", "remat", "documents")
    base = {
        tuple(r[k] for k in key): r["tokens_per_s"]
        for r in records
        if r["devices"] == 1 and "error" not in r
    }
    for r in records:
        one = base.get(tuple(r[k] for k in key))
        if one and "error" not in r:
            r["scaling_efficiency"] = r["tokens_per_s"] / (r["devices"] * one)


def _table(records: list[dict]) -> str:
    lines = [
        "| preset | attention | remat | devices | parallelism | documents | seq | batch | tokens/s "
        "| MFU | step ms | scaling |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        head = (
            f"| {r['preset']} | {r['attention']} | {r['remat']} | {r['devices']} | "
            f"{r['parallelism']} | {r['documents']} | {r['seq_len']} | {r['global_batch']} |"
        )
        if "error" in r:
            lines.append(f"{head} error: {r['error'][:60]} | | | |")
        else:
            scaling = f"{100 * r['scaling_efficiency']:.1f}%" if "scaling_efficiency" in r else ""
            lines.append(
                f"{head} {r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f}% | {r['step_ms']:.1f} "
                f"| {scaling} |"
            )
    return "\n".join(lines)


def _write(out: Path, records: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    out.with_suffix(".md").write_text(_table(records) + "\n")


def main(argv: list[str] | None = None) -> int:
    apply_gpu_flags()  # before JAX starts a backend
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", default="1.3b")
    parser.add_argument(
        "--attention",
        default="auto,cudnn,xla",
        help=f"comma-separated subset of {ATTENTION_CHOICES}",
    )
    parser.add_argument(
        "--devices", default=None, help="comma-separated device counts (default: all devices)"
    )
    parser.add_argument("--seq_len", type=int, default=0, help="0 = the preset's context")
    parser.add_argument("--batch_per_device", type=int, default=8, help="sequences per device")
    parser.add_argument("--microbatches", type=int, default=1)
    parser.add_argument(
        "--remat",
        default="",
        help=f"comma-separated subset of {REMAT_CHOICES} (default: the preset's)",
    )
    parser.add_argument(
        "--parallelism",
        default="fsdp",
        help="comma-separated subset of fsdp (params sharded over devices), data (replicated)",
    )
    parser.add_argument(
        "--documents",
        default="packed",
        help="comma-separated subset of packed (several documents per row, masked by segment "
        "ids), single (one document per row: causal + ALiBi only)",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument(
        "--profile",
        default=None,
        help="directory: trace a few more steps of every variant with jax.profiler and print "
        "where the device time goes (per-op totals)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (incl. compile)")
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=989.0,
        help="per-device peak for MFU (H100 SXM dense bf16: 989)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="JSON output (default benchmarks/results/pretrain_<preset>_<date>.json)",
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command = "python -m pretrain.benchmark " + shlex.join(argv)
    args.attention = args.attention.split(",")
    bad = [a for a in args.attention if a not in ATTENTION_CHOICES]
    if bad:
        parser.error(f"--attention: unknown {bad}; choose from {ATTENTION_CHOICES}")
    args.remat = args.remat.split(",")
    bad = [r for r in args.remat if r and r not in REMAT_CHOICES]
    if bad:
        parser.error(f"--remat: unknown {bad}; choose from {REMAT_CHOICES}")
    args.parallelism = args.parallelism.split(",")
    bad = [p for p in args.parallelism if p not in ("fsdp", "data")]
    if bad:
        parser.error(f"--parallelism: unknown {bad}; choose from fsdp, data")
    args.documents = args.documents.split(",")
    bad = [d for d in args.documents if d not in ("packed", "single")]
    if bad:
        parser.error(f"--documents: unknown {bad}; choose from packed, single")
    args.devices = (
        [int(n) for n in args.devices.split(",")] if args.devices else [len(jax.devices())]
    )
    if any(n < 1 or n > len(jax.devices()) for n in args.devices):
        parser.error(f"--devices must be within 1..{len(jax.devices())}")
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"benchmarks/results/pretrain_{args.preset}_{stamp}.json")
    records = run_benchmark(args, out)
    print(_table(records))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0 if any("error" not in r for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
