"""Chunked attention: an online softmax over key blocks with `lax.scan`, and a backward pass that recomputes the
scores block by block, so memory is O(Tq * block_k) in both passes."""

from __future__ import annotations

import functools
import typing

import jax
import jax.numpy as jnp

from llm.ops.attention.masking import masked_scores
from llm.ops.attention.spec import AttentionSpec


def chunked_attention(q, k, v, spec: AttentionSpec, *, segment_ids, kv_segment_ids, q_offset, alibi_slopes=None,
                      block_k: int = 512):
    """Memory-efficient attention: never holds more than a [Tq, block_k] slab of scores per head; `spec` scaled."""
    b, tq = q.shape[:2]
    if segment_ids is None:
        segment_ids, kv_segment_ids = jnp.zeros((b, tq), jnp.int32), jnp.zeros((b, k.shape[1]), jnp.int32)
    st, k, v, q_seg, kv_seg, q_offset, slopes = _prepare(k, v, segment_ids, kv_segment_ids, q_offset, alibi_slopes,
                                                         spec, block_k)
    return _chunked(st, q, k, v, q_seg, kv_seg, q_offset, slopes)


def block_attention(q, k, v, q_seg, kv_seg, q_offset, alibi_slopes, spec: AttentionSpec, *, block_k: int = 512):
    """(out [B, Tq, H, D] float32, logsumexp [B, K, G, Tq]) of q over one block of keys: what an online-softmax
    merge over several blocks needs (context-parallel attention). q_seg [B, Tq] and kv_seg [B, Tk] are int
    segment ids; q_offset is the slot of q's first row minus that of k's first key; `spec` scaled. A row that
    sees no key has output 0 and logsumexp -inf."""
    st, k, v, q_seg, kv_seg, q_offset, slopes = _prepare(k, v, q_seg, kv_seg, q_offset, alibi_slopes, spec, block_k)
    return _chunked_fwd_impl(st, q, k, v, q_seg, kv_seg, q_offset, slopes)


def block_attention_grads(q, k, v, q_seg, kv_seg, q_offset, alibi_slopes, out, lse, do, spec: AttentionSpec, *,
                          block_k: int = 512):
    """(dq, dk, dv), float32, of this key block's share of an attention whose final output `out` and logsumexp
    `lse` (over all blocks) are given, for the output cotangent `do`. Summed over the blocks they are the
    gradients of the whole attention."""
    tk = k.shape[1]
    st, k, v, q_seg, kv_seg, q_offset, slopes = _prepare(k, v, q_seg, kv_seg, q_offset, alibi_slopes, spec, block_k)
    dq, dk, dv = _chunked_grads(st, (q, k, v, q_seg, kv_seg, q_offset, slopes, out, lse), do)
    return dq, dk[:, :tk], dv[:, :tk]


def _prepare(k, v, q_seg, kv_seg, q_offset, alibi_slopes, spec: AttentionSpec, block_k: int):
    """The static options, and the keys, values and key segment ids padded to a whole number of key blocks."""
    tk = k.shape[1]
    block_k = max(1, min(block_k, tk))
    pad = -tk % block_k
    if pad:
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
    # Padded keys get a segment id no query has, so they are never visible.
    kv_seg = jnp.pad(kv_seg.astype(jnp.int32), ((0, 0), (0, pad)), constant_values=jnp.iinfo(jnp.int32).min)
    static = _ChunkStatic(spec, block_k)
    slopes = None if alibi_slopes is None else alibi_slopes.astype(jnp.float32)
    return static, k, v, q_seg.astype(jnp.int32), kv_seg, jnp.asarray(q_offset, jnp.int32), slopes


class _ChunkStatic(typing.NamedTuple):
    """Hashable static options for the custom-vjp function."""

    spec: AttentionSpec  # scaled
    block_k: int


def _blocks(x, block):
    """[B, T, ...] -> [T // block, B, block, ...] so lax.scan walks the blocks."""
    b, t = x.shape[:2]
    return jnp.moveaxis(x.reshape(b, t // block, block, *x.shape[2:]), 1, 0)


def _block_scores(st: _ChunkStatic, q_bqkgd, k_blk, q_seg, kseg_blk, q_offset, slopes, j):
    """Scores [B, K, G, Tq, bk] of one key block (capped, biased, masked entries -inf) and the raw scores."""
    raw = jnp.einsum("bqkgd,bskd->bkgqs", q_bqkgd, k_blk, preferred_element_type=jnp.float32) * st.spec.scale
    q_slot = (jnp.arange(q_bqkgd.shape[1]) + q_offset)[:, None]
    k_slot = (j * st.block_k + jnp.arange(st.block_k))[None, :]
    s = masked_scores(raw, q_slot, k_slot, st.spec, alibi_slopes=slopes, q_seg=q_seg, k_seg=kseg_blk)
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
    return jnp.moveaxis(out_bkgqd, 3, 1).reshape(b, tq, h, d), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked(st, q, k, v, q_seg, kv_seg, q_offset, slopes):
    return _chunked_fwd_impl(st, q, k, v, q_seg, kv_seg, q_offset, slopes)[0].astype(q.dtype)


def _chunked_fwd(st, q, k, v, q_seg, kv_seg, q_offset, slopes):
    out, lse = _chunked_fwd_impl(st, q, k, v, q_seg, kv_seg, q_offset, slopes)
    out = out.astype(q.dtype)
    return out, (q, k, v, q_seg, kv_seg, q_offset, slopes, out, lse)


def _chunked_bwd(st, res, do):
    q, k, v = res[:3]
    dq, dk, dv = _chunked_grads(st, res, do)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None


def _chunked_grads(st, res, do):
    """(dq, dk, dv) in float32; dk and dv span the padded keys."""
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
        if st.spec.softcap is not None:
            ds = ds * (1.0 - jnp.tanh(raw / st.spec.softcap) ** 2)
        ds = ds * st.spec.scale
        dq = dq + jnp.einsum("bkgqs,bskd->bqkgd", ds, k_blk.astype(jnp.float32))
        dk_blk = jnp.einsum("bkgqs,bqkgd->bskd", ds, q_bqkgd.astype(jnp.float32))
        return dq, (dk_blk, dv_blk)

    n_blocks = k.shape[1] // st.block_k
    xs = (_blocks(k, st.block_k), _blocks(v, st.block_k), _blocks(kv_seg, st.block_k), jnp.arange(n_blocks))
    dq, (dk_blocks, dv_blocks) = jax.lax.scan(step, jnp.zeros((b, tq, kh, g, d), jnp.float32), xs)

    def unblock(x):  # [n, B, bk, K, D] -> [B, n * bk, K, D]
        return jnp.moveaxis(x, 0, 1).reshape(b, -1, kh, d)

    return dq.reshape(b, tq, h, d), unblock(dk_blocks), unblock(dv_blocks)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
