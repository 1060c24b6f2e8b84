"""A linear layer over several input and output axes, with logically named parameters.

flax's DenseGeneral initialises its kernel flattened to 2-D and reshapes it afterwards, which clashes with
logical-axis constraints under a mesh; this layer creates the kernel in its final shape. It multiplies as one
2-D matmul, [tokens, in] x [in, out]: XLA's CPU backend turns the weight gradient of a [batch, length, in]
einsum (two contracting axes) into a slow generic loop, 2-3x slower than the same gradient of a 2-D matmul
(measured here: benchmarks/results/train_cpu.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from llm.model.config import ModelConfig
from llm.model.dropout import Dropout
from llm.ops.matmul import matmul


class Projection(nn.Module):
    """y = x . kernel (+ bias), contracting x's last `len(in_names)` axes.

    kernel has shape in_shape + out_shape and logical names in_names + out_names; bias, out_shape / out_names.

    lora: the model config, when its LoRA settings may apply here (they do if this module's path matches
    `lora_targets`): adds lora_a [*in_shape, rank] (small random) and lora_b [rank, *out_shape] (zeros).
    """

    out_shape: Sequence[int]
    in_names: Sequence[str]
    out_names: Sequence[str]
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    matmul_dtype: str | None = None  # low-precision matmul operands (llm/ops/matmul.py)
    lora: ModelConfig | None = None
    deterministic: bool = True  # no LoRA dropout

    @nn.compact
    def __call__(self, x):
        n_in = len(self.in_names)
        in_shape = x.shape[x.ndim - n_in:]
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, (*self.in_names, *self.out_names)),
                            (*in_shape, *self.out_shape), self.param_dtype)
        y = matmul_2d(x, kernel, n_in, dtype=self.dtype, matmul_dtype=self.matmul_dtype)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.out_names)),
                              tuple(self.out_shape), self.param_dtype)
            y = y + bias.astype(self.dtype)
        if self.lora is not None and lora_applies(self.lora, "/".join(self.scope.path)):
            cfg = self.lora
            a_init = nn.initializers.normal(1 / math.prod(in_shape) ** 0.5)
            a = self.param("lora_a", nn.with_logical_partitioning(a_init, (*self.in_names, None)),
                           (*in_shape, cfg.lora_rank), self.param_dtype)
            b = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, (None, *self.out_names)),
                           (cfg.lora_rank, *self.out_shape), self.param_dtype)
            x_drop = Dropout(cfg.lora_dropout, deterministic=self.deterministic, mask=cfg.dropout_mask)(x)
            low_rank = matmul_2d(matmul_2d(x_drop, a, n_in, dtype=self.dtype), b, 1, dtype=self.dtype)
            y = y + (cfg.lora_alpha / cfg.lora_rank) * low_rank
        return y


def lora_applies(cfg: ModelConfig, path: str) -> bool:
    """Whether a projection at `path` ('layers_0/attention/query') gets LoRA adapters under `cfg`."""
    return cfg.lora_rank > 0 and any(re.search(p, path) for p in cfg.lora_targets.split(",") if p)


def matmul_2d(x: jnp.ndarray, kernel: jnp.ndarray, n_in: int, *, dtype, matmul_dtype=None) -> jnp.ndarray:
    """x [..., *in] . kernel [*in, *out] -> [..., *out] in `dtype`, computed as one [tokens, in] x [in, out]
    matmul (with `matmul_dtype` operands and float32 sums when that is set)."""
    lead, in_shape = x.shape[: x.ndim - n_in], x.shape[x.ndim - n_in:]
    out_shape = kernel.shape[n_in:]
    y = matmul(x.reshape(math.prod(lead), math.prod(in_shape)).astype(dtype),
               kernel.reshape(math.prod(in_shape), math.prod(out_shape)).astype(dtype), matmul_dtype)
    return y.reshape(*lead, *out_shape)
