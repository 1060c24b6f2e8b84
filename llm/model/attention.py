"""Causal self-attention: projections, RoPE / ALiBi, QK-norm, the attention op, and a KV cache for decoding."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm.model.config import ModelConfig
from llm.model.norms import RMSNorm
from llm.model.positions import alibi_slopes, apply_rope
from llm.ops.attention import attention


def decode_impl(impl: str, softcap: float | None) -> str:
    """The implementation used against the KV cache (the kernel has no query offset)."""
    if impl in ("reference", "chunked"):
        return impl
    return "reference" if softcap is not None else "xla"


class SelfAttention(nn.Module):
    """Multi-head / grouped-query / multi-query causal self-attention.

    With `decode=True` the layer keeps a 'cache' collection: keys, values and segment ids for `max_len` slots.
    A call writes its T new tokens at slots [index, index + T) and attends over the whole cache with the query
    offset `index`; the causal rule hides slots not yet written. A prefill is a decode call with T > 1.
    """

    cfg: ModelConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x_BTE, positions_BT, segment_ids_BT, decode_index):
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        h, kv, d = cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
        init = nn.initializers.normal(cfg.init_std)
        out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)

        def proj(heads, names, name):
            return nn.DenseGeneral((heads, d), use_bias=cfg.use_bias, dtype=dtype, param_dtype=param_dtype,
                                   name=name, kernel_init=nn.with_logical_partitioning(init, names),
                                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))

        q_BTHD = proj(h, ("embed", "heads", "kv"), "query")(x_BTE)
        k_BTKD = proj(kv, ("embed", "kv_heads", "kv"), "key")(x_BTE)
        v_BTKD = proj(kv, ("embed", "kv_heads", "kv"), "value")(x_BTE)
        if cfg.qk_norm:
            q_BTHD = RMSNorm(cfg.norm_eps, dtype, param_dtype, axis_name="kv", name="query_norm")(q_BTHD)
            k_BTKD = RMSNorm(cfg.norm_eps, dtype, param_dtype, axis_name="kv", name="key_norm")(k_BTKD)
        if cfg.position == "rope":
            q_BTHD = apply_rope(q_BTHD, positions_BT, cfg.rope_base)
            k_BTKD = apply_rope(k_BTKD, positions_BT, cfg.rope_base)
        q_BTHD = nn.with_logical_constraint(q_BTHD, ("batch", "length", "heads", "kv"))
        k_BTKD = nn.with_logical_constraint(k_BTKD, ("batch", "length", "kv_heads", "kv"))
        v_BTKD = nn.with_logical_constraint(v_BTKD, ("batch", "length", "kv_heads", "kv"))

        slopes = jnp.asarray(alibi_slopes(h)) if cfg.position == "alibi" else None
        kw = dict(causal=True, window=cfg.window, softcap=cfg.attn_softcap, alibi_slopes=slopes)
        if self.decode:
            out_BTHD = self._attend_cached(q_BTHD, k_BTKD, v_BTKD, segment_ids_BT, decode_index, kw)
        else:
            out_BTHD = attention(q_BTHD, k_BTKD, v_BTKD, impl=cfg.attention_impl,
                                               segment_ids=segment_ids_BT, **kw)
        out_BTHD = nn.with_logical_constraint(out_BTHD, ("batch", "length", "heads", "kv"))
        return nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=cfg.use_bias, dtype=dtype,
                               param_dtype=param_dtype, name="out",
                               kernel_init=nn.with_logical_partitioning(out_init, ("heads", "kv", "embed")),
                               bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                               )(out_BTHD)

    def _attend_cached(self, q_BTHD, k_BTKD, v_BTKD, segment_ids_BT, index, kw):
        cfg = self.cfg
        b, t = q_BTHD.shape[:2]
        initialized = self.has_variable("cache", "cached_key")
        shape = (b, cfg.max_len, cfg.kv_heads, cfg.dim_per_head)
        key = self.variable("cache", "cached_key", jnp.zeros, shape, k_BTKD.dtype)
        value = self.variable("cache", "cached_value", jnp.zeros, shape, v_BTKD.dtype)
        segments = self.variable("cache", "cached_segment_ids", jnp.zeros, (b, cfg.max_len), jnp.int32)
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones((b, t), jnp.int32)
        if not initialized:  # `init` only shapes the cache
            return jnp.zeros_like(q_BTHD)
        key.value = jax.lax.dynamic_update_slice(key.value, k_BTKD.astype(key.value.dtype), (0, index, 0, 0))
        value.value = jax.lax.dynamic_update_slice(value.value, v_BTKD.astype(value.value.dtype), (0, index, 0, 0))
        segments.value = jax.lax.dynamic_update_slice(segments.value, segment_ids_BT.astype(jnp.int32), (0, index))
        return attention(
            q_BTHD, key.value, value.value, impl=decode_impl(cfg.attention_impl, cfg.attn_softcap),
            segment_ids=segment_ids_BT, kv_segment_ids=segments.value, q_offset=index, **kw)
