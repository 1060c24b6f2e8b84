"""A linear layer over several input and output axes, with logically named parameters.

flax's DenseGeneral initialises its kernel flattened to 2-D and reshapes it afterwards, which clashes with
logical-axis constraints under a mesh; this layer creates the kernel in its final shape. It multiplies as one
2-D matmul, [tokens, in] x [in, out]: XLA's CPU backend turns the weight gradient of a [batch, length, in]
einsum (two contracting axes) into a slow generic loop, 2-3x slower than the same gradient of a 2-D matmul
(measured here: benchmarks/results/train_cpu.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from llm.model.config import ModelConfig
from llm.model.lora import lora_applies, lora_delta
from llm.model.matmuls import matmul_2d


class Projection(nn.Module):
    """y = x . kernel (+ bias), contracting x's last `len(in_names)` axes.

    kernel has shape in_shape + out_shape and logical names in_names + out_names; bias, out_shape / out_names.

    lora: the model config, when its LoRA settings may apply here (they do if this module's path matches
    `lora_targets`): adds lora_a and lora_b beside the kernel (llm/model/lora.py).
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
            y = y + lora_delta(self, x, self.lora, self.in_names, self.out_names, self.out_shape, dtype=self.dtype,
                               param_dtype=self.param_dtype, deterministic=self.deterministic)
        return y


def model_projection(cfg: ModelConfig, out_shape: Sequence[int], in_names: Sequence[str], out_names: Sequence[str],
                     *, name: str, residual: bool = False, use_bias: bool | None = None,
                     deterministic: bool = True) -> Projection:
    """A `Projection` of the model `cfg`: its dtypes, matmul dtype and LoRA, a normal(init_std) kernel, scaled by
    1/sqrt(2 n_layers) for a projection that writes into the residual stream (`residual`, GPT-2's init);
    use_bias None: `cfg.use_bias`. Create it inside a module's compact method (it becomes that module's child)."""
    std = cfg.init_std / (2 * cfg.n_layers) ** 0.5 if residual else cfg.init_std
    return Projection(out_shape, in_names, out_names, use_bias=cfg.use_bias if use_bias is None else use_bias,
                      kernel_init=nn.initializers.normal(std), dtype=jnp.dtype(cfg.dtype),
                      param_dtype=jnp.dtype(cfg.param_dtype), matmul_dtype=cfg.matmul_dtype, lora=cfg,
                      deterministic=deterministic, name=name)
