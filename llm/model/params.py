"""Parameter bookkeeping: counts (measured and closed-form) and scan <-> per-layer layout conversion."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp

from llm.model.config import ModelConfig


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def param_count_formula(cfg: ModelConfig) -> dict[str, int]:
    """Closed-form parameter counts by part; 'total' is their sum."""
    e, v, h, k, d, f = cfg.d_model, cfg.vocab_size, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.hidden_ff
    bias = 1 if cfg.use_bias else 0
    norm = e * (2 if cfg.norm == "layernorm" and cfg.use_bias else 1)
    attention = e * h * d + 2 * e * k * d + h * d * e + bias * (h * d + 2 * k * d + e)
    attention += 2 * d if cfg.qk_norm else 0
    conv = _short_conv_params(cfg)
    n_in = 2 if cfg.gated else 1
    ffn = n_in * e * f + f * e + bias * (n_in * f + e)
    counts = {
        "embed": v * e,
        "positions": cfg.max_len * e if cfg.position == "learned" else 0,
        "layers": cfg.n_layers * (attention + conv + ffn + 2 * norm),
        "final_norm": norm if cfg.norm_position == "pre" else 0,
        "unembed": 0 if cfg.tie_embeddings else e * v,
    }
    counts["total"] = sum(counts.values())
    return counts


def flops_params(cfg: ModelConfig) -> int:
    """N in PaLM's 6N + 12LHQT training FLOPs per token: every matmul weight, the output projection included,
    the input embedding and position tables (lookups, not matmuls) excluded, and so are the short convolutions'
    depthwise kernels (2K FLOPs per channel and token, not a matmul)."""
    c = param_count_formula(cfg)
    return c["layers"] - cfg.n_layers * _short_conv_params(cfg) + c["final_norm"] + cfg.vocab_size * cfg.d_model


def _short_conv_params(cfg: ModelConfig) -> int:
    """One layer's depthwise kernels of the query, key and value short convolutions."""
    return cfg.short_conv * (cfg.n_heads + 2 * cfg.kv_heads) * cfg.dim_per_head


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """PaLM appendix B: 6N + 12 L H Q T (full T^2 attention, no causal halving)."""
    return 6 * flops_params(cfg) + 12 * cfg.n_layers * cfg.n_heads * cfg.dim_per_head * seq_len


_LAYER = re.compile(r"layers_(\d+)$")


def stack_layers(params: dict) -> dict:
    """Per-layer params {'layers_0': t0, 'layers_1': t1, ...} -> scanned layout {'layers': stack(t_i)}."""
    layer_keys = sorted((k for k in params if _LAYER.match(k)), key=lambda k: int(_LAYER.match(k).group(1)))
    if not layer_keys:
        return dict(params)
    out = {k: v for k, v in params.items() if k not in layer_keys}
    out["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[params[k] for k in layer_keys])
    return out


def unstack_layers(params: dict) -> dict:
    """Scanned layout {'layers': stacked} -> {'layers_0': ..., 'layers_1': ...}."""
    if "layers" not in params:
        return dict(params)
    out = {k: v for k, v in params.items() if k != "layers"}
    n = jax.tree_util.tree_leaves(params["layers"])[0].shape[0]
    for i in range(n):
        out[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], params["layers"])
    return out
