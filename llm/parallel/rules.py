"""The mesh's axis names, and the rule table (the experiment's `mesh.rules`) that maps the model's logical axis
names onto them: plain data, parsed without JAX."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm.errors import ConfigError

# Outermost first: tensor parallelism talks most, so it gets the innermost (fastest-linked) devices.
MESH_AXES = ("data", "fsdp", "context", "tensor")
Rules = tuple[tuple[str, Any], ...]


def logical_rules(rules: Mapping[str, str]) -> Rules:
    """{'batch': 'data,fsdp', 'embed': 'fsdp', 'kv': ''} -> (('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ...)."""
    out = []
    for name, axes in dict(rules).items():
        parts = tuple(a.strip() for a in str(axes).split(",") if a.strip())
        unknown = [a for a in parts if a not in MESH_AXES]
        if unknown:
            raise ConfigError(f"mesh.rules.{name}={axes!r} names unknown mesh axes {unknown}; use "
                              f"{', '.join(MESH_AXES)} (comma-separated) or '' for replicated")
        out.append((name, None if not parts else parts[0] if len(parts) == 1 else parts))
    return tuple(out)
