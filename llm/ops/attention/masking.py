"""The visibility rule of attention and the masked, biased scores every implementation softmaxes.

Slots: query row i sits at slot `q_offset + i`, key column j at slot j (with a KV cache the offset is the cache
index). A key is visible when all of these hold:
  causal:       k_slot <= q_slot
  window W:     q_slot - k_slot < W          (and k_slot - q_slot < W when not causal)
  segment ids:  q_segment == kv_segment      (packed documents; padding uses its own id)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llm.ops.attention.spec import AttentionSpec

Array = jax.Array


def check_shapes(q: Array, k: Array, v: Array) -> None:
    """q [B, Tq, H, D], k and v [B, Tk, K, D] with K dividing H; ValueError otherwise."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention wants [batch, length, heads, head_dim] arrays, got {q.shape}, {k.shape}, {v.shape}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {k.shape} vs {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {q.shape} and k {k.shape} differ in batch or head_dim")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{k.shape[2]} key/value heads do not divide {q.shape[2]} query heads")


def allowed(q_slot: Array, k_slot: Array, *, causal: bool, window: int | None,
            q_seg: Array | None = None, k_seg: Array | None = None) -> Array:
    """The visibility rule, broadcasting: q_slot [..., Tq, 1] against k_slot [..., 1, Tk]."""
    ok = jnp.ones(jnp.broadcast_shapes(q_slot.shape, k_slot.shape), bool)
    if causal:
        ok = ok & (k_slot <= q_slot)
    if window is not None:
        ok = ok & (q_slot - k_slot < window)
        if not causal:
            ok = ok & (k_slot - q_slot < window)
    if q_seg is not None:
        ok = ok & (q_seg == k_seg)
    return ok


def make_mask(tq: int, tk: int, *, causal: bool, window: int | None, segment_ids: Array | None = None,
              kv_segment_ids: Array | None = None, q_offset: int | Array = 0) -> Array:
    """Boolean mask [B or 1, 1, Tq, Tk] (True = visible) from the rule above."""
    q_slot = (jnp.arange(tq) + q_offset)[:, None]
    k_slot = jnp.arange(tk)[None, :]
    q_seg = k_seg = None
    if segment_ids is not None:
        q_seg, k_seg = segment_ids[:, :, None], kv_segment_ids[:, None, :]
    mask = allowed(q_slot, k_slot, causal=causal, window=window, q_seg=q_seg, k_seg=k_seg)
    mask = jnp.broadcast_to(mask, (segment_ids.shape[0] if segment_ids is not None else 1, tq, tk))
    return mask[:, None]


def cap_logits(s: Array, softcap: float | None) -> Array:
    return s if softcap is None else softcap * jnp.tanh(s / softcap)


def alibi_bias(alibi_slopes: Array, q_slot: Array, k_slot: Array) -> Array:
    """ALiBi's linear distance penalty [H, Tq, Tk] (broadcast over slots): -slope_h * |q_slot - k_slot|."""
    dist = jnp.abs(q_slot - k_slot).astype(jnp.float32)
    return -alibi_slopes.astype(jnp.float32)[:, None, None] * dist


def masked_scores(raw: Array, q_slot: Array, k_slot: Array, spec: AttentionSpec, *, alibi_slopes: Array | None,
                  q_seg: Array | None = None, k_seg: Array | None = None) -> Array:
    """Scaled scores [B, *heads, Tq, Tk] -> soft-capped (`spec.softcap`), plus ALiBi's bias, -inf where `allowed`
    says no (`spec.causal`, `spec.window`).

    q_slot [Tq, 1] and k_slot [1, Tk] are the rows' and columns' slots (any key offset included); q_seg [B, Tq]
    and k_seg [B, Tk] the segment ids or None; `alibi_slopes` [H] is reshaped to the scores' head axes (H, or K
    and G).
    Shared by the reference, the chunked and the dense implementations, each with its own layout and key range
    (the tests check them against an independent NumPy computation, tests/attention_oracle.py).
    """
    heads, (tq, tk) = raw.shape[1:-2], raw.shape[-2:]
    s = cap_logits(raw, spec.softcap)
    if alibi_slopes is not None:
        s = s + alibi_bias(alibi_slopes, q_slot, k_slot).reshape(*heads, tq, tk)
    segments = {} if q_seg is None else {"q_seg": q_seg[:, :, None], "k_seg": k_seg[:, None, :]}
    ok = allowed(q_slot, k_slot, causal=spec.causal, window=spec.window, **segments)  # [Tq, Tk] or [B, Tq, Tk]
    ok = ok.reshape(-1 if ok.ndim == 3 else 1, *(1,) * len(heads), tq, tk)
    return jnp.where(ok, s, -jnp.inf)


def softmax_or_zeros(s: Array) -> Array:
    """Softmax over the last axis of scores that are -inf where masked; a row with no visible key is all zeros."""
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))  # a shift the softmax ignores: no gradient
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    denom = jnp.sum(p, axis=-1, keepdims=True)
    return p / jnp.where(denom == 0, 1.0, denom)
