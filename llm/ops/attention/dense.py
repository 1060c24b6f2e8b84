"""Dense attention with a hand-written backward pass, computed in query blocks that skip invisible keys.

The forward pass is the reference definition (float32 scores, the masked softmax of `allowed`), evaluated for
`block_q` query rows at a time against only the key slots those rows can see: with a causal mask, the keys up to
the block's last row, with a window, none older than the window. For causal attention over T = 4 * block_q that
is 10/16 of the score matrix. The probabilities are kept for the backward pass, which is written out:

  dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dO * O)) * scale,   dQ = dS K,   dK = dS^T Q

(with the soft-cap's derivative when one is set). Autodiff of the reference softmax reduces dP * P over the keys
instead; XLA:CPU ran that [B, H, T, T] reduction far slower than the [B, T, H, D] one here
(benchmarks/results/perf_before_after.md). A query offset that is traced (KV-cache decoding) cannot choose key
ranges, so the blocks then span all keys.
"""

from __future__ import annotations

import functools
import typing

import jax
import jax.numpy as jnp

from llm.ops.attention.masking import masked_scores, softmax_or_zeros
from llm.ops.attention.spec import AttentionSpec

Array = jax.Array


class _Static(typing.NamedTuple):
    """Hashable static options of the custom-vjp function."""

    spec: AttentionSpec  # scaled
    block_q: int
    offset: int | None  # the static query offset, or None when it is traced


def dense_attention(q, k, v, spec: AttentionSpec, *, segment_ids, kv_segment_ids, q_offset, alibi_slopes=None,
                    block_q: int = 128):
    """q [B, Tq, H, D], k and v [B, Tk, K, D] -> [B, Tq, H, D] in q's dtype (float32 inside); `spec` scaled."""
    if block_q < 1:
        raise ValueError(f"block_q must be a positive int, got {block_q}")
    static_offset = q_offset if isinstance(q_offset, int) else None
    st = _Static(spec, int(block_q), static_offset)
    slopes = None if alibi_slopes is None else alibi_slopes.astype(jnp.float32)
    return _dense(st, q, k, v, segment_ids, kv_segment_ids, jnp.asarray(q_offset, jnp.int32), slopes)


def _blocks(st: _Static, tq: int, tk: int) -> list[tuple[int, int, int, int]]:
    """(first row, end row, first key, end key) of each query block; the key range covers every visible key."""
    out, causal, window = [], st.spec.causal, st.spec.window
    for i0 in range(0, tq, st.block_q):
        i1 = min(i0 + st.block_q, tq)
        lo, hi = 0, tk
        if st.offset is not None:
            first, last = st.offset + i0, st.offset + i1 - 1  # the block's query slots
            if causal:
                hi = min(hi, last + 1)
            elif window is not None:
                hi = min(hi, last + window)
            if window is not None:
                lo = max(lo, first - window + 1)
        out.append((i0, i1, lo, max(lo, hi)))
    return out


