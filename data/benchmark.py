"""``python -m data.benchmark``: pipeline and prepare tokens/s, dedup docs/s vs datasketch.

Generates a demo corpus (``--train-docs`` documents), prepares it with 1 and ``--workers``
processes, times the Grain pipeline from the prepared shards (bar: >= 500k tokens/s per host, 10x
what the 1.3B model consumes on one H100) with 0 and ``--workers`` prefetch processes, and runs our
dedup with 1 and ``--workers`` processes and datasketch's MinHash-LSH on the same documents (plus
precision/recall against exact Jaccard). Writes ``<out>.json`` (a list of records with ``stage``,
``impl``, ``tokens_per_s`` or ``docs_per_s``, ``workers``, ``device``, ``date``, ``command``) and
``<out>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

PIPELINE_BAR_TOKENS_PER_S = 500_000


def _device() -> str:
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model} x {os.cpu_count()} cores"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("grain", "array-record", "tokenizers", "numpy", "datasketch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _pipeline_rate(
    prepared: Path, workers: int, seconds: float, seq_len: int, batch_size: int
) -> float:
    from data.pipeline import make_pipeline

    it = make_pipeline(prepared, "SlimPajama", seq_len, batch_size, seed=0, worker_count=workers)
    for _ in range(3):  # warm up (and start the workers)
        next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += next(it)["tokens"].size
    rate = n / (time.perf_counter() - t0)
    it.close()
    return rate


def run(
    out: Path, train_docs: int, workers: int, seconds: float, seq_len: int, batch_size: int
) -> list[dict]:
    from data.dedup import dedup
    from data.dedup_compare import compare_datasketch
    from data.prepare import prepare
    from data.synthetic import generate

    common = {
        "device": _device(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m data.benchmark " + " ".join(sys.argv[1:]),
        "load_avg_1min_at_start": os.getloadavg()[0],
        "versions": _versions(),
    }
    records = []
    tmp = Path(tempfile.mkdtemp(prefix="data_bench_"))
    try:
        corpus = generate(
            tmp / "corpus", seed=0, train_docs=train_docs, train_chunks=4, files_per_chunk=2
        )
        # Train the tokenizer once, so that prepare timings cover tokenizing and writing only.
        tok_dir = tmp / "tok"
        prepare(corpus, tok_dir, vocab_size=8192, splits=("validation",), workers=1, progress=False)
        for w in sorted({1, workers}):
            m, stats = prepare(
                corpus,
                tmp / f"prep{w}",
                tokenizer=tok_dir / "tokenizer.json",
                splits=("train",),
                workers=w,
                progress=False,
            )
            records.append(
                common
                | {
                    "stage": "prepare",
                    "impl": "ours (HF tokenizers BPE, vocab 8192)",
                    "tokens_per_s": stats.tokens_per_s,
                    "workers": w,
                    "tokens": stats.tokens,
                    "seconds": stats.seconds,
                }
            )
        for w in sorted({1, workers}):
            r = dedup(corpus, tmp / f"dedup{w}", mode="global", workers=w)
            records.append(
                common
                | {
                    "stage": "dedup",
                    "impl": "ours (end to end: read, MinHash, LSH, write)",
                    "docs_per_s": r.docs_per_s,
                    "workers": w,
                    "docs": r.docs,
                    "seconds": r.seconds_total,
                }
            )
        cmp = compare_datasketch(corpus, max_docs=min(train_docs, 4000))
        for name in ("ours", "datasketch"):
            records.append(
                common
                | {
                    "stage": "dedup",
                    "impl": f"{name} (MinHash + LSH only, same documents)",
                    "docs_per_s": cmp[name]["docs_per_s"],
                    "workers": 1,
                    "docs": cmp["docs"],
                    "pairs": cmp[name]["pairs"],
                    "precision": cmp[name]["precision"],
                    "recall": cmp[name]["recall"],
                    "threshold": cmp["threshold"],
                    "true_pairs_in_sample": cmp["true_pairs_in_sample"],
                }
            )
        # Last: Grain imports JAX, after which worker pools must spawn instead of fork.
        for w in sorted({0, workers}):
            rate = _pipeline_rate(tmp / "prep1", w, seconds, seq_len, batch_size)
            records.append(
                common
                | {
                    "stage": "pipeline",
                    "impl": "ours (grain)",
                    "tokens_per_s": rate,
                    "workers": w,
                    "seq_len": seq_len,
                    "batch_size": batch_size,
                    "mixture": "SlimPajama",
                    "bar_tokens_per_s": PIPELINE_BAR_TOKENS_PER_S,
                    "bar_met": rate >= PIPELINE_BAR_TOKENS_PER_S,
                }
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(records, indent=1))
    out.with_suffix(".md").write_text(markdown(records))
    return records


def markdown(records: list[dict]) -> str:
    r0 = records[0]
    lines = [
        "# data benchmark",
        "",
        f"{r0['device']}, {r0['date']}, `{r0['command']}` (1-min load average at start: "
        f"{r0['load_avg_1min_at_start']:.2f}; the machine is shared, so numbers are noisy).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r0.get("versions", {}).items()),
        "",
        "| stage | impl | workers | rate | notes |",
        "|---|---|---:|---:|---|",
    ]
    for r in records:
        rate = (
            f"{r['tokens_per_s']:,.0f} tokens/s"
            if "tokens_per_s" in r
            else f"{r['docs_per_s']:,.0f} docs/s"
        )
        if r["stage"] == "pipeline":
            note = (
                f"seq_len {r['seq_len']}, batch {r['batch_size']}; bar {r['bar_tokens_per_s']:,} "
                f"{'met' if r['bar_met'] else 'NOT met'}"
            )
        elif "precision" in r:
            note = (
                f"{r['docs']} docs, {r['pairs']} pairs, precision {r['precision']:.3f}, recall "
                f"{r['recall']:.3f} (Jaccard >= {r['threshold']}, "
                f"{r['true_pairs_in_sample']} true pairs)"
            )
        else:
            unit = "tokens" if "tokens" in r else "docs"
            note = f"{r[unit]} {unit} in {r['seconds']:.1f}s"
        lines.append(f"| {r['stage']} | {r['impl']} | {r['workers']} | {rate} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data.benchmark",
        description="Benchmark the data stages on this machine (pipeline and prepare tokens/s, "
        "dedup docs/s against datasketch) and write JSON + markdown results.",
    )
    parser.add_argument(
        "--out",
        default="benchmarks/results/data_benchmark",
        help="output path without suffix (default %(default)s)",
    )
    parser.add_argument(
        "--train-docs", type=int, default=8000, help="demo corpus size (default %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes for the parallel runs"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="pipeline timing window per run"
    )
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    records = run(
        Path(args.out), args.train_docs, args.workers, args.seconds, args.seq_len, args.batch_size
    )
    print(markdown(records))


if __name__ == "__main__":
    main()
