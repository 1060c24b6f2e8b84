"""Gated linear attention in three forms: a recurrence, a parallel (quadratic) form and a chunked form.

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T        state S [K, V] per head; g_t <= 0 the log decay of each key row
    o_t = S_t^T q_t                                  (the current token included, as causal attention includes it)

Shapes: q, k [B, T, H, K]; v [B, T, H, V]; g [B, T, H, K] (GLA: a decay per key dimension) or [B, T, H, 1]
(Mamba-2 / RetNet: one per head, broadcast), float32 recommended; state [B, H, K, V]; out [B, T, H, V].
Plain linear attention is g = 0. `segment_ids` [B, T]: the state restarts where the id changes (packed
documents), as if the first token of each document saw an empty state.

  recurrent   lax.scan over tokens, O(T K V) work, O(K V) state: decoding (state in, state out)
  parallel    o_t = sum_{s <= t} (q_t . (exp(G_t - G_s) * k_s)) v_s with G the running sum of g: O(T^2 K)
  chunked     the parallel form inside chunks of C tokens, the recurrence across them: O(T C K + T K V)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gla_recurrent(q, k, v, g, *, segment_ids=None, state=None):
    """(out [B, T, H, V], final state [B, H, K, V]) by the recurrence; `state`: the state before token 0."""
    b, t, h, dk = q.shape
    state = jnp.zeros((b, h, dk, v.shape[-1]), jnp.float32) if state is None else state.astype(jnp.float32)
    decay = jnp.exp(jnp.broadcast_to(g, k.shape).astype(jnp.float32))
    decay = decay * continues(segment_ids, b, t)[:, :, None, None]  # a new document: the state is dropped

    def step(s, xs):
        q_t, k_t, v_t, a_t = xs
        s = a_t[..., None] * s + k_t[..., :, None] * v_t[..., None, :]
        return s, jnp.einsum("bhk,bhkv->bhv", q_t, s)

    xs = tuple(jnp.moveaxis(x.astype(jnp.float32), 1, 0) for x in (q, k, v, decay))
    state, out = jax.lax.scan(step, state, xs)
    return jnp.moveaxis(out, 0, 1), state


def gla_parallel(q, k, v, g, *, segment_ids=None):
    """out [B, T, H, V] by the quadratic form (the whole sequence as one chunk, no state in)."""
    out, _ = _chunk(q, k, v, g, segments(segment_ids, *q.shape[:2]), None, None)
    return out


def gla_mixing(q, k, g, *, segment_ids=None):
    """The token-mixing matrix M [B, H, T, T] of the parallel form, out = M v (no state in): what a layer of this
    family has instead of attention probabilities (signed, rows not normalised)."""
    return _scores(q.astype(jnp.float32), k.astype(jnp.float32), g.astype(jnp.float32),
                   segments(segment_ids, *q.shape[:2]))


def gla_chunked(q, k, v, g, *, chunk: int = 64, segment_ids=None, state=None):
    """(out, final state) with the parallel form inside chunks of `chunk` tokens and the recurrence across them."""
    b, t, h, dk = q.shape
    seg = segments(segment_ids, b, t)
    xs, n = split_chunks((q, k, v, g, seg), chunk)
    state = jnp.zeros((b, h, dk, v.shape[-1]), jnp.float32) if state is None else state.astype(jnp.float32)
    prev_seg = seg[:, 0]  # the incoming state belongs to the first token's document

    def step(carry, xs):
        s, last = carry
        out, s = _chunk(*xs, s, last)
        return (s, xs[4][:, -1]), out

    (state, _), out = jax.lax.scan(step, (state, prev_seg), xs)
    out = jnp.moveaxis(out, 0, 1).reshape(b, n * chunk, h, v.shape[-1])
    return out[:, :t], state


def _chunk(q, k, v, g, seg, state, prev_seg):
    """One chunk of C tokens: (out [B, C, H, V], the state after it). `state` (None: empty) belongs to the document
    `prev_seg` [B]; a token of another document does not see it."""
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    g = g.astype(jnp.float32)
    cum = jnp.cumsum(g, axis=1)  # G_t [B, C, H, K or 1]
    scores = _scores(q, k, g, seg)
    out = jnp.einsum("bhts,bshv->bthv", scores, v)
    if state is None:
        return out, None
    sees = (seg == prev_seg[:, None])[:, :, None, None]  # [B, C, 1, 1]: still in the incoming state's document
    out = out + jnp.einsum("bthk,bhkv->bthv", jnp.where(sees, q * jnp.exp(cum), 0.0), state)
    # The state after the chunk: the last token's document only.
    last = seg[:, -1:]
    tail = (seg == last)[:, :, None, None]
    k_end = jnp.where(tail, k * jnp.exp(cum[:, -1:] - cum), 0.0)
    carried = jnp.where(sees[:, -1, :, :, None], jnp.exp(cum[:, -1])[..., None] * state, 0.0)
    return out, carried + jnp.einsum("bshk,bshv->bhkv", k_end, v)


def _scores(q, k, g, seg):
    """sum_k q_tk exp(G_tk - G_sk) k_sk over s <= t in the same document: [B, H, t, s]. A decay per head (g [.., 1])
    factors out of the sum, so only [B, t, s, H] decays are built, not [B, t, s, H, K]."""
    decay = _pair_decay(g, seg)
    if g.shape[-1] == 1:
        return jnp.einsum("bthk,bshk->bhts", q, k) * jnp.moveaxis(decay[..., 0], 3, 1)
    return jnp.einsum("bthk,btshk,bshk->bhts", q, decay, k)


def _pair_decay(g, seg):
    """exp(G_t - G_s) for s <= t in the same document, else 0: [B, t, s, H, K] (G the running sum of g [B, T, H, K]).
    The difference, not exp(G_t) / exp(G_s), stays finite however long the chunk."""
    cum = jnp.cumsum(g, axis=1)
    same = seg[:, :, None] == seg[:, None, :]
    causal = jnp.tril(jnp.ones((g.shape[1],) * 2, bool))
    mask = (causal & same)[..., None, None]
    diff = cum[:, :, None] - cum[:, None, :]
    return jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)


def split_chunks(xs, chunk: int):
    """Arrays [B, T, ...] (the last one the segment ids) as [n, B, chunk, ...], padded at the end to n chunks:
    zeros, and the segment ids repeat the last one, so padded tokens with zero keys and values change nothing."""
    t = xs[-1].shape[1]
    pad = -t % chunk
    n = (t + pad) // chunk

    def split(x, edge):
        x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2), mode="edge" if edge else "constant")
        return jnp.moveaxis(x.reshape(x.shape[0], n, chunk, *x.shape[2:]), 1, 0)

    return tuple(split(x, i == len(xs) - 1) for i, x in enumerate(xs)), n


def segments(segment_ids, b, t):
    return jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)


def continues(segment_ids, b, t):
    """[B, T] float: 0 where a token starts a new document (its id differs from the previous token's), else 1."""
    if segment_ids is None:
        return jnp.ones((b, t), jnp.float32)
    seg = segment_ids.astype(jnp.int32)
    return jnp.concatenate([jnp.ones((b, 1), jnp.float32), (seg[:, 1:] == seg[:, :-1]).astype(jnp.float32)], 1)
