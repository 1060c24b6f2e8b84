"""Logical-axis sharding: the rules (config data) that map the model's axis names onto the mesh.

The model names every parameter and activation axis ('batch', 'embed', 'heads', 'mlp', ...). A rule table,
the experiment's `mesh.rules`, maps each name to mesh axes; from it come the shardings of the train state
(parameters and optimizer state alike) and of the batches. `jax.jit` with these in/out shardings is the whole
of the parallelism: XLA's SPMD partitioner inserts the collectives.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm.parallel.rules import Rules
from llm.parallel.specs import fit_spec


@dataclasses.dataclass(frozen=True)
class Shardings:
    mesh: Mesh
    state: Any  # a TrainState of NamedShardings
    batch: NamedSharding  # [batch, length] token arrays
    replicated: NamedSharding


def _fit(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
    """Drop mesh axes from dimensions they do not divide (e.g. one KV head under tensor parallelism)."""
    return NamedSharding(sharding.mesh, fit_spec(sharding.spec, shape, sharding.mesh.shape))


def unboxed(boxed: Any) -> Any:
    """The arrays (or shapes) inside a tree's LogicallyPartitioned boxes, with no sharding constraint applied (flax's
    nn.unbox applies one, which needs arrays under a mesh)."""
    is_box = lambda x: isinstance(x, nn.Partitioned)
    return jax.tree_util.tree_map(lambda x: x.value if is_box(x) else x, boxed, is_leaf=is_box)


def state_shardings(boxed_abstract_state: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a train state, from the logical names in its boxed (LogicallyPartitioned) leaves."""
    specs = nn.get_partition_spec(boxed_abstract_state)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    shapes = unboxed(boxed_abstract_state)
    # Leaves without a shape are empty placeholders (optax's MaskedNode for frozen parameters' state).
    return jax.tree_util.tree_map(lambda s, a: _fit(s, a.shape) if hasattr(a, "shape") else a, shardings, shapes)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """[batch, length] arrays: rows split over the axes the 'batch' rule names."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", "length"), rules))


def make_shardings(boxed_abstract_state: Any, mesh: Mesh, rules: Rules) -> Shardings:
    return Shardings(mesh, state_shardings(boxed_abstract_state, mesh, rules), batch_sharding(mesh, rules),
                     NamedSharding(mesh, PartitionSpec()))


def global_batch(local: np.ndarray, sharding: NamedSharding, global_rows: int) -> jax.Array:
    """One global array from this process's rows (each process passes only the rows it reads)."""
    return jax.make_array_from_process_local_data(sharding, local, (global_rows, *local.shape[1:]))


def _per_device_bytes(abstract: Any, shardings: Any) -> int:
    total = 0
    for a, s in zip(jax.tree_util.tree_leaves(abstract), jax.tree_util.tree_leaves(shardings), strict=True):
        total += math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
    return total


def memory_report(abstract_state: Any, shardings: Shardings, compiled_step: Any = None) -> dict[str, float]:
    """Per-device bytes: parameters, optimizer state, and the compiled step's temporaries (activations)."""
    report = {
        "params": _per_device_bytes(abstract_state.params, shardings.state.params),
        "opt_state": _per_device_bytes(abstract_state.opt_state, shardings.state.opt_state),
    }
    if compiled_step is not None:
        analysis = compiled_step.memory_analysis()
        report["activations_and_temps"] = getattr(analysis, "temp_size_in_bytes", float("nan"))
    return report


def format_memory_report(report: dict[str, float], mesh: Mesh) -> str:
    mib = {k: v / 2**20 for k, v in report.items()}
    shape = " x ".join(f"{a}={n}" for a, n in mesh.shape.items())
    parts = ", ".join(f"{k} {v:,.1f} MiB" for k, v in mib.items())
    return f"per-device memory on mesh {shape}: {parts}"
