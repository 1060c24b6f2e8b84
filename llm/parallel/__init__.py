"""Device meshes, logical-axis sharding rules, and multi-process start-up."""

from llm.parallel.distributed import initialize_distributed, sync_processes
from llm.parallel.mesh import MESH_AXES, make_mesh, mesh_shape
from llm.parallel.sharding import (
    Shardings,
    batch_sharding,
    format_memory_report,
    global_batch,
    logical_rules,
    make_shardings,
    memory_report,
    state_shardings,
)

__all__ = ["MESH_AXES", "Shardings", "batch_sharding", "format_memory_report", "global_batch",
           "initialize_distributed", "logical_rules", "make_mesh", "make_shardings", "memory_report", "mesh_shape",
           "state_shardings", "sync_processes"]
