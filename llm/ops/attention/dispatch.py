"""The attention entry point: checks the arguments against the capability table and calls the implementation."""

from __future__ import annotations

from typing import Any

import jax

from llm.ops.attention.capabilities import CAPABILITIES, FEATURES, IMPLEMENTATIONS, missing
from llm.ops.attention.chunked import chunked_attention
from llm.ops.attention.dense import dense_attention
from llm.ops.attention.masking import check_shapes
from llm.ops.attention.reference import reference_attention
from llm.ops.attention.spec import DEFAULT_SPEC, AttentionSpec
from llm.ops.attention.xla import xla_attention

Array = jax.Array


def attention(
    q: Array,
    k: Array,
    v: Array,
    spec: AttentionSpec = DEFAULT_SPEC,
    *,
    segment_ids: Array | None = None,
    kv_segment_ids: Array | None = None,
    q_offset: int | Array = 0,
    alibi_slopes: Array | None = None,
    **impl_kwargs: Any,
) -> Array:
    """Attention of q over (k, v) with the static options `spec`; returns [B, Tq, H, D] in q's dtype.

    Args:
      spec: the implementation, causal mask, window, soft-cap and scale (llm/ops/attention/spec.py).
      segment_ids: [B, Tq] int ids of the query tokens' documents; kv_segment_ids [B, Tk] (defaults to
        segment_ids, which then requires Tq == Tk).
      q_offset: slot of the first query row (an int or a traced int scalar); used by KV-cache decoding.
      alibi_slopes: [H] ALiBi slopes; adds -slope_h * |q_slot - k_slot| to the (capped) logits.
      impl_kwargs: implementation options (block sizes for `chunked`, `dense` and `flash`).
    """
    check_shapes(q, k, v)
    impl = spec.impl
    if impl not in CAPABILITIES:
        raise ValueError(f"unknown attention impl {impl!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    if spec.window is not None and spec.window < 1:
        raise ValueError(f"attention window must be a positive int or None, got {spec.window}")
    offset = not (isinstance(q_offset, int) and q_offset == 0)
    lacks = missing(impl, **spec.features(alibi=alibi_slopes is not None), q_offset=offset)
    if lacks:
        raise ValueError(f"impl={impl!r} has no {FEATURES[lacks[0]]}; choose an implementation that has it "
                         "(llm/ops/attention/capabilities.py)")
    if segment_ids is not None and kv_segment_ids is None:
        if q.shape[1] != k.shape[1]:
            raise ValueError("segment_ids alone needs Tq == Tk; pass kv_segment_ids for the keys")
        kv_segment_ids = segment_ids
    if (segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("pass both segment_ids and kv_segment_ids, or neither")
    spec = spec.scaled(q.shape[-1])
    kw = dict(segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, q_offset=q_offset, alibi_slopes=alibi_slopes)
    if impl == "reference":
        return reference_attention(q, k, v, spec, **kw)
    if impl == "dense":
        return dense_attention(q, k, v, spec, **kw, **impl_kwargs)
    if impl in ("xla", "cudnn"):
        return xla_attention(q, k, v, spec, **kw)
    if impl == "chunked":
        return chunked_attention(q, k, v, spec, **kw, **impl_kwargs)
    from llm.kernels import flash_attention  # the Pallas kernels import only when asked for

    # The kernels (a layer below) take the options one by one.
    return flash_attention.flash_attention(q, k, v, causal=spec.causal, window=spec.window, scale=spec.scale,
                                           softcap=spec.softcap, **kw, **impl_kwargs)
