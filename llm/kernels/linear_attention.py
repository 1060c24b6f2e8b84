"""A Pallas kernel for chunked gated linear attention (linear attention, RetNet, GLA, Mamba-2's SSD), forward and
backward, tied by `jax.custom_vjp`. It computes what `llm.ops.mixers.gla_chunked` defines:

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,    o_t = S_t^T q_t

One program per (batch, head) walks the sequence chunk by chunk (`chunk` tokens, 16 by default) and carries the
state [K, V] in registers, as flash-linear-attention's fused-chunk kernels do. Inside a chunk it takes the scores
column by column, q_t . (exp(G_t - G_s) * k_s) for s <= t, with G the decay's running sum within the chunk, so
every exponent it forms is <= 0: nothing overflows however strong the decay (the factorised q exp(G), k exp(-G)
trick would overflow). Across chunks: o += (q * exp(G)) S, S <- exp(G_C) S + (k * exp(G_C - G))^T v.

The forward keeps the state at each chunk's start (the backward's residual: [B, H, T / chunk, K, V]); the backward
walks the chunks in reverse with the state's gradient and returns dq, dk, dv and the gradient of G, from which
autodiff of the running sum gives dg:

    dG_t = q_t * dq_t - k_t * dk_t  (+ sum_v dS_C * S_C on a chunk's last token)

Lowerings: Pallas' Triton path on GPU, Pallas' interpreter elsewhere (`interpret`, the default off GPU; tested on
CPU against the chunked jnp form). Not covered (callers use the jnp form): segment ids (packed documents).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

DEFAULT_CHUNK = 16


def gla_pallas(q, k, v, g, *, chunk: int = DEFAULT_CHUNK, state=None, interpret: bool | None = None):
    """(out [B, T, H, V] float32, final state [B, H, K, V]) for q, k [B, T, H, K], v [B, T, H, V], g [B, T, H, K]
    or [B, T, H, 1] (log decays <= 0), `state` the state before token 0 (None: zeros)."""
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    pad = -t % chunk

    def heads_first(x):  # [B, T, H, D] -> [B, H, T + pad, D] float32
        x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, pad), (0, 0), (0, 0)))
        return jnp.moveaxis(x, 2, 1)

    q_, k_, v_, g_ = (heads_first(x) for x in (q, k, v, g))
    n = (t + pad) // chunk
    big = jnp.cumsum(g_.reshape(b, h, n, chunk, g_.shape[-1]), axis=3).reshape(g_.shape)  # G within each chunk
    s0 = jnp.zeros((b, h, dk, dv), jnp.float32) if state is None else state.astype(jnp.float32)
    out, final = _gla(q_, k_, v_, big, s0, chunk, interpret)
    return jnp.moveaxis(out, 1, 2)[:, :t], final


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _gla(q, k, v, big, s0, chunk, interpret):
    out, final, _ = _forward(q, k, v, big, s0, chunk, interpret)
    return out, final


def _gla_fwd(q, k, v, big, s0, chunk, interpret):
    out, final, states = _forward(q, k, v, big, s0, chunk, interpret)
    return (out, final), (q, k, v, big, states)


def _gla_bwd(chunk, interpret, res, cotangents):
    q, k, v, big, states = res
    d_out, d_final = cotangents
    dq, dk, dv, d_last, ds0 = _backward(q, k, v, big, states, d_out, d_final, chunk, interpret)
    d_big = q * dq - k * dk
    if big.shape[-1] == 1:
        d_big = jnp.sum(d_big, axis=-1, keepdims=True)
    b, h, tp, kg = big.shape
    n = tp // chunk
    d_big = d_big.reshape(b, h, n, chunk, kg).at[:, :, :, -1].add(d_last).reshape(big.shape)
    return dq, dk, dv, d_big, ds0


_gla.defvjp(_gla_fwd, _gla_bwd)


# ---- kernels --------------------------------------------------------------------------------------------


def _dot(a, b, contract):
    """a . b contracting dims `contract` = (a's, b's), float32 accumulation (no transposes materialised)."""
    return lax.dot_general(a, b, ((contract[0], contract[1]), ((), ())), preferred_element_type=jnp.float32)


def _column(refs, row, s, big_c):
    """Token s of the chunk (absolute row `row`): its key [1, K], value [1, V], and exp(G_t - G_s) masked to
    t >= s, [C, Kg] (the exponent is masked before exp, so it is <= 0 wherever it is evaluated)."""
    k_ref, v_ref, g_ref = refs
    k_s = k_ref[pl.ds(row, 1), :]
    v_s = v_ref[pl.ds(row, 1), :]
    g_s = g_ref[pl.ds(row, 1), :]
    later = lax.broadcasted_iota(jnp.int32, big_c.shape, 0) >= s
    decay = jnp.where(later, jnp.exp(jnp.where(later, big_c - g_s, 0.0)), 0.0)
    return k_s, v_s, decay


def _fwd_kernel(q_ref, k_ref, v_ref, g_ref, s0_ref, o_ref, final_ref, states_ref, *, chunk: int, n: int):
    def step(c, state):
        start = pl.multiple_of(c * chunk, chunk)
        rows = pl.ds(start, chunk)
        q, k, v, big = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :], g_ref[rows, :]
        last = g_ref[pl.ds(start + chunk - 1, 1), :]  # G at the chunk's end [1, Kg]
        states_ref[c] = state
        out = _dot(q * jnp.exp(big), state, ((1,), (0,)))

        def column(s, out):
            k_s, v_s, decay = _column((k_ref, v_ref, g_ref), start + s, s, big)
            score = jnp.sum(q * decay * k_s, axis=1, keepdims=True)  # [C, 1]: scores[:, s]
            return out + score * v_s

        o_ref[rows, :] = lax.fori_loop(0, chunk, column, out)
        return jnp.exp(jnp.transpose(last)) * state + _dot(k * jnp.exp(last - big), v, ((0,), (0,)))

    final_ref[...] = lax.fori_loop(0, n, step, s0_ref[...])


def _bwd_kernel(q_ref, k_ref, v_ref, g_ref, states_ref, do_ref, dfinal_ref,
                dq_ref, dk_ref, dv_ref, dlast_ref, ds0_ref, *, chunk: int, n: int):
    def step(i, d_state):
        c = n - 1 - i
        start = pl.multiple_of(c * chunk, chunk)
        rows = pl.ds(start, chunk)
        q, k, v, big, d_out = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :], g_ref[rows, :], do_ref[rows, :]
        last = g_ref[pl.ds(start + chunk - 1, 1), :]
        state = states_ref[c]
        k_end = k * jnp.exp(last - big)  # [C, K]
        new_state = jnp.exp(jnp.transpose(last)) * state + _dot(k_end, v, ((0,), (0,)))
        d_last = jnp.sum(d_state * new_state, axis=1, keepdims=True)  # [K, 1]
        dlast_ref[pl.ds(c, 1), :] = (jnp.sum(d_last, keepdims=True) if last.shape[1] == 1
                                     else jnp.transpose(d_last))
        dq = _dot(d_out, state, ((1,), (1,))) * jnp.exp(big)

        def column(s, dq):
            row = start + s
            k_s, v_s, decay = _column((k_ref, v_ref, g_ref), row, s, big)
            score = jnp.sum(q * decay * k_s, axis=1, keepdims=True)  # [C, 1]
            d_score = jnp.sum(d_out * v_s, axis=1, keepdims=True)  # [C, 1] (only used times the masked decay)
            dk_ref[pl.ds(row, 1), :] = jnp.sum(d_score * q * decay, axis=0, keepdims=True)
            dv_ref[pl.ds(row, 1), :] = jnp.sum(score * d_out, axis=0, keepdims=True)
            return dq + d_score * decay * k_s

        dq_ref[rows, :] = lax.fori_loop(0, chunk, column, dq)
        dk_ref[rows, :] = dk_ref[rows, :] + _dot(v, d_state, ((1,), (1,))) * jnp.exp(last - big)
        dv_ref[rows, :] = dv_ref[rows, :] + _dot(k_end, d_state, ((1,), (0,)))
        return jnp.exp(jnp.transpose(last)) * d_state + _dot(q * jnp.exp(big), d_out, ((0,), (0,)))

    ds0_ref[...] = lax.fori_loop(0, n, step, dfinal_ref[...])


def _rows(length, *widths):
    """Per-(batch, head) blocks of arrays [B, H, length, width]: the whole sequence, walked inside the kernel."""
    return [pl.BlockSpec((None, None, length, w), lambda bi, hi: (bi, hi, 0, 0)) for w in widths]


def _blocks(*shapes):
    """Per-(batch, head) blocks of arrays [B, H, *shape] (states)."""
    def index(zeros):
        return lambda bi, hi: (bi, hi, *zeros)

    return [pl.BlockSpec((None, None, *shape), index((0,) * len(shape))) for shape in shapes]


def _forward(q, k, v, big, s0, chunk, interpret):
    b, h, tp, dk = q.shape
    dv, kg, n = v.shape[-1], big.shape[-1], tp // chunk
    return pl.pallas_call(
        functools.partial(_fwd_kernel, chunk=chunk, n=n),
        grid=(b, h),
        in_specs=_rows(tp, dk, dk, dv, kg) + _blocks((dk, dv)),
        out_specs=_rows(tp, dv) + _blocks((dk, dv), (n, dk, dv)),
        out_shape=[jax.ShapeDtypeStruct((b, h, tp, dv), jnp.float32),
                   jax.ShapeDtypeStruct((b, h, dk, dv), jnp.float32),
                   jax.ShapeDtypeStruct((b, h, n, dk, dv), jnp.float32)],
        interpret=interpret,
        name="gla_chunked_fwd",
    )(q, k, v, big, s0)


def _backward(q, k, v, big, states, d_out, d_final, chunk, interpret):
    b, h, tp, dk = q.shape
    dv, kg, n = v.shape[-1], big.shape[-1], tp // chunk
    return pl.pallas_call(
        functools.partial(_bwd_kernel, chunk=chunk, n=n),
        grid=(b, h),
        in_specs=_rows(tp, dk, dk, dv, kg) + _blocks((n, dk, dv)) + _rows(tp, dv) + _blocks((dk, dv)),
        out_specs=_rows(tp, dk, dk, dv) + _rows(n, kg) + _blocks((dk, dv)),
        out_shape=[jax.ShapeDtypeStruct((b, h, tp, dk), jnp.float32),
                   jax.ShapeDtypeStruct((b, h, tp, dk), jnp.float32),
                   jax.ShapeDtypeStruct((b, h, tp, dv), jnp.float32),
                   jax.ShapeDtypeStruct((b, h, n, kg), jnp.float32),
                   jax.ShapeDtypeStruct((b, h, dk, dv), jnp.float32)],
        interpret=interpret,
        name="gla_chunked_bwd",
    )(q, k, v, big, states, d_out.astype(jnp.float32), d_final.astype(jnp.float32))