class _Layout(typing.NamedTuple):
    """Einsum subscripts of the query heads ('kg' when grouped, 'h' when K == H) and the key heads."""

    qh: str
    kh: str

    @staticmethod
    def of(h: int, kh: int) -> _Layout:
        # Multi-head attention keeps 4-D arrays: a unit group axis made XLA:CPU pick slow fused reductions.
        return _Layout("h", "h") if h == kh else _Layout("kg", "k")

    def heads(self, x, kh):
        """[B, T, H, D] -> the query-head layout ([B, T, K, G, D] when grouped)."""
        return x if self.qh == "h" else x.reshape(*x.shape[:2], kh, x.shape[2] // kh, x.shape[3])


def _block_probs(st, lay, q_blk, k_rng, q_seg, k_seg, q_offset, slopes, i0, lo):
    """Probabilities [B, *heads, bq, n] of one query block over its key range, and the raw (uncapped) scores."""
    bq, n = q_blk.shape[1], k_rng.shape[1]
    raw = jnp.einsum(f"bq{lay.qh}d,bs{lay.kh}d->b{lay.qh}qs", q_blk, k_rng) * st.spec.scale
    s = masked_scores(raw, (q_offset + i0 + jnp.arange(bq))[:, None], (lo + jnp.arange(n))[None, :], st.spec,
                      alibi_slopes=slopes, q_seg=q_seg, k_seg=k_seg)
    return softmax_or_zeros(s), raw


def _forward(st, q, k, v, q_seg, kv_seg, q_offset, slopes):
    kh = k.shape[2]
    lay = _Layout.of(q.shape[2], kh)
    qx, k32, v32 = lay.heads(q.astype(jnp.float32), kh), k.astype(jnp.float32), v.astype(jnp.float32)
    outs, probs, raws = [], [], []
    for i0, i1, lo, hi in _blocks(st, q.shape[1], k.shape[1]):
        if hi == lo:  # no key visible to any row of the block
            outs.append(jnp.zeros_like(qx[:, i0:i1]))
            probs.append(None)
            raws.append(None)
            continue
        p, raw = _block_probs(st, lay, qx[:, i0:i1], k32[:, lo:hi], None if q_seg is None else q_seg[:, i0:i1],
                              None if kv_seg is None else kv_seg[:, lo:hi], q_offset, slopes, i0, lo)
        outs.append(jnp.einsum(f"b{lay.qh}qs,bs{lay.kh}d->bq{lay.qh}d", p, v32[:, lo:hi]))
        probs.append(p)
        raws.append(raw if st.spec.softcap is not None else None)
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
    return out, probs, raws


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _dense(st, q, k, v, q_seg, kv_seg, q_offset, slopes):
    out = _forward(st, q, k, v, q_seg, kv_seg, q_offset, slopes)[0]
    return out.reshape(q.shape).astype(q.dtype)


def _dense_fwd(st, q, k, v, q_seg, kv_seg, q_offset, slopes):
    out, probs, raws = _forward(st, q, k, v, q_seg, kv_seg, q_offset, slopes)
    return out.reshape(q.shape).astype(q.dtype), (q, k, v, out, probs, raws)


def _dense_bwd(st, res, do):
    q, k, v, out, probs, raws = res  # the masks are in the saved probabilities
    kh = k.shape[2]
    lay = _Layout.of(q.shape[2], kh)
    qx, k32, v32 = lay.heads(q.astype(jnp.float32), kh), k.astype(jnp.float32), v.astype(jnp.float32)
    dox = lay.heads(do.astype(jnp.float32), kh)
    delta = jnp.moveaxis(jnp.sum(dox * out, axis=-1), 1, -1)  # rowsum(dO * O): [B, *heads, Tq]
    dq_blocks = []
    dk, dv = jnp.zeros_like(k32), jnp.zeros_like(v32)
    for (i0, i1, lo, hi), p, raw in zip(_blocks(st, q.shape[1], k.shape[1]), probs, raws, strict=True):
        if p is None:
            dq_blocks.append(jnp.zeros_like(qx[:, i0:i1]))
            continue
        do_blk = dox[:, i0:i1]
        dv = dv.at[:, lo:hi].add(jnp.einsum(f"b{lay.qh}qs,bq{lay.qh}d->bs{lay.kh}d", p, do_blk))
        dp = jnp.einsum(f"bq{lay.qh}d,bs{lay.kh}d->b{lay.qh}qs", do_blk, v32[:, lo:hi])
        ds = p * (dp - delta[..., i0:i1, None])
        if st.spec.softcap is not None:
            ds = ds * (1.0 - jnp.tanh(raw / st.spec.softcap) ** 2)
        ds = ds * st.spec.scale
        dq_blocks.append(jnp.einsum(f"b{lay.qh}qs,bs{lay.kh}d->bq{lay.qh}d", ds, k32[:, lo:hi]))
        dk = dk.at[:, lo:hi].add(jnp.einsum(f"b{lay.qh}qs,bq{lay.qh}d->bs{lay.kh}d", ds, qx[:, i0:i1]))
    dq = dq_blocks[0] if len(dq_blocks) == 1 else jnp.concatenate(dq_blocks, axis=1)
    return (dq.reshape(q.shape).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None)


_dense.defvjp(_dense_fwd, _dense_bwd)
