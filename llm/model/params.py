"""Parameter bookkeeping: counts (measured and closed-form) and scan <-> per-layer layout conversion."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp

from llm.model.config import ModelConfig
from llm.model.mixer_table import MIXER_TABLE
from llm.model.mixers import GLA_GATE_RANK, feature_dims, key_dim


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
    mixing = {m: attention + conv if MIXER_TABLE[m].softmax else _mixer_params(cfg, m, attention)
              for m in set(cfg.layer_mixers)}
    counts = {
        "embed": v * e,
        "positions": cfg.max_len * e if cfg.position == "learned" else 0,
        "layers": sum(mixing[m] for m in cfg.layer_mixers) + cfg.n_layers * (ffn + 2 * norm),
        "final_norm": norm if cfg.norm_position == "pre" else 0,
        "unembed": 0 if cfg.tie_embeddings else e * v,
    }
    counts["total"] = sum(counts.values())
    return counts


def _mixer_params(cfg: ModelConfig, mixer: str, attention: int) -> int:
    """One sub-quadratic mixer layer (llm/model/mixers.py): projections (a bias on the output only), the per-head
    output norm, short convolutions, and each mixer's gates; `attention`: a softmax attention layer's projections
    (Based has one beside its linear attention)."""
    e, h, dv = cfg.d_model, cfg.n_heads, cfg.dim_per_head
    dk = key_dim(cfg, mixer)
    n = 2 * e * h * dk + e * h * dv + h * dv * e + (e if cfg.use_bias else 0) + dv
    n += _short_conv_params(cfg, mixer)
    row = MIXER_TABLE[mixer]
    n += {"gate": e * GLA_GATE_RANK + GLA_GATE_RANK * h * dk + h * dk, "ssd": e * h + 2 * h}.get(row.decay, 0)
    n += e * h if row.core == "delta" else 0  # the write strength
    return n + (attention if row.window else 0)


def flops_params(cfg: ModelConfig) -> int:
    """N in PaLM's 6N + 12LHQT training FLOPs per token: every matmul weight, the output projection included,
    the input embedding and position tables (lookups, not matmuls) excluded, and so are the short convolutions'
    depthwise kernels (2K FLOPs per channel and token, not a matmul)."""
    c = param_count_formula(cfg)
    convs = sum(_short_conv_params(cfg, m) for m in cfg.layer_mixers)
    return c["layers"] - convs + c["final_norm"] + cfg.vocab_size * cfg.d_model


def _short_conv_params(cfg: ModelConfig, mixer: str = "attention") -> int:
    """One layer's depthwise kernels of its query, key and value short convolutions (Based: both branches')."""
    attention = cfg.short_conv * (cfg.n_heads + 2 * cfg.kv_heads) * cfg.dim_per_head
    row = MIXER_TABLE[mixer]
    if row.softmax:
        return attention
    own = cfg.short_conv * cfg.n_heads * (2 * key_dim(cfg, mixer) + cfg.dim_per_head)
    return own + (attention if row.window else 0)


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """PaLM appendix B: 6N + 12 L H Q T (full T^2 attention, no causal halving), the attention term taken per layer
    by `mixing_flops_per_token` (sub-quadratic mixers, sliding windows)."""
    return 6 * flops_params(cfg) + sum(mixing_flops_per_token(cfg, m, seq_len) for m in cfg.layer_mixers)


def mixing_flops_per_token(cfg: ModelConfig, mixer: str, seq_len: int) -> float:
    """Training FLOPs (forward and backward, 3x the forward) per token of one layer's token mixing: what its weight
    matmuls (6N) leave out. Per head, with Q the head size, K the key (feature) size, V the value size, C the chunk:

        attention       4 Q T' forward: scores and their mix over T' = T, or the window (PaLM's 12 H Q T)
        gla family      2 C (K + V) in-chunk scores and their mix + 4 K V reading and writing the state
        delta rule      4 C K + 3 C V + 6 K V: also the chunk's K K^T, its triangular solve and the K S term
        based           the gla family's, plus its window attention's
    """
    h, q, c = cfg.n_heads, cfg.dim_per_head, cfg.mixer_chunk
    window = min(seq_len, cfg.window or seq_len)
    row = MIXER_TABLE[mixer]
    if row.softmax:
        return 12 * h * q * window
    k = feature_dims(cfg, mixer)
    forward = 4 * c * k + 3 * c * q + 6 * k * q if row.core == "delta" else 2 * c * (k + q) + 4 * k * q
    return 3 * h * forward + (12 * h * q * window if row.window else 0)


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
