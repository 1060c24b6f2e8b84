"""`jax.nn.dot_product_attention` (XLA's fused attention, or cuDNN's kernel on a GPU) behind the common
interface."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llm.ops.attention.masking import alibi_bias, make_mask
from llm.ops.attention.spec import AttentionSpec


def xla_attention(q, k, v, spec: AttentionSpec, *, segment_ids, kv_segment_ids, q_offset, alibi_slopes=None):
    """`jax.nn.dot_product_attention` (cuDNN's kernel for spec.impl 'cudnn'), with the fast
    `is_causal`/`local_window_size` path when it applies; `spec` scaled, without a soft-cap (the entry point
    checks)."""
    causal, window = spec.causal, spec.window
    simple = segment_ids is None and isinstance(q_offset, int) and q_offset == 0 and q.shape[1] == k.shape[1]
    mask, is_causal, local = None, False, None
    if simple:
        is_causal = causal
        if window is not None:
            local = (window - 1, 0 if causal else window - 1)
    else:
        mask = make_mask(q.shape[1], k.shape[1], causal=causal, window=window, segment_ids=segment_ids,
                         kv_segment_ids=kv_segment_ids, q_offset=q_offset)
    bias = None
    if alibi_slopes is not None:
        q_slot = (jnp.arange(q.shape[1]) + q_offset)[:, None]
        bias = alibi_bias(alibi_slopes, q_slot, jnp.arange(k.shape[1])[None, :])[None].astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=spec.scale, is_causal=is_causal,
                                        local_window_size=local,
                                        implementation="cudnn" if spec.impl == "cudnn" else None)
