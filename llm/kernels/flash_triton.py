"""Flash-attention kernels in the GPU style of Pallas: lowered to Triton on GPU, or run by Pallas' interpreter.

One program instance owns one tile of the output and loops over the other axis with `lax.fori_loop`, whose
bounds come from `flash_common.kv_range` / `q_range`: blocks outside the causal/window band are never
loaded. Each loop is split in three, [lo, full_lo) masked, [full_lo, full_hi) unmasked, [full_hi, hi)
masked, so interior blocks pay for no mask arithmetic (on GPU each range becomes its own pipelined loop).

Kernels (arrays stay in the [B, T, heads, D] layout; BlockSpecs squeeze batch and head):
  forward  grid (q blocks, B, H): out tile [block_q, D] and its base-2 log-sum-exp;
  dq       grid (q blocks, B, H): recomputes probabilities from lse, accumulates dq over key blocks;
  dk/dv    grid (k blocks, B, K): one key/value head, looping over the H // K query heads that share it
           (so GQA/MQA never repeat K/V, and dk/dv need no atomics or reduction afterwards).
Query head h reads key/value head h // (H // K) through the index_map. Causal grids run the query blocks
in reverse, heaviest first, so the short diagonal blocks fill the tail of the launch. Optional operands
follow the inputs: segment ids, a traced query offset (int32 [1]; the loop bounds are computed from it at run
time) and ALiBi slopes (float32 [H], one scalar read per head).

Shape suffixes inside kernels: Q = rows of the query tile, K = rows of the key/value tile, D = head dim.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from llm.kernels import flash_common as fc
from llm.kernels.flash_common import FlashStatic


def _compiler_params(st: FlashStatic, *, bwd: bool):
    if st.backend != "triton":
        return None
    warps = st.num_warps_bwd if bwd else st.num_warps
    stages = st.num_stages_bwd if bwd else st.num_stages
    return plgpu.CompilerParams(num_warps=warps, num_stages=stages)


def _loop(lo, hi, body, carry):
    if isinstance(lo, int) and isinstance(hi, int) and hi <= lo:
        return carry  # statically empty (e.g. no masked head without a window): emit no loop at all
    return lax.fori_loop(lo, hi, body, carry)


def _three_loops(rng: fc.BlockRange, body, carry):
    """Run body(j, carry, masked) over the masked head, unmasked middle and masked tail of a block range."""
    carry = _loop(rng.lo, rng.full_lo, functools.partial(body, masked=True), carry)
    carry = _loop(rng.full_lo, rng.full_hi, functools.partial(body, masked=False), carry)
    return _loop(rng.full_hi, rng.hi, functools.partial(body, masked=True), carry)


def _outer_block(pid, n_blocks: int, reverse: bool):
    return n_blocks - 1 - pid if reverse else pid


@dataclasses.dataclass(frozen=True)
class _Extras:
    """The optional operands' refs (None when absent), in the order the kernels receive them."""

    q_seg: Any = None
    kv_seg: Any = None
    offset: Any = None  # int32 [1]: the traced query offset
    slopes: Any = None  # float32 [H]: ALiBi slopes


def _split_refs(refs, n_in: int, st: FlashStatic, segments: bool):
    """(inputs, _Extras, outputs) from a kernel's flat ref list: inputs, optional operands, outputs."""
    ins, rest = refs[:n_in], list(refs[n_in:])

    def take(present: bool):
        return rest.pop(0) if present else None

    q_seg, kv_seg = take(segments), take(segments)
    return ins, _Extras(q_seg, kv_seg, take(st.q_offset is None), take(st.alibi)), rest


def _extra_operands(st: FlashStatic, seg_specs, q_seg, kv_seg, offset, slopes):
    """BlockSpecs and arrays of the optional operands: segment ids (`seg_specs`), the traced offset, slopes."""
    specs, args = [], []
    if q_seg is not None:
        specs, args = list(seg_specs), [q_seg, kv_seg]
    if st.q_offset is None:
        specs.append(pl.BlockSpec((1,), lambda *_: (0,)))
        args.append(offset)
    if st.alibi:
        specs.append(pl.BlockSpec(slopes.shape, lambda *_: (0,)))
        args.append(slopes)
    return specs, args


def _slope(ex: _Extras, head):
    return None if ex.slopes is None else ex.slopes[head]


