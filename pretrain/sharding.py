"""Device mesh (data-parallel × FSDP axes) and named sharding rules for every parameter.

Each parameter path matches one rule giving a logical name to each of its axes; `LOGICAL_TO_MESH`
maps logical names to mesh axes. FSDP shards every matrix along its `embed` (d_model) axis;
vectors (norms, biases) are replicated. Batches are split over both mesh axes.
"""

from __future__ import annotations

import re

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "BATCH_AXES",
    "LOGICAL_TO_MESH",
    "PARAM_RULES",
    "make_mesh",
    "logical_axes",
    "param_shardings",
    "batch_sharding",
    "replicated",
]

BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both axes

# (regex on the '/'-joined parameter path, logical axis names of that parameter)
PARAM_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"embed/embedding", ("vocab", "embed")),
    (r"blocks/\d+/attn/qkv/kernel", ("embed", "qkv")),
    (r"blocks/\d+/attn/qkv/bias", ("qkv",)),
    (r"blocks/\d+/attn/out/kernel", ("heads", "embed")),
    (r"blocks/\d+/mlp/gate_up/kernel", ("embed", "mlp")),
    (r"blocks/\d+/mlp/gate_up/bias", ("mlp",)),
    (r"blocks/\d+/mlp/down/kernel", ("mlp", "embed")),
    (r"blocks/\d+/(attn/out|mlp/down)/bias", ("norm",)),
    (r"(blocks/\d+/ln_attn|blocks/\d+/ln_mlp|ln_final)/(scale|bias)", ("norm",)),
)

LOGICAL_TO_MESH: dict[str, str | None] = {
    "embed": "fsdp",
    "vocab": None,
    "qkv": None,
    "heads": None,
    "mlp": None,
    "norm": None,
}


def make_mesh(data: int = 1, fsdp: int = 0, devices=None) -> Mesh:
    """A ('data', 'fsdp') mesh over `devices` (default: all); fsdp=0 takes what data leaves."""
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or len(devices) % data:
        raise ValueError(
            f"mesh_data ({data}) must be >= 1 and divide the device count ({len(devices)})"
        )
    fsdp = fsdp or len(devices) // data
    if data * fsdp != len(devices):
        raise ValueError(
            f"mesh_data × mesh_fsdp ({data} × {fsdp}) must equal the device count ({len(devices)})"
        )
    # jax.make_mesh orders devices by the physical topology (NVLink/ICI neighbours share an axis)
    return jax.make_mesh(
        (data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices
    )


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def logical_axes(path: str, ndim: int) -> tuple[str, ...]:
    """Logical axis names of the parameter at `path` ('/'-joined); unknown paths are errors."""
    for pattern, axes in PARAM_RULES:
        if re.fullmatch(pattern, path):
            if len(axes) != ndim:
                raise ValueError(
                    f"sharding rule {pattern!r} has {len(axes)} axes; {path} has {ndim}"
                )
            return axes
    raise ValueError(f"no sharding rule matches parameter {path!r}; add one to PARAM_RULES")


def param_shardings(params, mesh: Mesh):
    """NamedSharding for every leaf of `params` (arrays or ShapeDtypeStructs), same tree."""

    def one(path, leaf):
        names = logical_axes(_path_str(path), len(leaf.shape))
        spec = []
        for name, size in zip(names, leaf.shape, strict=True):
            axis = LOGICAL_TO_MESH[name]
            if axis is not None and size % mesh.shape[axis]:
                raise ValueError(
                    f"parameter {_path_str(path)} axis '{name}' ({size}) is not divisible by mesh "
                    f"axis '{axis}' ({mesh.shape[axis]})"
                )
            spec.append(axis)
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree_util.tree_map_with_path(one, params)


def batch_sharding(mesh: Mesh, ndim: int = 2, batch_axis: int = 0) -> NamedSharding:
    """Sharding of an array whose `batch_axis` is split over ('data', 'fsdp')."""
    spec = [None] * ndim
    spec[batch_axis] = BATCH_AXES
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
