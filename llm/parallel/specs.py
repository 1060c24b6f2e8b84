"""Partition specs fitted to arrays: shared by the model's per-device code and the state's shardings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from jax.sharding import PartitionSpec


def fit_spec(spec: Sequence, shape: Sequence[int], mesh_shape: Mapping[str, int]) -> PartitionSpec:
    """`spec` padded to len(shape), with mesh axes dropped from the dimensions they do not divide.

    A dimension that does not split evenly (one KV head under 2-way tensor parallelism, say) stays whole.
    """
    dims = list(spec) + [None] * (len(shape) - len(spec))
    for i, axes in enumerate(dims):
        names = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
        if names and shape[i] % math.prod(mesh_shape[a] for a in names):
            dims[i] = None
    return PartitionSpec(*dims)
