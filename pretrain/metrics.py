"""Throughput, MFU and the metric sinks of a run (JSONL file, TensorBoard event file)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

from pretrain.tensorboard import SummaryWriter

__all__ = ["PEAK_TFLOPS", "device_peak_tflops", "mfu", "MetricsLog"]

# Dense bf16 peak TFLOP/s per device, without sparsity (vendor data sheets).
PEAK_TFLOPS = {
    "H100": 989.0,
    "H200": 989.0,
    "H800": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L4": 121.0,
}


def device_peak_tflops(device=None) -> float | None:
    """The device's peak dense bf16 TFLOP/s, or None when unknown (e.g. a CPU)."""
    kind = (device or jax.devices()[0]).device_kind
    for name, peak in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if name.lower() in kind.lower():
            return peak
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float | None, n_devices: int):
    """Model FLOPs utilisation as a fraction, or None without a known peak."""
    if not peak_tflops:
        return None
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12 * n_devices)


class MetricsLog:
    """Writes records to `run_dir/metrics.jsonl` and scalars to `run_dir/tensorboard/`.

    Each record is a flat dict with `step` and `kind` ('train' or 'eval'); numeric fields other
    than those become TensorBoard scalars `<kind>/<name>`. Only process 0 writes.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = SummaryWriter(Path(run_dir) / "tensorboard") if enabled else None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {
            f"{record['kind']}/{k}": v
            for k, v in record.items()
            if k not in ("step", "kind") and isinstance(v, int | float) and math.isfinite(v)
        }
        self._tb.scalars(record["step"], scalars)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
