"""The (gated) delta rule in three forms: a recurrence, a parallel form and a chunked form (the UT transform).

    S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T      state S [K, V] per head; a_t = exp(g_t), 0 < b_t
    o_t = S_t^T q_t

DeltaNet is g = 0; Gated DeltaNet learns g <= 0 (one per head and token). The keys are expected L2-normalised
(then each step is a contraction for 0 < b_t <= 2). Shapes: q, k [B, T, H, K]; v [B, T, H, V]; b, g [B, T, H];
state [B, H, K, V]; out [B, T, H, V]. `segment_ids` [B, T]: the state restarts where the id changes.

Chunked form: written as S_t = a_t S_{t-1} + k_t u_t^T with u_t = b_t (v_t - a_t S_{t-1}^T k_t), a chunk's u
solve the unit lower-triangular system (I + tril(diag(b) (K K^T * Gamma), -1)) U = diag(b) (V - diag(gamma) K S_0)
(gamma_t = exp(G_t), Gamma_ts = gamma_t / gamma_s, G the running sum of g in the chunk); then
O = diag(gamma) Q S_0 + tril(Q K^T * Gamma) U and S_C = gamma_C S_0 + (K * gamma_C / gamma)^T U.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llm.ops.mixers.gla import continues, segments, split_chunks


def delta_recurrent(q, k, v, b, g=None, *, segment_ids=None, state=None):
    """(out [B, T, H, V], final state [B, H, K, V]) by the recurrence; `state`: the state before token 0."""
    bsz, t, h, dk = q.shape
    g = jnp.zeros((bsz, t, h), jnp.float32) if g is None else g
    state = jnp.zeros((bsz, h, dk, v.shape[-1]), jnp.float32) if state is None else state.astype(jnp.float32)
    a = jnp.exp(g.astype(jnp.float32)) * continues(segment_ids, bsz, t)[:, :, None]

    def step(s, xs):
        q_t, k_t, v_t, b_t, a_t = xs
        s = a_t[..., None, None] * s
        u = b_t[..., None] * (v_t - jnp.einsum("bhk,bhkv->bhv", k_t, s))
        s = s + k_t[..., :, None] * u[..., None, :]
        return s, jnp.einsum("bhk,bhkv->bhv", q_t, s)

    xs = tuple(jnp.moveaxis(x.astype(jnp.float32), 1, 0) for x in (q, k, v, b, a))
    state, out = jax.lax.scan(step, state, xs)
    return jnp.moveaxis(out, 0, 1), state


def delta_parallel(q, k, v, b, g=None, *, segment_ids=None):
    """out [B, T, H, V]: the whole sequence as one chunk (a T x T triangular solve), no state in."""
    g = jnp.zeros(b.shape, jnp.float32) if g is None else g
    seg = segments(segment_ids, *q.shape[:2])
    factors = _factors(k.astype(jnp.float32), b.astype(jnp.float32), g.astype(jnp.float32), seg)
    out, _ = _chunk(q, k, v, b, g, seg, *factors, None, None)
    return out


def delta_mixing(q, k, b, g=None, *, segment_ids=None):
    """The token-mixing matrix M [B, H, T, T] with out = M v (no state in): tril(Q K^T * Gamma) A^-1 diag(b), the
    parallel form with the values factored out (signed, rows not normalised)."""
    g = jnp.zeros(b.shape, jnp.float32) if g is None else g
    q, k, b = q.astype(jnp.float32), k.astype(jnp.float32), b.astype(jnp.float32)
    gamma_ts, a_inv = _factors(k, b, g, segments(segment_ids, *q.shape[:2]))
    scores = jnp.einsum("bthk,bshk,btsh->bhts", q, k, gamma_ts)
    return scores @ a_inv * jnp.moveaxis(b, 1, 2)[:, :, None, :]


def delta_chunked(q, k, v, b, g=None, *, chunk: int = 64, segment_ids=None, state=None):
    """(out, final state): the UT transform inside chunks of `chunk` tokens, the recurrence across them."""
    bsz, t, h, dk = q.shape
    g = jnp.zeros(b.shape, jnp.float32) if g is None else g
    seg = segments(segment_ids, bsz, t)
    state = jnp.zeros((bsz, h, dk, v.shape[-1]), jnp.float32) if state is None else state.astype(jnp.float32)
    # Padded tokens: zero keys, values and b, no decay - they change nothing.
    xs, n = split_chunks((q, k, v, b, g, seg), chunk)
    # The chunks' triangular systems do not depend on the state: all solved at once, before the recurrence.
    _, k_c, _, b_c, g_c, seg_c = xs
    f32 = lambda x: x.astype(jnp.float32)
    xs = xs + jax.vmap(_factors)(f32(k_c), f32(b_c), f32(g_c), seg_c)

    def step(carry, xs):
        s, last = carry
        out, s = _chunk(*xs, s, last)
        return (s, xs[5][:, -1]), out

    (state, _), out = jax.lax.scan(step, (state, seg[:, 0]), xs)
    out = jnp.moveaxis(out, 0, 1).reshape(bsz, n * chunk, h, v.shape[-1])
    return out[:, :t], state


def _factors(k, b, g, seg):
    """(Gamma [B, t, s, H]: exp(G_t - G_s) for s <= t in the same document, else 0; A^-1 [B, H, t, s], A the unit
    lower triangular I + tril(diag(b) (K K^T * Gamma), -1))."""
    c = k.shape[1]
    cum = jnp.cumsum(g, axis=1)
    keep = (seg[:, :, None] == seg[:, None, :])[..., None] & jnp.tril(jnp.ones((c, c), bool))[None, :, :, None]
    diff = cum[:, :, None] - cum[:, None, :]
    gamma_ts = jnp.where(keep, jnp.exp(jnp.where(keep, diff, 0.0)), 0.0)
    strict = gamma_ts * (1.0 - jnp.eye(c))[None, :, :, None]
    kk = jnp.einsum("bthk,bshk->btsh", k, k) * strict * b[:, :, None]
    return gamma_ts, unit_lower_inverse(jnp.moveaxis(kk, 3, 1))


def unit_lower_inverse(n):
    """(I + N)^-1 for strictly lower triangular N [..., C, C], by forward substitution: row i of the inverse X is
    e_i - N_i X, which reads only the rows of X above i (N is strictly lower), already final. A loop of C
    matrix-vector products rather than jax.scipy.linalg.solve_triangular, whose XLA CPU kernel (LAPACK trsm)
    deadlocks after a few calls when run in a scan (jax 0.10)."""
    c = n.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(c, dtype=n.dtype), n.shape)

    def row(i, inv):
        n_i = jax.lax.dynamic_index_in_dim(n, i, axis=-2, keepdims=True)  # [..., 1, C]
        return jax.lax.dynamic_update_index_in_dim(inv, jax.nn.one_hot(i, c, dtype=n.dtype) - n_i @ inv, i, -2)

    return jax.lax.fori_loop(1, c, row, eye)


def _chunk(q, k, v, b, g, seg, gamma_ts, a_inv, state, prev_seg):
    """One chunk: (out [B, C, H, V], the state after it); `state` (None: empty) belongs to document `prev_seg`;
    (gamma_ts, a_inv): the chunk's `_factors`."""
    q, k, v, b, g = (x.astype(jnp.float32) for x in (q, k, v, b, g))
    cum = jnp.cumsum(g, axis=1)  # G_t [B, C, H]
    rhs = b[..., None] * v  # [B, C, H, V]
    if state is not None:
        sees = (seg == prev_seg[:, None])[:, :, None]  # [B, C, 1]: still in the incoming state's document
        gamma = jnp.where(sees, jnp.exp(cum), 0.0)  # [B, C, H]
        rhs = rhs - (b * gamma)[..., None] * jnp.einsum("bthk,bhkv->bthv", k, state)
    u = jnp.einsum("bhts,bshv->bthv", a_inv, rhs)  # A U = rhs
    out = jnp.einsum("bthk,bshk,btsh,bshv->bthv", q, k, gamma_ts, u)
    if state is None:
        return out, None
    out = out + gamma[..., None] * jnp.einsum("bthk,bhkv->bthv", q, state)
    tail = (seg == seg[:, -1:])[:, :, None]  # the last token's document
    k_end = jnp.where(tail[..., None], k * jnp.exp(cum[:, -1:] - cum)[..., None], 0.0)
    carried = gamma[:, -1][..., None, None] * state
    return out, carried + jnp.einsum("bshk,bshv->bhkv", k_end, u)
