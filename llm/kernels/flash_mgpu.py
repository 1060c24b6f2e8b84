"""Hopper flash-attention forward through Pallas' Mosaic GPU backend (wgmma + TMA + warp specialisation).

Forward only: the backward pass stays the Triton dq and dk/dv kernels, so this kernel saves exactly what
`flash_triton.forward` saves: out [B, Tq, H, D] in q's dtype and lse [B, H, Tq] in float32, base 2, +inf for
a row that saw no key (see `flash_common`).

Layout of one CTA (grid: query heads x query tiles x batch), three warpgroups:
  * two consumer warpgroups, each owning `block_q` query rows (a CTA tile is 2 * block_q rows). Each keeps
    its Q tile in shared memory, its f32 output accumulator and softmax state in registers, and per key
    block issues S = Q K^T (wgmma, both operands in shared memory), the online softmax in base 2 (exp2 with
    the scale folded into one FMA) and O += P V (wgmma, P from registers, V from shared memory);
  * one producer warpgroup (few registers) that streams K and V blocks by TMA into a `stages`-deep ring of
    shared-memory slots, waiting on per-slot "consumed" barriers before refilling a slot.
A "schedule" barrier makes the two consumers alternate: while one runs its softmax the other's matmuls
own the tensor cores. Causal tiles skip the key blocks above the diagonal; the blocks that straddle it
are masked, the ones below run mask-free. The warpgroup whose rows end first keeps arriving on the
barriers (without computing) until its partner is done, so the producer's ring keeps turning.

Scope: bf16/f16, head_dim 64 or 128, causal or not, GQA/MQA (kv head = h // group), lengths a multiple of
the tile (Tq of 2 * block_q, Tk of block_kv). Everything else (windows, segment ids, soft-cap, ALiBi, a
query offset, float32, other lengths) makes `unsupported_reason` name it, and the caller falls back to the
Triton forward.
Imports of Mosaic GPU happen inside functions: this module is importable on any jax / platform.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from llm.kernels import flash_common as fc
from llm.kernels.flash_common import FlashStatic

COMPUTE_WGS = 2  # consumer warpgroups per CTA


@dataclasses.dataclass(frozen=True)
class MgpuTiles:
    """block_q: query rows per consumer warpgroup (CTA tile = 2 * block_q); block_kv: keys per pipeline
    step; stages: K/V slots in flight."""

    block_q: int = 64
    block_kv: int = 128
    stages: int = 2


def tiles_from(st: FlashStatic) -> MgpuTiles:
    """The forward knobs of FlashStatic read the mgpu way: block_q is the CTA tile (2 warpgroups),
    block_k the key block, num_stages the K/V pipeline depth."""
    return MgpuTiles(block_q=st.blocks.block_q // COMPUTE_WGS, block_kv=st.blocks.block_k,
                     stages=st.num_stages or 2)


def smem_bytes(tiles: MgpuTiles, head_dim: int, itemsize: int = 2) -> int:
    q = COMPUTE_WGS * tiles.block_q * head_dim * itemsize
    kv = 2 * tiles.stages * tiles.block_kv * head_dim * itemsize
    return q + kv + COMPUTE_WGS * tiles.block_q * 4


SMEM_LIMIT = 227 * 1024  # Hopper's per-block opt-in shared memory


def unsupported_reason(st: FlashStatic, q_shape, k_shape, dtype, segments: bool) -> str | None:
    """None when this kernel handles the call; otherwise why the Triton forward must take it."""
    _, tq, _, d = q_shape
    tk = k_shape[1]
    tiles = tiles_from(st)
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"dtype {jnp.dtype(dtype).name} (bf16/f16 only)"
    if d not in (64, 128):
        return f"head_dim {d} (64 or 128 only)"
    if st.window is not None or segments or st.softcap is not None:
        return "windows, segment ids and soft-cap are Triton-only"
    if st.alibi or st.q_offset != 0:
        return "ALiBi and query offsets (static or traced) are Triton-only"
    if st.scale * fc.LOG2E <= 0:
        return "non-positive scale"
    if tiles.block_q % 64 or tiles.block_kv % 64 or tiles.stages < 2:
        return f"tiles {tiles} (block_q per warpgroup and block_kv multiples of 64, >= 2 stages)"
    if st.q_len != tq or st.kv_len != tk or tq % (COMPUTE_WGS * tiles.block_q) or tk % tiles.block_kv:
        return f"lengths {st.q_len}/{st.kv_len} not multiples of the tiles {tiles}"
    if smem_bytes(tiles, d) > SMEM_LIMIT:
        return f"tiles {tiles} need {smem_bytes(tiles, d)} bytes of shared memory"
    if st.causal and _ptxas_causal_bug():
        return "CUDA 12.8.0-12.9.0 ptxas miscompiles the causal mask"
    return None


def _ptxas_causal_bug() -> bool:
    """jax's own Mosaic GPU attention refuses causal masking on CUDA runtimes in [12.8.0, 12.9.1)."""
    try:
        from jax._src.lib import cuda_versions

        if cuda_versions is None:
            return False
        v = cuda_versions.cuda_runtime_get_version()
    except Exception:  # no CUDA plugin here (e.g. exporting on CPU)
        return False
    return 12080 <= v < 12091


