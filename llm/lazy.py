"""Package namespaces whose names import on first use, so importing a light part of a package (say
`llm.model.config`, for the config's validation) does not load JAX and Flax through the package's __init__."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module-level __getattr__ for `package`: `names` maps each exported name to the module defining it."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__

