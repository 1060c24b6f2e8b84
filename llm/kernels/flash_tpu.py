"""Flash-attention kernels for TPU (Pallas Mosaic).

TPU kernels are grid-pipelined: Pallas streams one block of each operand into VMEM per grid step, so the
reduction over the other sequence axis is the last ("arbitrary") grid axis and running statistics live in
VMEM scratch across its steps. Block skipping is done twice over:
  * compute: a step outside the band range (`flash_common.kv_range` / `q_range`) does nothing, and only the
    steps outside the mask-free sub-range build a mask;
  * memory: the index_maps clamp the streamed block index into the band range, so skipped steps ask for the
    block already resident and the pipeline issues no DMA for them.
Arrays are moved to [B, heads, T, D] (the last two dims form the (8, 128)-tiled VMEM blocks; head_dim is
padded to a multiple of 128 by the caller). Per-row vectors (lse, delta, segment ids) travel as 2-D tiles
already in the orientation the kernel uses them: columns [T, 1] against [bq, bk] scores, rows [1, T] against
the dk/dv kernel's transposed [bk, bq] scores, so no kernel transposes a vector.

A traced query offset is scalar-prefetched (an int32 [1] in SMEM), so the index_maps' band clamping and the
kernels' block ranges both use it; a static one is compiled in. ALiBi slopes travel as a [H, 1, 1] array
whose (1, 1) block is the program's head slope.

Kernels:
  forward  grid (B, H, q blocks, k blocks): out tile and base-2 log-sum-exp;
  dq       grid (B, H, q blocks, k blocks);
  dk/dv    grid (B, K, k blocks, (H // K) * q blocks): the last axis walks the query blocks of every query
           head sharing the key/value head, so dk/dv accumulate the whole group without atomics.
On CPU these run in the TPU interpreter (`interpret=True` with backend='tpu'): exact but slow.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from llm.kernels import flash_common as fc
from llm.kernels.flash_common import FlashStatic


def _params(st: FlashStatic):
    return dict(
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=pltpu.InterpretParams() if st.interpret else False,
    )


def _grid_spec(st: FlashStatic, grid, in_specs, out_specs, scratch_shapes):
    """The grid; a traced offset is its one scalar-prefetch operand (index_maps get its ref last)."""
    return pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=int(st.q_offset is None), grid=grid,
                                        in_specs=in_specs, out_specs=out_specs, scratch_shapes=scratch_shapes)


def _prefetched(st: FlashStatic, offset) -> list:
    return [offset] if st.q_offset is None else []


def _index_offset(st: FlashStatic, scalars):
    """The query offset inside an index_map, whose trailing arguments are the scalar-prefetch refs."""
    return st.offset(scalars[0] if scalars else None)


def _to_bhtd(x):
    return jnp.swapaxes(x, 1, 2)


def _kv_bounds(st: FlashStatic, i, bq: int, bk: int, segments: bool, off) -> fc.BlockRange:
    return fc.kv_range(i, band=st.band, block_q=bq, block_k=bk, kv_len=st.kv_len, exact=not segments,
                       q_offset=off, q_len=st.q_len)


def _q_bounds(st: FlashStatic, j, bq: int, bk: int, segments: bool, off) -> fc.BlockRange:
    return fc.q_range(j, band=st.band, block_q=bq, block_k=bk, q_len=st.q_len, kv_len=st.kv_len,
                      exact=not segments, q_offset=off)


def _split_refs(refs, st: FlashStatic, n_in: int, segments: bool):
    """(offset ref or None, inputs, q_seg, kv_seg, slopes (refs or None), rest) from a kernel's refs: the
    scalar-prefetched offset, inputs, segment ids, slopes, then outputs and scratch."""
    refs = list(refs)
    off_ref = refs.pop(0) if st.q_offset is None else None
    ins = [refs.pop(0) for _ in range(n_in)]
    qseg_ref, kseg_ref = (refs.pop(0), refs.pop(0)) if segments else (None, None)
    slopes_ref = refs.pop(0) if st.alibi else None
    return off_ref, ins, qseg_ref, kseg_ref, slopes_ref, refs


def _slopes_operand(st: FlashStatic, slopes, head_index):
    """([BlockSpec], [array]) of the ALiBi slopes as [H, 1, 1]; head_index(*grid, *scalars) -> query head."""
    if not st.alibi:
        return [], []
    return [pl.BlockSpec((None, 1, 1), lambda *g: (head_index(*g), 0, 0))], [slopes[:, None, None]]


def _clamp(x, rng: fc.BlockRange):
    """Block index x pulled into [lo, hi - 1]: skipped steps re-request a resident block (no DMA)."""
    return jnp.minimum(jnp.maximum(x, rng.lo), jnp.maximum(rng.hi - 1, rng.lo))


def _run_step(step, active, masked):
    """step(masked) under pl.when: nothing outside the band, the masked variant only where needed."""

    @pl.when(active & masked)
    def _():
        step(True)

    @pl.when(active & jnp.logical_not(masked))
    def _():
        step(False)


def _tile_logits(st: FlashStatic, s, i, j, bq: int, bk: int, off, *, masked: bool, slope=None, q_seg=None,
                 k_seg=None, transposed: bool = False) -> fc.Logits:
    """Logits of the [bq, bk] score tile s (query block i, key block j), or of its [bk, bq] transpose.

    q_seg / k_seg: the blocks' segment ids, already shaped to broadcast against the tile."""
    if not (masked or st.alibi):
        return fc.logits(st, s)  # an interior tile: no slots needed
    shape = (bk, bq) if transposed else (bq, bk)
    q_axis, k_axis = (1, 0) if transposed else (0, 1)
    q_slot = off + i * bq + lax.broadcasted_iota(jnp.int32, shape, q_axis)
    k_slot = j * bk + lax.broadcasted_iota(jnp.int32, shape, k_axis)
    return fc.block_logits(st, s, q_slot, k_slot, masked=masked, slope=slope, q_seg=q_seg, k_seg=k_seg)