def _transposed(ref):
    from jax.experimental.pallas import mosaic_gpu as plgpu

    if hasattr(ref, "transpose"):
        return ref.transpose((1, 0))
    return plgpu.transpose_ref(ref, (1, 0))  # jax <= 0.10


def forward(st: FlashStatic, q, k, v, q_seg=None, kv_seg=None, offset=None, slopes=None):
    """out [B, Tq, H, D] (q's dtype) and lse [B, H, Tq] (float32, base 2): `flash_triton.forward`'s contract."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    why = unsupported_reason(st, q.shape, k.shape, q.dtype, q_seg is not None)
    if why is not None:
        raise ValueError(f"mosaic_gpu flash forward: {why}")
    b, tq, h, d = q.shape
    tk, kh = k.shape[1], k.shape[2]
    group = h // kh
    dtype = q.dtype
    tiles = tiles_from(st)
    bq, bkv = tiles.block_q, tiles.block_kv
    cta_q = COMPUTE_WGS * bq
    n_tiles = tq // cta_q
    n_kv = tk // bkv
    stages = min(tiles.stages, n_kv)
    mul = st.scale * fc.LOG2E  # > 0: scores scaled into base 2 inside the exponent's FMA
    causal = st.causal
    wgmma_layout = plgpu.Layout.WGMMA
    row_layout = plgpu.Layout.WGMMA.reduce(1)

    def cdiv(a, m: int):
        return lax.div(a + (m - 1), jnp.int32(m))

    def kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, smem, bars, consumed, sched):
        qo_smem2, k_smem, v_smem, lse_smem2 = smem
        k_bar, v_bar, q_bar = bars
        k_used, v_used = consumed
        bi = lax.axis_index("batch")
        hi = lax.axis_index("heads")
        tile = lax.axis_index("q_tiles")
        if causal:  # heaviest tiles first: the short diagonal tiles fill the tail of the launch
            tile = (n_tiles - 1) - tile
        wg = lax.axis_index("wg")
        tile_q0 = tile * cta_q
        # Key blocks this CTA's producer streams: up to the diagonal of its last row (causal).
        cta_steps = jnp.minimum(cdiv(tile_q0 + cta_q, bkv), n_kv) if causal else n_kv

        def sched_sync():
            plgpu.barrier_arrive(sched)
            plgpu.barrier_wait(sched)

        @pl.when(wg < COMPUTE_WGS)
        def _consumer():
            plgpu.set_max_registers(232, action="increase")
            qo_smem = qo_smem2.at[wg]
            lse_smem = lse_smem2.at[wg]
            q0 = tile_q0 + wg * bq
            if causal:
                steps = jnp.minimum(cdiv(q0 + bq, bkv), n_kv)  # blocks holding any key <= last row
                free = jnp.minimum(lax.div(q0, jnp.int32(bkv)), steps)  # blocks wholly <= first row
            else:
                steps = free = n_kv
            plgpu.copy_gmem_to_smem(q_ref.at[bi, pl.ds(q0, bq), hi], qo_smem, q_bar.at[wg])
            plgpu.barrier_wait(q_bar.at[wg])

            acc = plgpu.layout_cast(jnp.zeros((bq, d), jnp.float32), wgmma_layout)
            m_i = plgpu.layout_cast(jnp.full((bq,), fc.M_INIT, jnp.float32), row_layout)
            l_i = plgpu.layout_cast(jnp.zeros((bq,), jnp.float32), row_layout)

            plgpu.barrier_wait(k_bar.at[0])  # steps >= 1 always (top-left causal alignment)
            pl.when(wg == 1)(sched_sync)  # offset the partners by one phase

            def step(j, carry, masked: bool):
                acc, m_i, l_i = carry
                slot = lax.rem(j, jnp.int32(stages))

                def qk(acc_ref):
                    plgpu.wgmma(acc_ref, qo_smem, _transposed(k_smem.at[slot]))
                    sched_sync()
                    return acc_ref[...]

                s = pl.run_scoped(qk, plgpu.ACC((bq, bkv), jnp.float32))
                plgpu.barrier_arrive(k_used.at[slot])
                if masked:
                    rows = plgpu.broadcasted_iota(jnp.int32, (bq, bkv), 0, layout=wgmma_layout)
                    cols = plgpu.broadcasted_iota(jnp.int32, (bq, bkv), 1, layout=wgmma_layout)
                    s = jnp.where(rows + q0 >= cols + j * bkv, s, -jnp.inf)
                m_new = jnp.maximum(m_i, s.max(axis=1) * mul)
                corr = jnp.exp2(m_i - m_new)
                p = jnp.exp2(s * mul - lax.broadcast_in_dim(m_new, s.shape, [0]))
                acc = acc * lax.broadcast_in_dim(corr, acc.shape, [0])
                l_i = l_i * corr + p.sum(axis=1)
                p16 = p.astype(dtype)
                # Keep the softmax ahead of the barrier below (the scheduler would otherwise sink it).
                acc, l_i, m_new, p16 = lax.optimization_barrier((acc, l_i, m_new, p16))
                plgpu.barrier_arrive(sched)  # softmax done: the partner may issue its matmuls
                plgpu.barrier_wait(v_bar.at[slot])
                plgpu.barrier_wait(sched)  # the partner's matmuls are issued: tensor cores are ours

                def pv(acc_ref):
                    plgpu.wgmma(acc_ref, p16, v_smem.at[slot])
                    nxt = j + 1

                    @pl.when(nxt < steps)
                    def _():
                        plgpu.barrier_wait(k_bar.at[lax.rem(nxt, jnp.int32(stages))])

                acc = pl.run_state(pv)(plgpu.ACC.init(acc))
                plgpu.barrier_arrive(v_used.at[slot])
                return acc, m_new, l_i

            carry = (acc, m_i, l_i)
            carry = lax.fori_loop(0, free, functools.partial(step, masked=False), carry)
            if causal:
                carry = lax.fori_loop(free, steps, functools.partial(step, masked=True), carry)

                def idle(j, _):
                    # Rows done: release the slots and keep the schedule barrier's count in step.
                    slot = lax.rem(j, jnp.int32(stages))
                    plgpu.barrier_arrive(k_used.at[slot])
                    plgpu.barrier_arrive(v_used.at[slot])
                    sched_sync()
                    sched_sync()

                lax.fori_loop(steps, cta_steps, idle, None)
            acc, m_i, l_i = carry
            pl.when(wg == 0)(sched_sync)

            empty = l_i == 0.0  # no visible key: out 0, lse +inf (cannot happen in scope; kept exact)
            l_safe = jnp.where(empty, 1.0, l_i)
            inv = 1.0 / l_safe
            qo_smem[...] = (acc * lax.broadcast_in_dim(inv, acc.shape, [0])).astype(dtype)
            lse_smem[...] = jnp.where(empty, jnp.inf, m_i + jnp.log(l_safe) * fc.LOG2E)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(qo_smem, o_ref.at[bi, pl.ds(q0, bq), hi])
            plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[bi, hi, pl.ds(q0, bq)])
            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg == COMPUTE_WGS)
        def _producer():
            plgpu.set_max_registers(40, action="decrease")
            kv_head = lax.div(hi, jnp.int32(group))

            def load(j, slot):
                src = (bi, pl.ds(j * bkv, bkv), kv_head)
                plgpu.copy_gmem_to_smem(k_ref.at[src], k_smem.at[slot], k_bar.at[slot])
                plgpu.copy_gmem_to_smem(v_ref.at[src], v_smem.at[slot], v_bar.at[slot])

            for s in range(stages):  # fill the ring (a short causal tile may need fewer blocks)
                if isinstance(cta_steps, int):
                    load(s, s)
                else:
                    pl.when(s < cta_steps)(functools.partial(load, s, s))
            refills = cta_steps - stages if isinstance(cta_steps, int) else jnp.maximum(cta_steps - stages, 0)

            @pl.loop(0, refills)
            def _(j):
                slot = lax.rem(j, jnp.int32(stages))
                nxt = j + stages
                src = (bi, pl.ds(nxt * bkv, bkv), kv_head)
                plgpu.barrier_wait(k_used.at[slot])
                plgpu.copy_gmem_to_smem(k_ref.at[src], k_smem.at[slot], k_bar.at[slot])
                plgpu.barrier_wait(v_used.at[slot])
                plgpu.copy_gmem_to_smem(v_ref.at[src], v_smem.at[slot], v_bar.at[slot])

    def entry(q_ref, k_ref, v_ref, o_ref, lse_ref):
        swz = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
        scratch = (
            plgpu.SMEM((COMPUTE_WGS, bq, d), dtype, transforms=swz),
            plgpu.SMEM((stages, bkv, d), dtype, transforms=swz),
            plgpu.SMEM((stages, bkv, d), dtype, transforms=swz),
            plgpu.SMEM((COMPUTE_WGS, bq), jnp.float32),
        )
        bars = (plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages),
                plgpu.Barrier(num_barriers=COMPUTE_WGS))
        consumed = (plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages),) * 2
        sched = plgpu.Barrier(num_arrivals=COMPUTE_WGS)
        pl.run_scoped(lambda *a: kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *a),
                      scratch, bars, consumed, sched, collective_axes="wg")

    out, lse = plgpu.kernel(
        entry,
        out_type=(jax.ShapeDtypeStruct(q.shape, dtype), jax.ShapeDtypeStruct((b, h, tq), jnp.float32)),
        grid=(h, n_tiles, b),
        grid_names=("heads", "q_tiles", "batch"),
        num_threads=COMPUTE_WGS + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
    )(q, k, v)
    return out, lse


def backward(st: FlashStatic, *args):
    """The backward pass is the Triton one (it reads this forward's residuals unchanged)."""
    from llm.kernels import flash_triton

    return flash_triton.backward(dataclasses.replace(st, backend="triton"), *args)
