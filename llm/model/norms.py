"""Normalisation layers with logically named parameters: LayerNorm and RMSNorm."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale, computed in float32 (Zhang & Sennrich 2019)."""

    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    axis_name: str | None = "embed"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jnp.reciprocal(jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps))
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


def make_norm(kind: str, *, eps: float, use_bias: bool, dtype, param_dtype, name: str | None = None,
              axis_name: str | None = "embed") -> nn.Module:
    """'layernorm' (scale, and bias when use_bias) or 'rmsnorm' (scale only)."""
    if kind == "rmsnorm":
        return RMSNorm(eps=eps, dtype=dtype, param_dtype=param_dtype, axis_name=axis_name, name=name)
    if kind == "layernorm":
        return nn.LayerNorm(
            epsilon=eps, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis_name,)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,)),
        )
    raise ValueError(f"unknown norm {kind!r}")
