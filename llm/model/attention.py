"""Causal self-attention: projections, short convolutions, RoPE / ALiBi, QK-norm, the attention op, and a KV
cache for decoding."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from llm.model.config import ModelConfig
from llm.model.conv import ShortConv
from llm.model.linear import model_projection
from llm.model.norms import RMSNorm
from llm.model.positions import alibi_slopes, apply_rope
from llm.ops.attention import attention, attention_weights, decode_impl
from llm.ops.attention.spec import AttentionSpec
from llm.parallel.context.attention import context_attention
from llm.parallel.context.layout import context_layout
from llm.parallel.specs import fit_spec


class SelfAttention(nn.Module):
    """Multi-head / grouped-query / multi-query causal self-attention.

    With `decode=True` the layer keeps a 'cache' collection: keys, values and segment ids for `max_len` slots.
    A call writes its T new tokens at slots [index, index + T) and attends over the whole cache with the query
    offset `index`; the causal rule hides slots not yet written. A prefill is a decode call with T > 1.

    With the 'intermediates' collection mutable (and decode=False) the layer also sows its attention probabilities
    [B, H, T, T] as 'attention_weights' (see `llm.ops.attention.attention_weights`); otherwise nothing is computed.
    """

    cfg: ModelConfig
    decode: bool = False
    deterministic: bool = True  # no LoRA dropout

    @nn.compact
    def __call__(self, x_BTE, positions_BT, segment_ids_BT, decode_index):
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        h, kv, d = cfg.n_heads, cfg.kv_heads, cfg.dim_per_head

        def proj(heads, names, name):
            return model_projection(cfg, (heads, d), ("embed",), names, name=name, deterministic=self.deterministic)

        q_BTHD = proj(h, ("heads", "kv"), "query")(x_BTE)
        k_BTKD = proj(kv, ("kv_heads", "kv"), "key")(x_BTE)
        v_BTKD = proj(kv, ("kv_heads", "kv"), "value")(x_BTE)
        if cfg.short_conv:
            def conv(names, name):
                return ShortConv(cfg.short_conv, names, cfg.max_len, decode=self.decode, dtype=dtype,
                                 param_dtype=param_dtype, name=name)

            q_BTHD = conv(("heads", "kv"), "query_conv")(q_BTHD, segment_ids_BT, decode_index)
            k_BTKD = conv(("kv_heads", "kv"), "key_conv")(k_BTKD, segment_ids_BT, decode_index)
            v_BTKD = conv(("kv_heads", "kv"), "value_conv")(v_BTKD, segment_ids_BT, decode_index)
        if cfg.qk_norm:
            q_BTHD = RMSNorm(cfg.norm_eps, dtype, param_dtype, axis_name="kv", name="query_norm")(q_BTHD)
            k_BTKD = RMSNorm(cfg.norm_eps, dtype, param_dtype, axis_name="kv", name="key_norm")(k_BTKD)
        if cfg.position == "rope":
            q_BTHD = apply_rope(q_BTHD, positions_BT, cfg.rope_base, cfg.rope, cfg.rotary_dim)
            k_BTKD = apply_rope(k_BTKD, positions_BT, cfg.rope_base, cfg.rope, cfg.rotary_dim)
        q_BTHD = nn.with_logical_constraint(q_BTHD, ("batch", "length", "heads", "kv"))
        k_BTKD = nn.with_logical_constraint(k_BTKD, ("batch", "length", "kv_heads", "kv"))
        v_BTKD = nn.with_logical_constraint(v_BTKD, ("batch", "length", "kv_heads", "kv"))

        spec, slopes = cfg.attention_spec, jnp.asarray(alibi_slopes(h)) if cfg.position == "alibi" else None
        if not self.decode and self.is_mutable_collection("intermediates"):
            # Asked for (apply(..., mutable=["intermediates"])): the probabilities [B, H, T, T] of this layer's own
            # queries and keys by the reference softmax, whichever implementation computes the output.
            self.sow("intermediates", "attention_weights",
                     attention_weights(q_BTHD, k_BTKD, spec, segment_ids=segment_ids_BT, alibi_slopes=slopes))
        if self.decode:
            out_BTHD = self._attend_cached(q_BTHD, k_BTKD, v_BTKD, segment_ids_BT, decode_index, spec, slopes)
        else:
            out_BTHD = self._attend(q_BTHD, k_BTKD, v_BTKD, segment_ids_BT, spec, slopes)
        out_BTHD = nn.with_logical_constraint(out_BTHD, ("batch", "length", "heads", "kv"))
        return model_projection(cfg, (cfg.d_model,), ("heads", "kv"), ("embed",), name="out", residual=True,
                                deterministic=self.deterministic)(out_BTHD)

    def _attend(self, q_BTHD, k_BTKD, v_BTKD, segment_ids_BT, spec: AttentionSpec, slopes):
        """The attention op. On a mesh, per-device programs run under shard_map: the Pallas kernel, and the
        context-parallel attention when the mesh splits the sequence (llm/parallel/context/attention.py)."""
        mesh = jax.sharding.get_abstract_mesh()
        layout = context_layout()
        if layout is None and (spec.impl != "flash" or mesh.empty or mesh.size == 1):
            return attention(q_BTHD, k_BTKD, v_BTKD, spec, segment_ids=segment_ids_BT, alibi_slopes=slopes)
        q_spec, kv_spec = _head_specs(q_BTHD.shape, k_BTKD.shape, mesh)
        length = None if layout is None else layout.axis
        if q_spec[1] != length or kv_spec[1] != length or q_spec[3] is not None or q_spec[0] != kv_spec[0]:
            raise ValueError(f"attention under this mesh needs length split over {length!r} (mesh.rules.length), "
                             f"head_dim unsplit and batch split alike for queries and keys; the rules give {q_spec} "
                             f"and {kv_spec}")
        segments = segment_ids_BT
        if layout is not None and segments is None:
            segments = jnp.zeros(q_BTHD.shape[:2], jnp.int32)

        def per_device(q, k, v, *optional):
            optional = list(optional)
            seg = optional.pop(0) if segments is not None else None
            local_slopes = optional[0] if slopes is not None else None
            if layout is None:
                return attention(q, k, v, spec, segment_ids=seg, alibi_slopes=local_slopes)
            return context_attention(q, k, v, seg, seg, local_slopes, layout=layout, spec=spec)

        args, specs = [q_BTHD, k_BTKD, v_BTKD], [q_spec, kv_spec, kv_spec]
        if segments is not None:
            args, specs = [*args, segments], [*specs, P(q_spec[0], q_spec[1])]
        if slopes is not None:  # each device's heads' slopes
            args, specs = [*args, slopes], [*specs, P(q_spec[2])]
        return jax.shard_map(per_device, in_specs=tuple(specs), out_specs=q_spec, check_vma=False)(*args)

    def _attend_cached(self, q_BTHD, k_BTKD, v_BTKD, segment_ids_BT, index, spec: AttentionSpec, slopes):
        cfg = self.cfg
        b, t = q_BTHD.shape[:2]
        initialized = self.has_variable("cache", "cached_key")
        # Heads before slots: [B, K, S, D] is the layout the score and output matmuls contract in (batch dims
        # B, K leading). Stored as [B, S, K, D], XLA copied the whole cache into it at every decoding step
        # (benchmarks/results/perf_before_after.md: 3.7 s of 5.0 s for 128 tokens at batch 32); now only the new
        # T tokens are transposed, and the swap back to [B, S, K, D] for `attention` cancels its own transpose.
        shape = (b, cfg.kv_heads, cfg.max_len, cfg.dim_per_head)
        key = self.variable("cache", "cached_key", jnp.zeros, shape, k_BTKD.dtype)
        value = self.variable("cache", "cached_value", jnp.zeros, shape, v_BTKD.dtype)
        segments = self.variable("cache", "cached_segment_ids", jnp.zeros, (b, cfg.max_len), jnp.int32)
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones((b, t), jnp.int32)
        if not initialized:  # `init` only shapes the cache
            return jnp.zeros_like(q_BTHD)
        heads_first = lambda x_BTKD, dtype: jnp.swapaxes(x_BTKD, 1, 2).astype(dtype)
        key.value = jax.lax.dynamic_update_slice(key.value, heads_first(k_BTKD, key.value.dtype), (0, 0, index, 0))
        value.value = jax.lax.dynamic_update_slice(value.value, heads_first(v_BTKD, value.value.dtype),
                                                   (0, 0, index, 0))
        segments.value = jax.lax.dynamic_update_slice(segments.value, segment_ids_BT.astype(jnp.int32), (0, index))
        return attention(
            q_BTHD, jnp.swapaxes(key.value, 1, 2), jnp.swapaxes(value.value, 1, 2),
            spec.replace(impl=decode_impl(spec.impl, **cfg.attention_features)),
            segment_ids=segment_ids_BT, kv_segment_ids=segments.value, q_offset=index, alibi_slopes=slopes)


def _head_specs(q_shape, kv_shape, mesh) -> tuple[P, P]:
    """The partition specs of queries and keys / values under the current rules. Local query head i reads local
    KV head i // group only if both are split the same way: the KV heads' split decides."""
    def spec(names, shape):  # axes of size 1 split nothing: dropped, so specs compare by what they split
        dims = [tuple(a for a in ((d,) if isinstance(d, str) else d or ()) if mesh.shape[a] > 1)
                for d in fit_spec(nn.logical_to_mesh_axes(names), shape, mesh.shape)]
        return P(*(None if not d else d[0] if len(d) == 1 else d for d in dims))

    q_spec = spec(("batch", "length", "heads", "kv"), q_shape)
    kv_spec = spec(("batch", "length", "kv_heads", "kv"), kv_shape)
    if kv_spec[2] != q_spec[2]:
        q_spec = P(q_spec[0], q_spec[1], kv_spec[2], q_spec[3])
    return q_spec, kv_spec
