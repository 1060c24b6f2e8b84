"""Scaled dot-product attention as plain array functions, behind one entry point.

Layout: q is [B, Tq, H, D]; k and v are [B, Tk, K, D] where K (the number of key/value heads) divides H.
K == H is multi-head attention, 1 < K < H grouped-query, K == 1 multi-query. Query head h reads key/value
head h // (H // K); no implementation here materialises the repeated K/V.

Masking is defined once, by `allowed(q_idx, k_idx, ...)`, in terms of *slot* indices: query row i sits at
slot `q_offset + i` and key column j at slot j. With a KV cache the offset is the cache index, so the same rule
covers training, prefill and one-token decoding. A key is visible when all of these hold:
  causal:       k_slot <= q_slot
  window W:     q_slot - k_slot < W          (and k_slot - q_slot < W when not causal)
  segment ids:  q_segment == kv_segment      (packed documents; padding uses its own id)
Rows with no visible key produce zeros (reference, chunked, flash).

Implementations:
  reference  explicit einsum + masked softmax in float32: the readable definition (its probabilities, [B, H, Tq,
             Tk], are `attention_weights(q, k, ...)`);
  dense      the same in query blocks that skip the keys a causal or windowed block cannot see, with a
             hand-written backward pass (`llm.ops.dense_attention`): the fastest on CPU;
  xla        `jax.nn.dot_product_attention` (XLA's fused attention);
  cudnn      the same function asked for cuDNN's kernel (GPU only);
  chunked    online softmax over key blocks with `lax.scan` and a recomputing backward pass: O(Tq * block)
             memory in the forward and backward pass;
  flash      the Pallas kernel in `llm.kernels.flash_attention`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("reference", "dense", "xla", "cudnn", "chunked", "flash")

Array = jax.Array


def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    impl: str = "xla",
    causal: bool = True,
    window: int | None = None,
    segment_ids: Array | None = None,
    kv_segment_ids: Array | None = None,
    q_offset: int | Array = 0,
    scale: float | None = None,
    softcap: float | None = None,
    alibi_slopes: Array | None = None,
    **impl_kwargs: Any,
) -> Array:
    """Attention of q over (k, v); returns [B, Tq, H, D] in q's dtype.

    Args:
      impl: one of IMPLEMENTATIONS.
      causal: mask keys at later slots than the query.
      window: sliding-window size W (a query sees at most W keys, itself included), or None.
      segment_ids: [B, Tq] int ids of the query tokens' documents; kv_segment_ids [B, Tk] (defaults to
        segment_ids, which then requires Tq == Tk).
      q_offset: slot of the first query row (an int or a traced int scalar); used by KV-cache decoding.
      scale: softmax scale, default 1/sqrt(D).
      softcap: if set, logits become softcap * tanh(logits / softcap) (Gemma-2 style).
      alibi_slopes: [H] ALiBi slopes; adds -slope_h * |q_slot - k_slot| to the (capped) logits.
      impl_kwargs: implementation options (block sizes for `chunked` and `flash`).
    """
    _check_shapes(q, k, v)
    if window is not None and window < 1:
        raise ValueError(f"attention window must be a positive int or None, got {window}")
    if segment_ids is not None and kv_segment_ids is None:
        if q.shape[1] != k.shape[1]:
            raise ValueError("segment_ids alone needs Tq == Tk; pass kv_segment_ids for the keys")
        kv_segment_ids = segment_ids
    if (segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("pass both segment_ids and kv_segment_ids, or neither")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    kw = dict(causal=causal, window=window, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
              q_offset=q_offset, scale=scale, softcap=softcap, alibi_slopes=alibi_slopes)
    if impl == "reference":
        return reference_attention(q, k, v, **kw)
    if impl == "dense":
        from llm.ops.dense_attention import dense_attention

        return dense_attention(q, k, v, **kw, **impl_kwargs)
    if impl in ("xla", "cudnn"):
        return xla_attention(q, k, v, implementation="cudnn" if impl == "cudnn" else None, **kw)
    if impl == "chunked":
        return chunked_attention(q, k, v, **kw, **impl_kwargs)
    if impl == "flash":
        if not (isinstance(q_offset, int) and q_offset == 0):
            raise ValueError("impl='flash' has no q_offset (KV-cache decoding); decode with 'xla' or 'reference'")
        from llm.kernels import flash_attention

        kw.pop("q_offset")
        if kw.pop("alibi_slopes") is not None:
            raise ValueError("impl='flash' has no ALiBi bias; use 'chunked' or 'xla' with position='alibi'")
        return flash_attention.flash_attention(q, k, v, **kw, **impl_kwargs)
    raise ValueError(f"unknown attention impl {impl!r}; choose one of {', '.join(IMPLEMENTATIONS)}")


def _check_shapes(q: Array, k: Array, v: Array) -> None:
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


def attention_weights(q: Array, k: Array, *, causal: bool = True, window: int | None = None,
                      segment_ids: Array | None = None, kv_segment_ids: Array | None = None,
                      q_offset: int | Array = 0, scale: float | None = None, softcap: float | None = None,
                      alibi_slopes: Array | None = None) -> Array:
    """The attention probabilities [B, H, Tq, Tk] (float32) of q over k: the reference implementation's softmax.

    Scaled scores, soft-capped, plus the ALiBi bias, masked by `allowed` (masked entries exactly 0), softmax over
    keys; a row with no visible key is all zeros. Query head h reads key head h // (H // K), as everywhere here.
    """
    _check_shapes(q, k, k)
    if segment_ids is not None and kv_segment_ids is None:
        kv_segment_ids = segment_ids
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    p_bkgqs = _probabilities(q, k, causal=causal, window=window, segment_ids=segment_ids,
                             kv_segment_ids=kv_segment_ids, q_offset=q_offset, scale=scale, softcap=softcap,
                             alibi_slopes=alibi_slopes)
    b, kh, g, tq, tk = p_bkgqs.shape
    return p_bkgqs.reshape(b, kh * g, tq, tk)


def _probabilities(q, k, *, causal, window, segment_ids, kv_segment_ids, q_offset, scale, softcap, alibi_slopes):
    """Softmax probabilities [B, K, G, Tq, Tk] in float32 (G = H // K query heads per key head)."""
    b, tq, h, d = q.shape
    kh = k.shape[2]
    q_bqkgd = q.astype(jnp.float32).reshape(b, tq, kh, h // kh, d)
    s_bkgqs = jnp.einsum("bqkgd,bskd->bkgqs", q_bqkgd, k.astype(jnp.float32)) * scale
    s_bkgqs = masked_scores(s_bkgqs, (jnp.arange(tq) + q_offset)[:, None], jnp.arange(k.shape[1])[None, :],
                            causal=causal, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
                            q_seg=segment_ids, k_seg=kv_segment_ids)
    return softmax_or_zeros(s_bkgqs)


def masked_scores(raw: Array, q_slot: Array, k_slot: Array, *, causal: bool, window: int | None,
                  softcap: float | None, alibi_slopes: Array | None, q_seg: Array | None = None,
                  k_seg: Array | None = None) -> Array:
    """Scaled scores [B, *heads, Tq, Tk] -> soft-capped, plus ALiBi's bias, -inf where `allowed` says no.

    q_slot [Tq, 1] and k_slot [1, Tk] are the rows' and columns' slots (any key offset included); q_seg [B, Tq]
    and k_seg [B, Tk] the segment ids or None; `alibi_slopes` [H] is reshaped to the scores' head axes (H, or K
    and G).
    Shared by the reference, the chunked and the dense implementations, each with its own layout and key range.
    """
    heads, (tq, tk) = raw.shape[1:-2], raw.shape[-2:]
    s = cap_logits(raw, softcap)
    if alibi_slopes is not None:
        s = s + alibi_bias(alibi_slopes, q_slot, k_slot).reshape(*heads, tq, tk)
    segments = {} if q_seg is None else {"q_seg": q_seg[:, :, None], "k_seg": k_seg[:, None, :]}
    ok = allowed(q_slot, k_slot, causal=causal, window=window, **segments)  # [Tq, Tk] or [B, Tq, Tk]
    ok = ok.reshape(-1 if ok.ndim == 3 else 1, *(1,) * len(heads), tq, tk)
    return jnp.where(ok, s, -jnp.inf)


def softmax_or_zeros(s: Array) -> Array:
    """Softmax over the last axis of scores that are -inf where masked; a row with no visible key is all zeros."""
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    denom = jnp.sum(p, axis=-1, keepdims=True)
    return p / jnp.where(denom == 0, 1.0, denom)


def reference_attention(q, k, v, *, causal, window, segment_ids, kv_segment_ids, q_offset, scale, softcap,
                        alibi_slopes=None):
    """The definition: float32 einsums and an explicitly masked softmax (`attention_weights`), with the full
    [Tq, Tk] scores."""
    b, tq, h, d = q.shape
    p = _probabilities(q, k, causal=causal, window=window, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                       q_offset=q_offset, scale=scale, softcap=softcap, alibi_slopes=alibi_slopes)
    out = jnp.einsum("bkgqs,bskd->bqkgd", p, v.astype(jnp.float32))
    return out.reshape(b, tq, h, d).astype(q.dtype)


def xla_attention(q, k, v, *, causal, window, segment_ids, kv_segment_ids, q_offset, scale, softcap,
                  alibi_slopes=None, implementation=None):
    """`jax.nn.dot_product_attention`, with the fast `is_causal`/`local_window_size` path when it applies."""
    if softcap is not None:
        raise ValueError("impl='xla' has no logit soft-cap; use 'reference', 'chunked' or 'flash'")
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


# --------------------------------------------------------------------------------------------------------
# chunked: online softmax over key blocks, with a backward pass that recomputes scores block by block.


def chunked_attention(q, k, v, *, causal, window, segment_ids, kv_segment_ids, q_offset, scale, softcap,
                      alibi_slopes=None, block_k: int = 512):
    """Memory-efficient attention: never holds more than a [Tq, block_k] slab of scores per head."""
    b, tq = q.shape[:2]
    tk = k.shape[1]
    block_k = max(1, min(block_k, tk))
    pad = -tk % block_k
    if pad:
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
    if segment_ids is None:
        q_seg = jnp.zeros((b, tq), jnp.int32)
        kv_seg = jnp.zeros((b, tk), jnp.int32)
    else:
        q_seg, kv_seg = segment_ids.astype(jnp.int32), kv_segment_ids.astype(jnp.int32)
    # Padded keys get a segment id no query has, so they are never visible.
    kv_seg = jnp.pad(kv_seg, ((0, 0), (0, pad)), constant_values=jnp.iinfo(jnp.int32).min)
    q_offset = jnp.asarray(q_offset, jnp.int32)
    static = _ChunkStatic(causal=causal, window=window, scale=scale, softcap=softcap, block_k=block_k)
    slopes = None if alibi_slopes is None else alibi_slopes.astype(jnp.float32)
    return _chunked(static, q, k, v, q_seg, kv_seg, q_offset, slopes)


class _ChunkStatic(tuple):
    """Hashable static options for the custom-vjp function."""

    def __new__(cls, *, causal, window, scale, softcap, block_k):
        return super().__new__(cls, (causal, window, scale, softcap, block_k))

    causal = property(lambda s: s[0])
    window = property(lambda s: s[1])
    scale = property(lambda s: s[2])
    softcap = property(lambda s: s[3])
    block_k = property(lambda s: s[4])


def _blocks(x, block):
    """[B, T, ...] -> [T // block, B, block, ...] so lax.scan walks the blocks."""
    b, t = x.shape[:2]
    return jnp.moveaxis(x.reshape(b, t // block, block, *x.shape[2:]), 1, 0)


def _block_scores(st: _ChunkStatic, q_bqkgd, k_blk, q_seg, kseg_blk, q_offset, slopes, j):
    """Scores [B, K, G, Tq, bk] of one key block (capped, biased, masked entries -inf) and the raw scores."""
    raw = jnp.einsum("bqkgd,bskd->bkgqs", q_bqkgd, k_blk, preferred_element_type=jnp.float32) * st.scale
    q_slot = (jnp.arange(q_bqkgd.shape[1]) + q_offset)[:, None]
    k_slot = (j * st.block_k + jnp.arange(st.block_k))[None, :]
    s = masked_scores(raw, q_slot, k_slot, causal=st.causal, window=st.window, softcap=st.softcap,
                      alibi_slopes=slopes, q_seg=q_seg, k_seg=kseg_blk)
    return s, raw


def _chunked_fwd_impl(st, q, k, v, q_seg, kv_seg, q_offset, slopes):
    b, tq, h, d = q.shape
    kh = k.shape[2]
    q_bqkgd = q.reshape(b, tq, kh, h // kh, d)
    n_blocks = k.shape[1] // st.block_k

    def step(carry, xs):
        m, denom, acc = carry
        k_blk, v_blk, kseg_blk, j = xs
        s, _ = _block_scores(st, q_bqkgd, k_blk, q_seg, kseg_blk, q_offset, slopes, j)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(s - m_safe[..., None])
        corr = jnp.exp(jnp.where(jnp.isfinite(m), m, m_safe) - m_safe)
        denom = denom * corr + jnp.sum(p, axis=-1)
        pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32)
        acc = acc * corr[..., None] + pv
        return (m_new, denom, acc), None

    g = h // kh
    init = (jnp.full((b, kh, g, tq), -jnp.inf, jnp.float32), jnp.zeros((b, kh, g, tq), jnp.float32),
            jnp.zeros((b, kh, g, tq, d), jnp.float32))
    xs = (_blocks(k, st.block_k), _blocks(v, st.block_k), _blocks(kv_seg, st.block_k), jnp.arange(n_blocks))
    (m, denom, acc), _ = jax.lax.scan(step, init, xs)
    safe = jnp.where(denom == 0, 1.0, denom)
    out_bkgqd = acc / safe[..., None]
    lse = jnp.where(denom == 0, -jnp.inf, m + jnp.log(safe))
    out = jnp.moveaxis(out_bkgqd, 3, 1).reshape(b, tq, h, d).astype(q.dtype)
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked(st, q, k, v, q_seg, kv_seg, q_offset, slopes):
    return _chunked_fwd_impl(st, q, k, v, q_seg, kv_seg, q_offset, slopes)[0]


def _chunked_fwd(st, q, k, v, q_seg, kv_seg, q_offset, slopes):
    out, lse = _chunked_fwd_impl(st, q, k, v, q_seg, kv_seg, q_offset, slopes)
    return out, (q, k, v, q_seg, kv_seg, q_offset, slopes, out, lse)


def _chunked_bwd(st, res, do):
    q, k, v, q_seg, kv_seg, q_offset, slopes, out, lse = res
    b, tq, h, d = q.shape
    kh = k.shape[2]
    g = h // kh
    q_bqkgd = q.reshape(b, tq, kh, g, d)
    do_bkgqd = jnp.moveaxis(do.reshape(b, tq, kh, g, d), 1, 3).astype(jnp.float32)
    delta = jnp.sum(do_bkgqd * jnp.moveaxis(out.reshape(b, tq, kh, g, d), 1, 3).astype(jnp.float32), -1)
    lse_safe = jnp.where(jnp.isfinite(lse), lse, 0.0)

    def step(dq, xs):
        k_blk, v_blk, kseg_blk, j = xs
        s, raw = _block_scores(st, q_bqkgd, k_blk, q_seg, kseg_blk, q_offset, slopes, j)
        p = jnp.exp(s - lse_safe[..., None])  # [B, K, G, Tq, bk]; exp(-inf) = 0 where masked
        dv_blk = jnp.einsum("bkgqs,bkgqd->bskd", p, do_bkgqd)
        dp = jnp.einsum("bkgqd,bskd->bkgqs", do_bkgqd, v_blk.astype(jnp.float32))
        ds = p * (dp - delta[..., None])
        if st.softcap is not None:
            ds = ds * (1.0 - jnp.tanh(raw / st.softcap) ** 2)
        ds = ds * st.scale
        dq = dq + jnp.einsum("bkgqs,bskd->bqkgd", ds, k_blk.astype(jnp.float32))
        dk_blk = jnp.einsum("bkgqs,bqkgd->bskd", ds, q_bqkgd.astype(jnp.float32))
        return dq, (dk_blk, dv_blk)

    n_blocks = k.shape[1] // st.block_k
    xs = (_blocks(k, st.block_k), _blocks(v, st.block_k), _blocks(kv_seg, st.block_k), jnp.arange(n_blocks))
    dq, (dk_blocks, dv_blocks) = jax.lax.scan(step, jnp.zeros((b, tq, kh, g, d), jnp.float32), xs)

    def unblock(x):  # [n, B, bk, K, D] -> [B, n * bk, K, D]
        return jnp.moveaxis(x, 0, 1).reshape(b, -1, kh, d)

    return (dq.reshape(b, tq, h, d).astype(q.dtype), unblock(dk_blocks).astype(k.dtype),
            unblock(dv_blocks).astype(v.dtype), None, None, None, None)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
