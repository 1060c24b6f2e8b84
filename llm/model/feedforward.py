"""Position-wise feed-forward networks: the classic MLP and the gated variants SwiGLU and GeGLU."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from llm.model.config import ModelConfig
from llm.model.linear import model_projection

ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu, "silu": nn.silu}
GATED_ACTIVATION = {"swiglu": "silu", "geglu": "gelu"}


class FeedForward(nn.Module):
    """mlp: down(act(up(x))); swiglu/geglu: down(act(gate(x)) * up(x)) (Shazeer 2020)."""

    cfg: ModelConfig
    deterministic: bool = True  # no LoRA dropout

    @nn.compact
    def __call__(self, x_BTE: jnp.ndarray) -> jnp.ndarray:
        cfg = self.cfg

        def dense(features, names, name, residual=False):
            return model_projection(cfg, (features,), names[:1], names[1:], name=name, residual=residual,
                                    deterministic=self.deterministic)

        hidden = cfg.hidden_ff
        if cfg.gated:
            act = ACTIVATIONS[GATED_ACTIVATION[cfg.ffn]]
            h_BTF = act(dense(hidden, ("embed", "mlp"), "gate")(x_BTE)) * dense(hidden, ("embed", "mlp"), "up")(x_BTE)
        else:
            h_BTF = ACTIVATIONS[cfg.activation](dense(hidden, ("embed", "mlp"), "up")(x_BTE))
        h_BTF = nn.with_logical_constraint(h_BTF, ("batch", "length", "mlp"))
        return dense(cfg.d_model, ("mlp", "embed"), "down", residual=True)(h_BTF)