def _kv_block_logits(st: FlashStatic, q_QD, q_slot, q_seg, slope, k_ref, v_ref, kseg_ref, j, bk: int,
                     masked: bool):
    """Key block j's logits against the resident queries ([bq, bk], masked on boundary blocks), and its K, V."""
    start = pl.multiple_of(j * bk, bk)
    k_KD = k_ref[pl.ds(start, bk), :]
    v_KD = v_ref[pl.ds(start, bk), :]
    s_QK = fc.dot_nt(q_QD, k_KD)
    if not (masked or st.alibi):
        return fc.logits(st, s_QK), k_KD, v_KD  # an interior block: no slots needed
    k_slot = start + jnp.arange(bk, dtype=jnp.int32)
    segments = q_seg is not None and masked
    lg = fc.block_logits(st, s_QK, q_slot[:, None], k_slot[None, :], masked=masked, slope=slope,
                         q_seg=q_seg[:, None] if segments else None,
                         k_seg=kseg_ref[pl.ds(start, bk)][None, :] if segments else None)
    return lg, k_KD, v_KD


# --------------------------------------------------------------------------------------------------------
# Forward.


def _fwd_kernel(*refs, st: FlashStatic, n_q_blocks: int, segments: bool):
    (q_ref, k_ref, v_ref), ex, (o_ref, lse_ref) = _split_refs(refs, 3, st, segments)
    bq, bk = st.blocks.block_q, st.blocks.block_k
    i = _outer_block(pl.program_id(0), n_q_blocks, st.causal)
    off = st.offset(ex.offset)
    slope = _slope(ex, pl.program_id(2))
    q_QD = q_ref[...]
    q_slot = off + i * bq + jnp.arange(bq, dtype=jnp.int32)
    q_seg = ex.q_seg[...] if segments else None

    def body(j, carry, masked):
        acc_QD, m_Q, l_Q = carry
        lg, _, v_KD = _kv_block_logits(st, q_QD, q_slot, q_seg, slope, k_ref, v_ref, ex.kv_seg, j, bk, masked)
        m_new = jnp.maximum(m_Q, lg.row_max(axis=1))
        corr = jnp.exp2(m_Q - m_new)
        p_QK = jnp.exp2(lg.scaled() - m_new[:, None])
        l_Q = l_Q * corr + jnp.sum(p_QK, axis=1)
        acc_QD = acc_QD * corr[:, None] + fc.dot_nn(p_QK.astype(v_KD.dtype), v_KD)
        return acc_QD, m_new, l_Q

    rng = fc.kv_range(i, band=st.band, block_q=bq, block_k=bk, kv_len=st.kv_len, exact=not segments,
                      q_offset=off, q_len=st.q_len)
    init = (jnp.zeros(q_QD.shape, jnp.float32), jnp.full((bq,), fc.M_INIT, jnp.float32),
            jnp.zeros((bq,), jnp.float32))
    acc_QD, m_Q, l_Q = _three_loops(rng, body, init)
    empty = l_Q == 0.0  # no visible key: output 0 and lse = +inf
    l_safe = jnp.where(empty, 1.0, l_Q)
    o_ref[...] = (acc_QD * (1.0 / l_safe)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, jnp.inf, m_Q + jnp.log(l_safe) * fc.LOG2E)


def forward(st: FlashStatic, q, k, v, q_seg, kv_seg, offset=None, slopes=None):
    """out [B, Tq, H, D] (q's dtype) and lse [B, H, Tq] (float32, base 2) for padded inputs.

    offset: int32 [1], the query offset when st.q_offset is None; slopes: float32 [H] when st.alibi."""
    b, tq, h, d = q.shape
    tk, kh = k.shape[1], k.shape[2]
    group = h // kh
    bq = st.blocks.block_q
    n_q = tq // bq
    segments = q_seg is not None

    def qi(i):
        return _outer_block(i, n_q, st.causal)

    in_specs = [
        pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, qi(i), hi, 0)),
        pl.BlockSpec((None, tk, None, d), lambda i, bi, hi: (bi, 0, hi // group, 0)),
        pl.BlockSpec((None, tk, None, d), lambda i, bi, hi: (bi, 0, hi // group, 0)),
    ]
    seg_specs = [pl.BlockSpec((None, bq), lambda i, bi, hi: (bi, qi(i))),
                 pl.BlockSpec((None, tk), lambda i, bi, hi: (bi, 0))]
    extra_specs, extra_args = _extra_operands(st, seg_specs, q_seg, kv_seg, offset, slopes)
    out_specs = [pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, qi(i), hi, 0)),
                 pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, qi(i)))]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, tq), jnp.float32)]
    kernel = functools.partial(_fwd_kernel, st=st, n_q_blocks=n_q, segments=segments)
    return pl.pallas_call(
        kernel,
        grid=(n_q, b, h),
        in_specs=in_specs + extra_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=_compiler_params(st, bwd=False),
        interpret=st.interpret,
        cost_estimate=_cost(st, q, k, passes=1),
        name="flash_attention_fwd",
    )(q, k, v, *extra_args)


