"""Tuning configuration of the Mosaic GPU attention backward kernels."""

from __future__ import annotations

import dataclasses

__all__ = ["BackwardConfig", "default_backward_config"]

# Shared memory a Hopper CTA may use (227 KB opt-in limit).
SMEM_LIMIT_BYTES = 227 * 1024


@dataclasses.dataclass(frozen=True)
class BackwardConfig:
    """Static tiling of the dK/dV and dQ kernels.

    Attributes:
      block_q_dkv: q rows per step of the dK/dV kernel's walk over q tiles.
      block_kv_dkv: kv rows owned by each consumer warpgroup of the dK/dV kernel
        (a CTA owns ``compute_wgs * block_kv_dkv`` rows).
      block_q_dq: q rows owned by each consumer warpgroup of the dQ kernel.
      block_kv_dq: kv rows per step of the dQ kernel's walk over kv tiles.
      stages: depth of the TMA ring the producer warpgroup fills.
      compute_wgs: consumer warpgroups per CTA (1 or 2).
      register_operands: feed P/dS to wgmma from registers (fast path on the
        GPU); False stages them through SMEM, which interpret mode requires.
      defer_release: release a ring slot one step late, after the next step's
        score wgmmas (which wait for the earlier ones) instead of waiting for the
        dV/dK (dQ) wgmmas right away, so the tensor cores run them back to back.
    """

    block_q_dkv: int = 64
    block_kv_dkv: int = 64
    block_q_dq: int = 64
    block_kv_dq: int = 64
    stages: int = 2
    compute_wgs: int = 2
    register_operands: bool = False
    defer_release: bool = True

    def __post_init__(self):
        for name in ("block_q_dkv", "block_kv_dkv", "block_q_dq", "block_kv_dq"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0 or value % 64:
                raise ValueError(
                    f"BackwardConfig.{name} must be a positive multiple of 64, got {value!r}"
                )
        if not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"BackwardConfig.stages must be an int >= 1, got {self.stages!r}")
        if self.compute_wgs not in (1, 2):
            raise ValueError(f"BackwardConfig.compute_wgs must be 1 or 2, got {self.compute_wgs!r}")

    @property
    def tile_kv_dkv(self) -> int:
        """kv rows per CTA of the dK/dV kernel (the transposed metadata's tile_k)."""
        return self.compute_wgs * self.block_kv_dkv

    @property
    def tile_q_dq(self) -> int:
        """q rows per CTA of the dQ kernel (the forward metadata's tile_q)."""
        return self.compute_wgs * self.block_q_dq

    def smem_bytes(self, head_dim: int, itemsize: int) -> dict[str, int]:
        """Shared memory each kernel needs (bytes), before Mosaic's own scratch."""
        d, s, w = head_dim, self.stages, self.compute_wgs
        dkdv = (
            2 * w * self.block_kv_dkv * d * itemsize  # K, V of the owned tile
            + 2 * s * self.block_q_dkv * d * itemsize  # Q, dO ring
            + 3 * s * self.block_q_dkv * 4  # lse, delta, q segment ids ring
            + 2 * w * self.block_kv_dkv * self.block_q_dkv * itemsize  # P^T, dS^T
        )
        dq = (
            2 * w * self.block_q_dq * d * itemsize  # Q, dO of the owned tile
            + 2 * s * self.block_kv_dq * d * itemsize  # K, V ring
            + s * self.block_kv_dq * 4  # kv segment ids ring
            + w * self.block_q_dq * self.block_kv_dq * itemsize  # dS
        )
        return {"dkdv": dkdv, "dq": dq}


def default_backward_config(head_dim: int, block_mask=None, *,
                            interpret: bool = False) -> BackwardConfig:
    """Heuristic choice: two consumer warpgroups per CTA (128-row tiles).

    A block mask with 64-row/64-column blocks gets one consumer warpgroup per CTA,
    so both walks use 64-aligned tiles and stay exact at tile level. On the GPU
    P/dS feed wgmma from registers; interpret mode stages them through SMEM.
    """
    del head_dim
    small_blocks = block_mask is not None and (block_mask.block_q % 128 or block_mask.block_k % 128)
    wgs = 1 if small_blocks else 2
    return BackwardConfig(compute_wgs=wgs, register_operands=not interpret)
