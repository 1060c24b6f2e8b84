"""A linear layer over several input and output axes, with logically named parameters.

flax's DenseGeneral initialises its kernel flattened to 2-D and reshapes it afterwards, which clashes with
logical-axis constraints under a mesh; this layer creates the kernel in its final shape and applies it with
one einsum.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class Projection(nn.Module):
    """y = x . kernel (+ bias), contracting x's last `len(in_names)` axes.

    kernel has shape in_shape + out_shape and logical names in_names + out_names; bias, out_shape / out_names.
    """

    out_shape: Sequence[int]
    in_names: Sequence[str]
    out_names: Sequence[str]
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        n_in, n_out = len(self.in_names), len(self.out_shape)
        in_shape = x.shape[x.ndim - n_in:]
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, (*self.in_names, *self.out_names)),
                            (*in_shape, *self.out_shape), self.param_dtype)
        letters = string.ascii_letters
        batch = letters[: x.ndim - n_in]
        contract = letters[x.ndim - n_in: x.ndim]
        out = letters[x.ndim: x.ndim + n_out]
        y = jnp.einsum(f"{batch}{contract},{contract}{out}->{batch}{out}", x.astype(self.dtype),
                       kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.out_names)),
                              tuple(self.out_shape), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y