# --------------------------------------------------------------------------------------------------------
# Backward: dq.


def _dq_kernel(*refs, st: FlashStatic, n_q_blocks: int, segments: bool):
    ins, ex, (dq_ref,) = _split_refs(refs, 6, st, segments)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
    bq, bk = st.blocks.block_q_dq, st.blocks.block_k_dq
    i = _outer_block(pl.program_id(0), n_q_blocks, st.causal)
    off = st.offset(ex.offset)
    slope = _slope(ex, pl.program_id(2))
    q_QD, do_QD = q_ref[...], do_ref[...]
    lse_Q, delta_Q = lse_ref[...], delta_ref[...]
    q_slot = off + i * bq + jnp.arange(bq, dtype=jnp.int32)
    q_seg = ex.q_seg[...] if segments else None

    def body(j, dq_QD, masked):
        lg, k_KD, v_KD = _kv_block_logits(st, q_QD, q_slot, q_seg, slope, k_ref, v_ref, ex.kv_seg, j, bk,
                                          masked)
        p_QK = jnp.exp2(lg.scaled() - lse_Q[:, None])
        dp_QK = fc.dot_nt(do_QD, v_KD)
        ds_QK = fc.softcap_grad(lg, p_QK * (dp_QK - delta_Q[:, None]))
        return dq_QD + fc.dot_nn(ds_QK.astype(k_KD.dtype), k_KD)

    rng = fc.kv_range(i, band=st.band, block_q=bq, block_k=bk, kv_len=st.kv_len, exact=not segments,
                      q_offset=off, q_len=st.q_len)
    dq_QD = _three_loops(rng, body, jnp.zeros(q_QD.shape, jnp.float32))
    dq_ref[...] = (dq_QD * st.scale).astype(dq_ref.dtype)


# --------------------------------------------------------------------------------------------------------
# Backward: dk and dv, one key/value head per program, looping over the query heads of its group.


