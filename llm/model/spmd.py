"""Partition-spec helpers shared by the model (per-device kernels) and llm/parallel (state shardings), and the
layout of a sequence split over the mesh's `context` axis (context parallelism)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from llm.ops.attention.context import Layout

CONTEXT_AXIS = "context"  # the mesh axis that splits the sequence


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


@dataclasses.dataclass(frozen=True)
class ContextSettings:
    """How attention works when the mesh splits the sequence (`mesh.context_strategy`, `mesh.context_balance`)."""

    strategy: str = "ring"
    balance: bool = True


_settings = threading.local()


@contextlib.contextmanager
def context_settings(settings: ContextSettings):
    """Within it, models traced under a mesh with a `context` axis use `settings` (as flax's
    `logical_axis_rules` sets the rules)."""
    before = getattr(_settings, "value", None)
    _settings.value = settings
    try:
        yield
    finally:
        _settings.value = before


def context_layout() -> Layout | None:
    """The layout of the sequence over the current mesh's `context` axis; None without one (or of size 1)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.shape.get(CONTEXT_AXIS, 1) == 1:
        return None
    settings = getattr(_settings, "value", None) or ContextSettings()
    return Layout(CONTEXT_AXIS, mesh.shape[CONTEXT_AXIS], settings.balance, settings.strategy)


def to_context_layout(inputs_BT, targets_BT, extras: dict) -> tuple:
    """A batch's [B, T] arrays (inputs, targets and extras such as weights and segment ids) in the order the
    context layout wants, with explicit positions, so that the model's positions, masks and loss see every token
    at its true slot. Unchanged when the layout keeps the sequence in order."""
    layout = context_layout()
    if layout is None or not layout.balanced:
        return inputs_BT, targets_BT, extras
    b, t = inputs_BT.shape
    order = layout.order(t)
    extras = dict(extras)
    if extras.get("positions") is None:
        extras["positions"] = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    take = lambda x_BT: x_BT[:, order]
    return take(inputs_BT), take(targets_BT), {k: take(v) for k, v in extras.items() if v is not None}
