"""Which hardware paths are available: Hopper GPUs or Mosaic GPU interpret mode."""

from __future__ import annotations

import jax

__all__ = ["mosaic_available", "interpret_mode_active", "device_description"]


def interpret_mode_active() -> bool:
    """True inside ``plgpu.force_gpu_interpret_mode()`` (or after ``set_gpu_interpret_mode``)."""
    from jax._src import config
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return isinstance(
        config.pallas_tpu_interpret_mode_context_manager.value, plgpu.InterpretGPUParams
    )


def _is_hopper(device) -> bool:
    capability = getattr(device, "compute_capability", None)
    return device.platform == "gpu" and capability is not None and str(capability).startswith("9.")


def mosaic_available() -> bool:
    """The Mosaic GPU kernels can run: default device is sm_90, or interpret mode is on."""
    return interpret_mode_active() or _is_hopper(jax.devices()[0])


def device_description() -> str:
    device = jax.devices()[0]
    capability = getattr(device, "compute_capability", None)
    suffix = f" (compute capability {capability})" if capability else ""
    return f"{device.device_kind} on platform {device.platform!r}{suffix}"
