"""Multi-process start-up with JAX's own distributed runtime (`jax.distributed.initialize`).

Must run before any other JAX call. Three ways, from the experiment's `distributed` section:
  enabled=False                  single process (the default);
  enabled=True, nothing else     auto-detect the cluster (SLURM, Open MPI, TPU pod slices, ...) or read
                                 JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID;
  enabled=True + coordinator_address, num_processes, process_id    explicit (e.g. processes on one host).
"""

from __future__ import annotations

import jax
from ml_collections import ConfigDict

from llm.errors import ConfigError

_initialized = False


def initialize_distributed(d: ConfigDict) -> None:
    """Start JAX's distributed runtime if the config asks for it (idempotent)."""
    global _initialized
    if not d.enabled or _initialized:
        return
    explicit = {"coordinator_address": d.coordinator_address, "num_processes": d.num_processes,
                "process_id": d.process_id}
    given = {k: v for k, v in explicit.items() if v is not None}
    if given and len(given) != 3:
        missing = sorted(set(explicit) - set(given))
        raise ConfigError(f"distributed: set all of coordinator_address, num_processes and process_id, or none "
                          f"(auto-detect); missing {', '.join('distributed.' + m for m in missing)}")
    if given and not 0 <= d.process_id < d.num_processes:
        raise ConfigError(f"distributed.process_id={d.process_id} is not in [0, num_processes={d.num_processes})")
    kwargs = dict(given)
    if d.local_device_ids:
        kwargs["local_device_ids"] = [int(i) for i in d.local_device_ids.split(",")]
    jax.distributed.initialize(**kwargs)
    _initialized = True


def sync_processes(name: str) -> None:
    """Block until every process of a multi-process run reaches the barrier `name` (nothing when single)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
