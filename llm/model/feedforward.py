"""Position-wise feed-forward networks: the classic MLP and the gated variants SwiGLU and GeGLU."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from llm.model.config import ModelConfig
from llm.model.linear import Projection

ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu, "silu": nn.silu}
GATED_ACTIVATION = {"swiglu": "silu", "geglu": "gelu"}


class FeedForward(nn.Module):
    """mlp: down(act(up(x))); swiglu/geglu: down(act(gate(x)) * up(x)) (Shazeer 2020)."""

    cfg: ModelConfig
    deterministic: bool = True  # no LoRA dropout

    @nn.compact
    def __call__(self, x_BTE: jnp.ndarray) -> jnp.ndarray:
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        init = nn.initializers.normal(cfg.init_std)
        # GPT-2's scaled init of the projections that write into the residual stream.
        out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)

        def dense(features, names, name, kernel_init=init):
            return Projection((features,), names[:1], names[1:], use_bias=cfg.use_bias, kernel_init=kernel_init,
                              dtype=dtype, param_dtype=param_dtype, matmul_dtype=cfg.matmul_dtype, lora=cfg,
                              deterministic=self.deterministic, name=name)

        hidden = cfg.hidden_ff
        if cfg.gated:
            act = ACTIVATIONS[GATED_ACTIVATION[cfg.ffn]]
            h_BTF = act(dense(hidden, ("embed", "mlp"), "gate")(x_BTE)) * dense(hidden, ("embed", "mlp"), "up")(x_BTE)
        else:
            h_BTF = ACTIVATIONS[cfg.activation](dense(hidden, ("embed", "mlp"), "up")(x_BTE))
        h_BTF = nn.with_logical_constraint(h_BTF, ("batch", "length", "mlp"))
        return dense(cfg.d_model, ("mlp", "embed"), "down", out_init)(h_BTF)