def _dkv_kernel(*refs, st: FlashStatic, group: int, segments: bool):
    ins, ex, (dk_ref, dv_ref) = _split_refs(refs, 6, st, segments)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins  # q, do: [Tq, G, D]; lse, delta: [G, Tq]
    bq, bk = st.blocks.block_q_dkv, st.blocks.block_k_dkv
    j, kv_head = pl.program_id(0), pl.program_id(2)
    off = st.offset(ex.offset)
    k_KD, v_KD = k_ref[...], v_ref[...]
    k_slot = j * bk + jnp.arange(bk, dtype=jnp.int32)
    k_seg = ex.kv_seg[...][:, None] if segments else None
    rng = fc.q_range(j, band=st.band, block_q=bq, block_k=bk, q_len=st.q_len, kv_len=st.kv_len,
                     exact=not segments, q_offset=off)

    def head(g, carry):
        slope = _slope(ex, kv_head * group + g)

        def body(i, carry, masked):
            dk_KD, dv_KD = carry
            start = pl.multiple_of(i * bq, bq)
            q_QD = q_ref[pl.ds(start, bq), g, :]
            do_QD = do_ref[pl.ds(start, bq), g, :]
            lse_Q = lse_ref[g, pl.ds(start, bq)]
            delta_Q = delta_ref[g, pl.ds(start, bq)]
            # Transposed scores [bk, bq], so both accumulating matmuls take their operands as stored.
            s_KQ = fc.dot_nt(k_KD, q_QD)
            if masked or st.alibi:
                q_slot = off + start + jnp.arange(bq, dtype=jnp.int32)
                q_seg = ex.q_seg[pl.ds(start, bq)][None, :] if segments and masked else None
                lg = fc.block_logits(st, s_KQ, q_slot[None, :], k_slot[:, None], masked=masked, slope=slope,
                                     q_seg=q_seg, k_seg=k_seg)
            else:
                lg = fc.logits(st, s_KQ)  # an interior block: no slots needed
            p_KQ = jnp.exp2(lg.scaled() - lse_Q[None, :])
            dv_KD = dv_KD + fc.dot_nn(p_KQ.astype(do_QD.dtype), do_QD)
            dp_KQ = fc.dot_nt(v_KD, do_QD)
            ds_KQ = fc.softcap_grad(lg, p_KQ * (dp_KQ - delta_Q[None, :]))
            dk_KD = dk_KD + fc.dot_nn(ds_KQ.astype(q_QD.dtype), q_QD)
            return dk_KD, dv_KD

        return _three_loops(rng, body, carry)

    zeros = jnp.zeros(k_KD.shape, jnp.float32)
    if group == 1:
        dk_KD, dv_KD = head(0, (zeros, zeros))
    else:
        dk_KD, dv_KD = lax.fori_loop(0, group, head, (zeros, zeros))
    dk_ref[...] = (dk_KD * st.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_KD.astype(dv_ref.dtype)


def backward(st: FlashStatic, q, k, v, q_seg, kv_seg, do, lse, delta, offset=None, slopes=None):
    """dq, dk, dv for padded inputs; lse and delta [B, H, Tq] float32 (lse base 2, +inf on empty rows);
    offset and slopes as in `forward`."""
    b, tq, h, d = q.shape
    tk, kh = k.shape[1], k.shape[2]
    group = h // kh
    segments = q_seg is not None
    blocks = st.blocks
    params = _compiler_params(st, bwd=True)

    # dq: one query block of one head per program.
    bq, n_q = blocks.block_q_dq, tq // blocks.block_q_dq

    def qi(i):
        return _outer_block(i, n_q, st.causal)

    q_tile = pl.BlockSpec((None, bq, None, d), lambda i, bi, hi: (bi, qi(i), hi, 0))
    kv_full = pl.BlockSpec((None, tk, None, d), lambda i, bi, hi: (bi, 0, hi // group, 0))
    row_tile = pl.BlockSpec((None, None, bq), lambda i, bi, hi: (bi, hi, qi(i)))
    in_specs = [q_tile, kv_full, kv_full, q_tile, row_tile, row_tile]
    seg_specs = [pl.BlockSpec((None, bq), lambda i, bi, hi: (bi, qi(i))),
                 pl.BlockSpec((None, tk), lambda i, bi, hi: (bi, 0))]
    extra_specs, extra_args = _extra_operands(st, seg_specs, q_seg, kv_seg, offset, slopes)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, st=st, n_q_blocks=n_q, segments=segments),
        grid=(n_q, b, h),
        in_specs=in_specs + extra_specs,
        out_specs=q_tile,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params,
        interpret=st.interpret,
        cost_estimate=_cost(st, q, k, passes=1.5),
        name="flash_attention_dq",
    )(q, k, v, do, lse, delta, *extra_args)

    # dk, dv: one key block of one key/value head per program; the group's query heads are one block.
    bk, n_k = blocks.block_k_dkv, tk // blocks.block_k_dkv
    kv_tile = pl.BlockSpec((None, bk, None, d), lambda j, bi, kj: (bi, j, kj, 0))
    q_group = pl.BlockSpec((None, tq, group, d), lambda j, bi, kj: (bi, 0, kj, 0))
    row_group = pl.BlockSpec((None, group, tq), lambda j, bi, kj: (bi, kj, 0))
    in_specs = [q_group, kv_tile, kv_tile, q_group, row_group, row_group]
    seg_specs = [pl.BlockSpec((None, tq), lambda j, bi, kj: (bi, 0)),
                 pl.BlockSpec((None, bk), lambda j, bi, kj: (bi, j))]
    extra_specs, extra_args = _extra_operands(st, seg_specs, q_seg, kv_seg, offset, slopes)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, st=st, group=group, segments=segments),
        grid=(n_k, b, kh),
        in_specs=in_specs + extra_specs,
        out_specs=[kv_tile, kv_tile],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params,
        interpret=st.interpret,
        cost_estimate=_cost(st, q, k, passes=2),
        name="flash_attention_dkv",
    )(q, k, v, do, lse, delta, *extra_args)
    return dq, dk, dv


def _cost(st: FlashStatic, q, k, *, passes: float) -> pl.CostEstimate:
    """Rough cost for XLA's scheduler: `passes` units of 2 matmuls over the visible part of the scores."""
    b, tq, h, d = q.shape
    tk = k.shape[1]
    frac = 0.5 if st.causal else 1.0
    pairs = b * h * tq * tk * frac
    if st.window is not None:
        pairs = min(pairs, b * h * tq * min(tk, st.window * (1 if st.causal else 2)))
    itemsize = jnp.dtype(q.dtype).itemsize
    return pl.CostEstimate(flops=int(4 * pairs * d * passes), transcendentals=int(pairs * passes),
                           bytes_accessed=int(itemsize * (2 * q.size + 2 * k.size)))
