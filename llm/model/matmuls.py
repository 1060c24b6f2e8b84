"""A projection's matmul over several input and output axes, computed as one 2-D matmul."""

from __future__ import annotations

import math

import jax.numpy as jnp

from llm.ops.matmul import matmul


def matmul_2d(x: jnp.ndarray, kernel: jnp.ndarray, n_in: int, *, dtype, matmul_dtype=None) -> jnp.ndarray:
    """x [..., *in] . kernel [*in, *out] -> [..., *out] in `dtype`, computed as one [tokens, in] x [in, out]
    matmul (with `matmul_dtype` operands and float32 sums when that is set)."""
    lead, in_shape = x.shape[: x.ndim - n_in], x.shape[x.ndim - n_in:]
    out_shape = kernel.shape[n_in:]
    y = matmul(x.reshape(math.prod(lead), math.prod(in_shape)).astype(dtype),
               kernel.reshape(math.prod(in_shape), math.prod(out_shape)).astype(dtype), matmul_dtype)
    return y.reshape(*lead, *out_shape)
