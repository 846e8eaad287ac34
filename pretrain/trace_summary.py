"""Where the time of a profiled step goes: per-op totals from a `jax.profiler` Perfetto trace.

`jax.profiler.trace(log_dir, create_perfetto_trace=True)` writes
`log_dir/plugins/profile/<run>/perfetto_trace.json.gz` (Chrome trace events). For the process
named after the device (`/device:GPU:0`, or `/host:CPU` on a CPU), `summarize_trace` adds up the
duration of every complete event per (thread, name). On the H200 with jax 0.11.2 the GPU process
holds one thread per CUDA stream, whose events are the kernels (cuBLAS GEMMs, XLA fusions, the
attention kernels as `anonymous_mosaic_gpu_kernel`).
"""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path

__all__ = ["find_trace", "summarize_trace", "format_summary"]


def find_trace(log_dir: str | Path) -> Path:
    """The newest `perfetto_trace.json.gz` under `log_dir`."""
    traces = sorted(Path(log_dir).glob("plugins/profile/*/perfetto_trace.json.gz"))
    if not traces:
        raise FileNotFoundError(f"no plugins/profile/*/perfetto_trace.json.gz under {log_dir}")
    return traces[-1]


def summarize_trace(trace: str | Path, process: str = "/device:GPU:0") -> dict[str, list]:
    """{thread name: [(op name, total µs, count), …] sorted by total, largest first} for the
    process whose name starts with `process`."""
    with gzip.open(trace, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    pids = {
        e["pid"]
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "process_name"
        and e["args"]["name"].startswith(process)
    }
    if not pids:
        raise ValueError(f"no process named {process!r}* in {trace}")
    threads = {
        (e["pid"], e.get("tid")): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name" and e["pid"] in pids
    }
    totals: dict[str, dict[str, list]] = collections.defaultdict(
        lambda: collections.defaultdict(lambda: [0.0, 0])
    )
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in pids:
            thread = threads.get((e["pid"], e.get("tid")), str(e.get("tid")))
            slot = totals[thread][e["name"]]
            slot[0] += float(e.get("dur", 0.0))
            slot[1] += 1
    return {
        thread: sorted(((n, t, c) for n, (t, c) in ops.items()), key=lambda r: -r[1])
        for thread, ops in totals.items()
    }


def format_summary(summary: dict[str, list], steps: int, top: int = 25) -> str:
    """A markdown table per thread: the `top` ops by time, in ms per step and % of the thread."""
    out = []
    for thread, rows in sorted(summary.items(), key=lambda kv: -sum(r[1] for r in kv[1])):
        total = sum(r[1] for r in rows)
        out.append(f"\n### {thread}: {total / 1e3 / steps:.1f} ms per step\n")
        out.append("| op | ms/step | % | calls/step |\n|---|---|---|---|")
        for name, t, c in rows[:top]:
            out.append(
                f"| {name[:90]} | {t / 1e3 / steps:.2f} | {100 * t / total:.1f} | {c / steps:g} |"
            )
    return "\n".join(out)
