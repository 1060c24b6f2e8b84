"""The floating-point dtypes a model computes, stores and exports in, by name: the names a user may write
(`model.dtype`, `model.param_dtype`, `model.matmul_dtype`, an export's dtype, a benchmark's flag) and their parsing,
written once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm.errors import ConfigError

if TYPE_CHECKING:
    import jax.numpy as jnp

DTYPES = ("float32", "bfloat16", "float16")


def parse_dtype(name: str | jnp.dtype, what: str = "dtype", error: type[Exception] = ConfigError) -> jnp.dtype:
    """`name` (one of DTYPES, or a dtype of one) as a jnp.dtype; anything else raises `error` with one line that
    names `what` (the setting or flag it came from) and the names allowed."""
    import jax.numpy as jnp  # here, not above: the config (which names DTYPES) imports without JAX

    try:
        dtype = jnp.dtype(name)
    except TypeError:
        dtype = None
    # A name is written in full (numpy's 'f4' and the like are refused); a dtype object must be one of them.
    if not (name in DTYPES if isinstance(name, str) else dtype is not None and dtype.name in DTYPES):
        raise error(f"{what}={name!r} is not a dtype llm supports; use one of: {', '.join(DTYPES)}")
    return dtype
