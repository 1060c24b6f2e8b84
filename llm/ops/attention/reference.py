"""The definition of attention: float32 einsums and an explicitly masked softmax over the full [Tq, Tk] scores,
and the probabilities themselves (`attention_weights`, which the model sows for the explorer)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llm.ops.attention.masking import check_shapes, masked_scores, softmax_or_zeros
from llm.ops.attention.spec import DEFAULT_SPEC, AttentionSpec

Array = jax.Array


def attention_weights(q: Array, k: Array, spec: AttentionSpec = DEFAULT_SPEC, *,
                      segment_ids: Array | None = None, kv_segment_ids: Array | None = None,
                      q_offset: int | Array = 0, alibi_slopes: Array | None = None) -> Array:
    """The attention probabilities [B, H, Tq, Tk] (float32) of q over k: the reference implementation's softmax
    (whatever `spec.impl` names).

    Scaled scores, soft-capped, plus the ALiBi bias, masked by `allowed` (masked entries exactly 0), softmax over
    keys; a row with no visible key is all zeros. Query head h reads key head h // (H // K), as everywhere here.
    """
    check_shapes(q, k, k)
    if segment_ids is not None and kv_segment_ids is None:
        kv_segment_ids = segment_ids
    p_bkgqs = probabilities(q, k, spec.scaled(q.shape[-1]), segment_ids=segment_ids,
                            kv_segment_ids=kv_segment_ids, q_offset=q_offset, alibi_slopes=alibi_slopes)
    b, kh, g, tq, tk = p_bkgqs.shape
    return p_bkgqs.reshape(b, kh * g, tq, tk)


def probabilities(q, k, spec: AttentionSpec, *, segment_ids, kv_segment_ids, q_offset, alibi_slopes):
    """Softmax probabilities [B, K, G, Tq, Tk] in float32 (G = H // K query heads per key head); `spec` scaled."""
    b, tq, h, d = q.shape
    kh = k.shape[2]
    q_bqkgd = q.astype(jnp.float32).reshape(b, tq, kh, h // kh, d)
    s_bkgqs = jnp.einsum("bqkgd,bskd->bkgqs", q_bqkgd, k.astype(jnp.float32)) * spec.scale
    s_bkgqs = masked_scores(s_bkgqs, (jnp.arange(tq) + q_offset)[:, None], jnp.arange(k.shape[1])[None, :], spec,
                            alibi_slopes=alibi_slopes, q_seg=segment_ids, k_seg=kv_segment_ids)
    return softmax_or_zeros(s_bkgqs)


def reference_attention(q, k, v, spec: AttentionSpec, *, segment_ids, kv_segment_ids, q_offset, alibi_slopes=None):
    """The definition: float32 einsums and an explicitly masked softmax (`attention_weights`), with the full
    [Tq, Tk] scores; `spec` scaled."""
    b, tq, h, d = q.shape
    p = probabilities(q, k, spec, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, q_offset=q_offset,
                      alibi_slopes=alibi_slopes)
    out = jnp.einsum("bkgqs,bskd->bqkgd", p, v.astype(jnp.float32))
    return out.reshape(b, tq, h, d).astype(q.dtype)