def _load(ref):
    return None if ref is None else ref[...]


# --------------------------------------------------------------------------------------------------------
# Forward.


def _fwd_kernel(*refs, st: FlashStatic, segments: bool):
    off_ref, (q_ref, k_ref, v_ref), qseg_ref, kseg_ref, slopes_ref, refs = _split_refs(refs, st, 3, segments)
    o_ref, lse_ref, m_ref, l_ref, acc_ref = refs
    bq, bk = st.blocks.block_q, st.blocks.block_k
    i, j = pl.program_id(2), pl.program_id(3)
    off = st.offset(off_ref)
    rng = _kv_bounds(st, i, bq, bk, segments, off)

    @pl.when(j == 0)
    def _():
        m_ref[...] = jnp.full(m_ref.shape, fc.M_INIT, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def step(masked):
        lg = _tile_logits(st, fc.dot_nt(q_ref[...], k_ref[...]), i, j, bq, bk, off, masked=masked,
                          slope=_load(slopes_ref), q_seg=_load(qseg_ref), k_seg=_load(kseg_ref))
        m_prev = m_ref[...]  # [bq, 1]
        m_new = jnp.maximum(m_prev, lg.row_max(axis=1)[:, None])
        corr = jnp.exp2(m_prev - m_new)
        p = jnp.exp2(lg.scaled() - m_new)
        l_ref[...] = l_ref[...] * corr + jnp.sum(p, axis=1, keepdims=True)
        acc_ref[...] = acc_ref[...] * corr + fc.dot_nn(p.astype(v_ref.dtype), v_ref[...])
        m_ref[...] = m_new

    _run_step(step, (j >= rng.lo) & (j < rng.hi), (j < rng.full_lo) | (j >= rng.full_hi))

    @pl.when(j == pl.num_programs(3) - 1)
    def _():
        l_sum = l_ref[...]
        empty = l_sum == 0.0
        l_safe = jnp.where(empty, 1.0, l_sum)
        o_ref[...] = (acc_ref[...] / l_safe).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(empty, jnp.inf, m_ref[...] + jnp.log(l_safe) * fc.LOG2E)


def forward(st: FlashStatic, q, k, v, q_seg, kv_seg, offset=None, slopes=None):
    """out [B, Tq, H, D] and lse [B, H, Tq] (float32, base 2) for padded inputs.

    offset: int32 [1], the query offset when st.q_offset is None; slopes: float32 [H] when st.alibi."""
    b, tq, h, d = q.shape
    tk, kh = k.shape[1], k.shape[2]
    group = h // kh
    bq, bk = st.blocks.block_q, st.blocks.block_k
    segments = q_seg is not None

    def kv_block(i, j, *scalars):
        return _clamp(j, _kv_bounds(st, i, bq, bk, segments, _index_offset(st, scalars)))

    def kv_index(bi, hi, i, j, *scalars):
        return (bi, hi // group, kv_block(i, j, *scalars), 0)

    in_specs = [pl.BlockSpec((None, None, bq, d), lambda bi, hi, i, j, *_: (bi, hi, i, 0)),
                pl.BlockSpec((None, None, bk, d), kv_index),
                pl.BlockSpec((None, None, bk, d), kv_index)]
    args = [_to_bhtd(q), _to_bhtd(k), _to_bhtd(v)]
    if segments:
        in_specs += [pl.BlockSpec((None, bq, 1), lambda bi, hi, i, j, *_: (bi, i, 0)),
                     pl.BlockSpec((None, 1, bk), lambda bi, hi, i, j, *sc: (bi, 0, kv_block(i, j, *sc)))]
        args += [q_seg[:, :, None], kv_seg[:, None, :]]
    slope_specs, slope_args = _slopes_operand(st, slopes, lambda bi, hi, *_: hi)
    grid_spec = _grid_spec(
        st, (b, h, tq // bq, tk // bk), in_specs + slope_specs,
        [pl.BlockSpec((None, None, bq, d), lambda bi, hi, i, j, *_: (bi, hi, i, 0)),
         pl.BlockSpec((None, None, bq, 1), lambda bi, hi, i, j, *_: (bi, hi, i, 0))],
        [pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, d), jnp.float32)])
    out, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, st=st, segments=segments),
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct((b, h, tq, d), q.dtype), jax.ShapeDtypeStruct((b, h, tq, 1), jnp.float32)],
        name="flash_attention_fwd_tpu",
        **_params(st),
    )(*_prefetched(st, offset), *args, *slope_args)
    return _to_bhtd(out), lse[..., 0]


