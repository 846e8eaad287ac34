"""XLA flags the training script and its benchmark set on GPUs, unless the user set them.

XLA reads `XLA_FLAGS` once, when the first backend starts, so `apply_gpu_flags()` must run before
anything asks JAX for devices. A flag already present in `XLA_FLAGS` (with any value) is left as
the user wrote it, so `XLA_FLAGS=--xla_gpu_enable_triton_gemm=true` measures the default.

- `xla_gpu_enable_triton_gemm=false`: matmuls go to cuBLAS. A profile of the 1.3b step (see
  `python -m pretrain.benchmark --profile`) showed XLA's Triton GEMM fusions (matmul with a fused
  dtype conversion) as the largest item, well under cuBLAS's rate for the same shapes; MaxText's
  GPU configurations turn them off for the same reason.
- `xla_gpu_enable_latency_hiding_scheduler=true`: schedules the data-parallel / FSDP collectives
  so that they overlap the backward pass.
"""

from __future__ import annotations

import os

__all__ = ["GPU_FLAGS", "apply_gpu_flags"]

GPU_FLAGS = (
    "--xla_gpu_enable_triton_gemm=false",
    "--xla_gpu_enable_latency_hiding_scheduler=true",
)


def apply_gpu_flags(environ: dict | None = None) -> str:
    """Appends every flag of GPU_FLAGS whose name is not in XLA_FLAGS yet; returns the result."""
    env = os.environ if environ is None else environ
    current = env.get("XLA_FLAGS", "")
    present = {part.split("=", 1)[0] for part in current.split()}
    added = [flag for flag in GPU_FLAGS if flag.split("=", 1)[0] not in present]
    env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return env["XLA_FLAGS"]
