"""Device meshes, logical-axis sharding rules, and multi-process start-up. The names below import on first use
(llm/lazy.py): the rules (rules.py) parse without JAX."""

from llm.lazy import exports

_NAMES = {
    **dict.fromkeys(("initialize_distributed", "sync_processes"), "llm.parallel.distributed"),
    **dict.fromkeys(("make_mesh", "mesh_shape"), "llm.parallel.mesh"),
    **dict.fromkeys(("MESH_AXES", "Rules", "logical_rules"), "llm.parallel.rules"),
    **dict.fromkeys(("Shardings", "batch_sharding", "format_memory_report", "global_batch", "make_shardings",
                     "memory_report", "state_shardings", "unboxed"), "llm.parallel.sharding"),
}
__all__ = sorted(_NAMES)
__getattr__ = exports(__name__, _NAMES)