# --------------------------------------------------------------------------------------------------------
# Backward.


def _dq_kernel(*refs, st: FlashStatic, segments: bool):
    off_ref, ins, qseg_ref, kseg_ref, slopes_ref, (dq_ref, acc_ref) = _split_refs(refs, st, 6, segments)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
    bq, bk = st.blocks.block_q_dq, st.blocks.block_k_dq
    i, j = pl.program_id(2), pl.program_id(3)
    off = st.offset(off_ref)
    rng = _kv_bounds(st, i, bq, bk, segments, off)

    @pl.when(j == 0)
    def _():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def step(masked):
        k = k_ref[...]
        lg = _tile_logits(st, fc.dot_nt(q_ref[...], k), i, j, bq, bk, off, masked=masked,
                          slope=_load(slopes_ref), q_seg=_load(qseg_ref), k_seg=_load(kseg_ref))
        p = jnp.exp2(lg.scaled() - lse_ref[...])
        dp = fc.dot_nt(do_ref[...], v_ref[...])
        ds = fc.softcap_grad(lg, p * (dp - delta_ref[...]))
        acc_ref[...] += fc.dot_nn(ds.astype(k.dtype), k)

    _run_step(step, (j >= rng.lo) & (j < rng.hi), (j < rng.full_lo) | (j >= rng.full_hi))

    @pl.when(j == pl.num_programs(3) - 1)
    def _():
        dq_ref[...] = (acc_ref[...] * st.scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, st: FlashStatic, segments: bool, n_q: int):
    off_ref, ins, qseg_ref, kseg_ref, slopes_ref, refs = _split_refs(refs, st, 6, segments)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
    dk_ref, dv_ref, dk_acc, dv_acc = refs
    bq, bk = st.blocks.block_q_dkv, st.blocks.block_k_dkv
    j, t = pl.program_id(2), pl.program_id(3)
    i = t % n_q  # the query block; t // n_q is the query head within the group
    off = st.offset(off_ref)
    rng = _q_bounds(st, j, bq, bk, segments, off)

    @pl.when(t == 0)
    def _():
        dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

    def step(masked):
        q, do = q_ref[...], do_ref[...]
        lg = _tile_logits(st, fc.dot_nt(k_ref[...], q), i, j, bq, bk, off, masked=masked,  # [bk, bq]
                          slope=_load(slopes_ref), q_seg=_load(qseg_ref), k_seg=_load(kseg_ref), transposed=True)
        p = jnp.exp2(lg.scaled() - lse_ref[...])  # lse, delta: [1, bq] rows
        dv_acc[...] += fc.dot_nn(p.astype(do.dtype), do)
        dp = fc.dot_nt(v_ref[...], do)
        ds = fc.softcap_grad(lg, p * (dp - delta_ref[...]))
        dk_acc[...] += fc.dot_nn(ds.astype(q.dtype), q)

    _run_step(step, (i >= rng.lo) & (i < rng.hi), (i < rng.full_lo) | (i >= rng.full_hi))

    @pl.when(t == pl.num_programs(3) - 1)
    def _():
        dk_ref[...] = (dk_acc[...] * st.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def backward(st: FlashStatic, q, k, v, q_seg, kv_seg, do, lse, delta, offset=None, slopes=None):
    """dq, dk, dv for padded inputs; lse and delta [B, H, Tq] float32 (lse base 2, +inf on empty rows);
    offset and slopes as in `forward`."""
    b, tq, h, d = q.shape
    tk, kh = k.shape[1], k.shape[2]
    group = h // kh
    segments = q_seg is not None
    q_t, k_t, v_t, do_t = _to_bhtd(q), _to_bhtd(k), _to_bhtd(v), _to_bhtd(do)
    blocks = st.blocks

    # dq: grid (B, H, q blocks, k blocks).
    bq, bk = blocks.block_q_dq, blocks.block_k_dq

    def kv_block(i, j, *scalars):
        return _clamp(j, _kv_bounds(st, i, bq, bk, segments, _index_offset(st, scalars)))

    def kv_index(bi, hi, i, j, *scalars):
        return (bi, hi // group, kv_block(i, j, *scalars), 0)

    q_tile = pl.BlockSpec((None, None, bq, d), lambda bi, hi, i, j, *_: (bi, hi, i, 0))
    row_tile = pl.BlockSpec((None, None, bq, 1), lambda bi, hi, i, j, *_: (bi, hi, i, 0))
    kv_tile = pl.BlockSpec((None, None, bk, d), kv_index)
    in_specs = [q_tile, kv_tile, kv_tile, q_tile, row_tile, row_tile]
    args = [q_t, k_t, v_t, do_t, lse[..., None], delta[..., None]]
    if segments:
        in_specs += [pl.BlockSpec((None, bq, 1), lambda bi, hi, i, j, *_: (bi, i, 0)),
                     pl.BlockSpec((None, 1, bk), lambda bi, hi, i, j, *sc: (bi, 0, kv_block(i, j, *sc)))]
        args += [q_seg[:, :, None], kv_seg[:, None, :]]
    slope_specs, slope_args = _slopes_operand(st, slopes, lambda bi, hi, *_: hi)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, st=st, segments=segments),
        grid_spec=_grid_spec(st, (b, h, tq // bq, tk // bk), in_specs + slope_specs, q_tile,
                             [pltpu.VMEM((bq, d), jnp.float32)]),
        out_shape=jax.ShapeDtypeStruct(q_t.shape, q.dtype),
        name="flash_attention_dq_tpu",
        **_params(st),
    )(*_prefetched(st, offset), *args, *slope_args)

    # dk, dv: grid (B, K, k blocks, group * q blocks).
    bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
    n_q = tq // bq

    def q_index(bi, ki, j, t, *scalars):
        i = _clamp(t % n_q, _q_bounds(st, j, bq, bk, segments, _index_offset(st, scalars)))
        return bi, ki * group + t // n_q, i

    def row_index(*g):
        bi, hi, i = q_index(*g)
        return bi, hi, 0, i

    q_tile = pl.BlockSpec((None, None, bq, d), lambda *g: (*q_index(*g), 0))
    row_tile = pl.BlockSpec((None, None, 1, bq), row_index)
    kv_tile = pl.BlockSpec((None, None, bk, d), lambda bi, ki, j, t, *_: (bi, ki, j, 0))
    in_specs = [q_tile, kv_tile, kv_tile, q_tile, row_tile, row_tile]
    args = [q_t, k_t, v_t, do_t, lse[:, :, None, :], delta[:, :, None, :]]
    if segments:
        in_specs += [pl.BlockSpec((None, 1, bq), lambda *g: (g[0], 0, q_index(*g)[2])),
                     pl.BlockSpec((None, bk, 1), lambda bi, ki, j, t, *_: (bi, j, 0))]
        args += [q_seg[:, None, :], kv_seg[:, :, None]]
    slope_specs, slope_args = _slopes_operand(st, slopes, lambda bi, ki, j, t, *_: ki * group + t // n_q)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, st=st, segments=segments, n_q=n_q),
        grid_spec=_grid_spec(st, (b, kh, tk // bk, group * n_q), in_specs + slope_specs, [kv_tile, kv_tile],
                             [pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)]),
        out_shape=[jax.ShapeDtypeStruct(k_t.shape, k.dtype), jax.ShapeDtypeStruct(v_t.shape, v.dtype)],
        name="flash_attention_dkv_tpu",
        **_params(st),
    )(*_prefetched(st, offset), *args, *slope_args)
    return _to_bhtd(dq), _to_bhtd(dk), _to_bhtd(dv)
