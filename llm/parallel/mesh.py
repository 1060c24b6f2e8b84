"""The device mesh: named axes `data`, `fsdp`, `context` and `tensor`, sized by the experiment's `mesh` section.

    data    pure data parallelism: parameters replicated, batch split;
    fsdp    fully-sharded data parallelism: batch split, and parameters / optimizer state split on `embed`;
    context context parallelism: every sequence split along its length (llm/parallel/context/attention.py);
    tensor  tensor (model) parallelism: heads, MLP hidden units and vocabulary split (Megatron style).

One size may be -1: it takes the devices the others leave.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from llm.errors import ConfigError
from llm.parallel.rules import MESH_AXES


def mesh_shape(sizes: dict[str, int], n_devices: int) -> tuple[int, ...]:
    """Axis sizes in MESH_AXES order, with a -1 resolved; ConfigError if they do not multiply to n_devices."""
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    if any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
        raise ConfigError(f"mesh sizes {dict(zip(MESH_AXES, shape))} must be positive, with at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n_devices % known:
            raise ConfigError(f"mesh {dict(zip(MESH_AXES, shape))}: the fixed axes ({known} devices) do not divide "
                              f"the {n_devices} devices available")
        shape[shape.index(-1)] = n_devices // known
    if math.prod(shape) != n_devices:
        raise ConfigError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but {n_devices} "
                          "are available; set one mesh size to -1 to fill the rest")
    return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: list | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with Auto axis types.

    Auto, not Explicit: flax's `with_logical_constraint` is an assertion under Explicit axes (see JAX-NOTES).
    """
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(sizes, len(devices))
    try:  # topology-aware placement (ICI rings on TPU, NVLink islands on GPU)
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, AssertionError, NotImplementedError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
