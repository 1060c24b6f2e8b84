"""`jax.nn.dot_product_attention` (XLA's fused attention, or cuDNN's kernel on a GPU) behind the common
interface."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llm.ops.attention.masking import alibi_bias, make_mask


def xla_attention(q, k, v, *, causal, window, segment_ids, kv_segment_ids, q_offset, scale, softcap,
                  alibi_slopes=None, implementation=None):
    """`jax.nn.dot_product_attention`, with the fast `is_causal`/`local_window_size` path when it applies (no
    soft-cap: `softcap` must be None, which the entry point checks)."""
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
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal,
                                        local_window_size=local, implementation=implementation)
