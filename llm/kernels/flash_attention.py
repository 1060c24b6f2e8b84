"""Flash attention: the public entry point, its autodiff rule and per-backend tuning defaults.

`flash_attention(q, k, v, ...)` computes exactly what `llm.ops.attention.attention` defines (layout
[B, T, heads, D], K/V heads dividing query heads, causal / sliding-window / segment masking, zeros for rows
that see no key, optional logit soft-cap, optional ALiBi bias, a query offset) with Pallas kernels for the
forward pass and both halves of the backward pass (dq; dk and dv), tied together by `jax.custom_vjp`.

The query offset (query row i at slot q_offset + i, keys at slots 0..Tk-1) is a Python int, compiled into the
kernels, or a traced int32 scalar (a KV cache's index under jit), passed to them as an operand; either way the
kernels visit only the key blocks the causal/window band leaves visible from the offset queries, so a decoding
step over a cache of max_len slots reads the filled part only. ALiBi slopes [H] are an operand too; like
segment ids they get no gradient.

Lowerings (`backend`):
  'triton'     GPU: Pallas' Triton path (`flash_triton`); knobs block_*, num_warps, num_stages.
  'interpret'  the same kernels run by Pallas' interpreter (plain XLA on CPU; the default there).
  'tpu'        Mosaic kernels (`flash_tpu`); with interpret=True they run in the TPU interpreter on CPU.
  'mosaic_gpu' (alias 'mgpu') Hopper: the forward is Pallas' Mosaic GPU kernel (`flash_mgpu`: wgmma, TMA,
               warp specialisation), the backward the Triton kernels. Calls outside its scope (windows,
               segment ids, soft-cap, ALiBi, a query offset, float32, head_dim not 64/128, lengths off the
               tile) fall back to 'triton' entirely. It is the default on compute-capability-9 GPUs
               (measured on an H200: 452 TFLOP/s forward at bf16/hd128/causal/8192, 1.01x cuDNN, 1.32x
               Triton; see benchmarks/results/attention_gpu_mgpu.md); LLM_FLASH_MGPU=0 keeps Triton there.
Lengths need not be block multiples: the wrapper pads (and the kernels mask) keys, and slices the padding off.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.kernels import flash_common as fc
from llm.kernels import flash_triton
from llm.kernels.flash_common import BlockSizes, FlashStatic

BACKENDS = ("triton", "interpret", "tpu", "mosaic_gpu")
_ALIASES = {"gpu": "triton", "cuda": "triton", "rocm": "triton", "cpu": "interpret", "mgpu": "mosaic_gpu"}
MGPU_ENV = "LLM_FLASH_MGPU"  # "0": keep Triton as the default GPU lowering on Hopper

# Knobs accepted by `flash_attention` beside the attention options; `None` means the backend's default.
TUNING_KEYS = ("block_q", "block_k", "block_q_dq", "block_k_dq", "block_q_dkv", "block_k_dkv",
               "num_warps", "num_stages", "num_warps_bwd", "num_stages_bwd")


def default_tuning(backend: str, head_dim: int, dtype: Any) -> dict[str, int | None]:
    """Per-backend defaults for the tuning knobs (see TUNING_KEYS).

    GPU: Hopper-sized tiles for 2-byte inputs: 128 x 128 forward tiles, 8 warps at head_dim 128 (two
    warpgroups share the 128 query rows) with a 2-stage K/V pipeline (160 KiB of shared memory, no register
    spills when compiled for sm_90 with Triton 3.6), 4 warps and 3 stages at head_dim 64. The backward
    kernels keep the long side on their resident operand (dq: 128 query rows; dk/dv: 128 keys) and stream
    short blocks of the other (64 keys; 32 queries), which keeps 8 warps spill-free. float32 halves the
    tiles. `python -m benchmarks.attention --gpu-suite` autotunes the forward and reports the best setting.
    """
    backend = _ALIASES.get(backend, backend)
    if backend == "mosaic_gpu":
        # Forward: a 128-row CTA tile (two consumer warpgroups of 64 rows), 64-key blocks, a 2-slot TMA ring:
        # the best of the H200 autotune at bf16/hd128/causal/8192 (435 vs 411 TFLOP/s for 128-key blocks;
        # 3 slots of 128 keys exceed shared memory). num_warps is unused by it. The backward knobs are
        # Triton's; outside the kernel's scope the call falls back to Triton's defaults entirely.
        tri = default_tuning("triton", head_dim, dtype)
        return dict(tri, block_q=128, block_k=64, num_stages=2)
    if backend == "triton":
        if jnp.dtype(dtype).itemsize > 2:  # float32: full-precision (IEEE) dots, twice the bytes per tile
            return dict(block_q=64, block_k=64, num_warps=4, num_stages=2, block_q_dq=64, block_k_dq=32,
                        block_q_dkv=32, block_k_dkv=64, num_warps_bwd=4, num_stages_bwd=2)
        if head_dim <= 64:
            fwd = dict(block_q=128, block_k=128, num_warps=4, num_stages=3)
        elif head_dim <= 128:
            fwd = dict(block_q=128, block_k=128, num_warps=8, num_stages=2)
        else:
            fwd = dict(block_q=64, block_k=64, num_warps=4, num_stages=2)
        big = head_dim > 128
        return dict(fwd, block_q_dq=64 if big else 128, block_k_dq=32 if big else 64, block_q_dkv=32,
                    block_k_dkv=64 if big else 128, num_warps_bwd=8, num_stages_bwd=2)
    if backend == "tpu":
        # VMEM-sized tiles: the (8, 128) layout wants >= 128 rows; 512 x 512 bf16 stays well inside VMEM.
        b = 512 if jnp.dtype(dtype).itemsize <= 2 else 256
        return dict(block_q=b, block_k=b, block_q_dq=b, block_k_dq=b, block_q_dkv=b, block_k_dkv=b,
                    num_warps=None, num_stages=None, num_warps_bwd=None, num_stages_bwd=None)
    # Interpreter: each block is one XLA loop step, so fewer, larger blocks are faster.
    return dict(block_q=128, block_k=128, block_q_dq=128, block_k_dq=128, block_q_dkv=128, block_k_dkv=128,
                num_warps=None, num_stages=None, num_warps_bwd=None, num_stages_bwd=None)


def resolve_backend(backend: str | None, interpret: bool | None) -> tuple[str, bool]:
    """(lowering, interpret) from the user's choice and the default JAX platform."""
    if backend is None:
        backend = {"gpu": "triton", "tpu": "tpu"}.get(jax.default_backend(), "interpret")
        if backend == "triton" and mgpu_opted_in():
            backend = "mosaic_gpu"
    backend = _ALIASES.get(backend, backend)
    if backend not in BACKENDS:
        raise ValueError(f"unknown flash-attention backend {backend!r}; choose one of {BACKENDS}")
    if interpret is None:
        interpret = backend == "interpret" or jax.default_backend() == "cpu"
    if backend in ("triton", "mosaic_gpu") and interpret:
        backend = "interpret"
    return backend, bool(interpret or backend == "interpret")


def mgpu_opted_in() -> bool:
    """The default device is a compute-capability-9 (Hopper) GPU and LLM_FLASH_MGPU is not set to 0."""
    if os.environ.get(MGPU_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        cc = str(getattr(jax.devices()[0], "compute_capability", ""))
    except Exception:
        return False
    return cc.split(".")[0] == "9"


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    q_offset: int | jax.Array = 0,
    scale: float | None = None,
    softcap: float | None = None,
    alibi_slopes: jax.Array | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    interpret: bool | None = None,
    backend: str | None = None,
    **tuning: int | None,
) -> jax.Array:
    """Attention of q [B, Tq, H, D] over k, v [B, Tk, K, D] (K divides H); returns [B, Tq, H, D] in q's dtype.

    Args:
      causal, window, segment_ids, kv_segment_ids, scale, softcap: as in `llm.ops.attention.attention`.
      q_offset: slot of query row 0: a Python int >= 0 (static) or an int32 scalar array (traced, e.g. a KV
        cache's index; the kernels read it at run time).
      alibi_slopes: [H] ALiBi slopes; adds -slope_h * |q_slot - k_slot| to the (capped) logits. No gradient.
      block_q, block_k: forward tile sizes (queries x keys); None picks the backend default.
      interpret: run the kernels in Pallas' interpreter (default: on CPU).
      backend: 'triton' (GPU), 'mosaic_gpu' / 'mgpu' (Hopper forward, Triton backward), 'tpu', 'interpret'
        (or 'gpu', 'cpu'); default from jax.default_backend() (and LLM_FLASH_MGPU, see module doc).
      tuning: the other knobs of TUNING_KEYS (backward tiles block_q_dq, block_k_dq, block_q_dkv,
        block_k_dkv; GPU num_warps, num_stages, num_warps_bwd, num_stages_bwd).
    """
    unknown = set(tuning) - set(TUNING_KEYS)
    if unknown:
        raise TypeError(f"unknown flash_attention options {sorted(unknown)}; tuning knobs are {TUNING_KEYS}")
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(f"want q [B, Tq, H, D] and k, v [B, Tk, K, D]; got {q.shape}, {k.shape}, {v.shape}")
    b, tq, h, d = q.shape
    tk, kh = k.shape[1], k.shape[2]
    if k.shape[0] != b or k.shape[3] != d or h % kh:
        raise ValueError(f"q {q.shape} and k {k.shape}: batch and head_dim must match, K must divide H")
    if window is not None and window < 1:
        raise ValueError(f"window must be a positive int or None, got {window}")
    if segment_ids is not None and kv_segment_ids is None:
        if tq != tk:
            raise ValueError("segment_ids alone needs Tq == Tk; pass kv_segment_ids for the keys")
        kv_segment_ids = segment_ids
    if (segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("pass both segment_ids and kv_segment_ids, or neither")
    scale = d ** -0.5 if scale is None else float(scale)
    softcap = None if softcap is None else float(softcap)
    static_offset, offset = _split_offset(q_offset)
    if alibi_slopes is not None:
        alibi_slopes = jnp.asarray(alibi_slopes, jnp.float32)
        if alibi_slopes.shape != (h,):
            raise ValueError(f"alibi_slopes must be [heads] = {(h,)}, got {alibi_slopes.shape}")

    backend, interpret = resolve_backend(backend, interpret)
    user = {key: val for key, val in dict(tuning, block_q=block_q, block_k=block_k).items() if val is not None}

    def static(backend: str) -> FlashStatic:
        knobs = dict(default_tuning(backend, d, q.dtype), **user)
        return FlashStatic(causal=bool(causal), window=window, scale=scale, softcap=softcap, q_len=tq,
                           kv_len=tk, blocks=_fit_blocks(knobs, tq, tk, backend), backend=backend,
                           interpret=interpret, q_offset=static_offset, alibi=alibi_slopes is not None,
                           num_warps=knobs["num_warps"], num_stages=knobs["num_stages"],
                           num_warps_bwd=knobs["num_warps_bwd"], num_stages_bwd=knobs["num_stages_bwd"])

    st = static(backend)
    if backend == "mosaic_gpu" and mgpu_fallback_reason(st, q, k, segment_ids is not None) is not None:
        st = static("triton")  # outside the Mosaic GPU kernel's scope: Triton forward and backward
    blocks = st.blocks

    # Pad lengths to block multiples (keys past kv_len are masked in the kernels, padded query rows are
    # sliced off) and, for Triton, head_dim to a power of two (zero columns change no dot product).
    tq_pad = _round_up(tq, blocks.q_multiple)
    tk_pad = _round_up(tk, blocks.k_multiple)
    d_pad = _head_dim_padded(d, st.backend)
    q_p = _pad(q, tq_pad, d_pad)
    k_p = _pad(k, tk_pad, d_pad)
    v_p = _pad(v, tk_pad, d_pad)
    q_seg = kv_seg = None
    if segment_ids is not None:
        q_seg = _pad_ids(segment_ids, b, tq, tq_pad)
        kv_seg = _pad_ids(kv_segment_ids, b, tk, tk_pad)
    out = _flash(st, q_p, k_p, v_p, q_seg, kv_seg, offset, alibi_slopes)
    return out[:, :tq, :, :d]


def _split_offset(q_offset) -> tuple[int | None, jax.Array | None]:
    """(static offset, None) for a Python int, (None, int32 [1]) for an array (traced or not: a concrete
    array would otherwise compile a new kernel per value)."""
    if isinstance(q_offset, (int, np.integer)) and not isinstance(q_offset, bool):
        if q_offset < 0:
            raise ValueError(f"q_offset must be >= 0, got {q_offset}")
        return int(q_offset), None
    offset = jnp.asarray(q_offset)
    if offset.size != 1 or not jnp.issubdtype(offset.dtype, jnp.integer):
        raise ValueError(f"q_offset must be an int or an integer scalar array, got {offset.dtype}{offset.shape}")
    return None, offset.reshape((1,)).astype(jnp.int32)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _fit_blocks(knobs: dict, tq: int, tk: int, backend: str) -> BlockSizes:
    """Clamp tiles to the (power-of-two rounded) lengths so short inputs are not padded to a huge tile."""
    # Triton's dot wants >= 16 on each side; TPU tiles are (8, 128) and scores put keys on the 128 lanes.
    floor = {"triton": 16, "mosaic_gpu": 16, "tpu": 128}.get(backend, 8)
    sizes = {}
    for key in ("block_q", "block_k", "block_q_dq", "block_k_dq", "block_q_dkv", "block_k_dkv"):
        val = int(knobs[key])
        if val < 1 or val & (val - 1):
            raise ValueError(f"{key} must be a power of two, got {val}")
        n = tq if key.startswith("block_q") else tk
        sizes[key] = max(min(val, _next_pow2(n)), min(floor, val))
    return BlockSizes(**sizes)


def mgpu_fallback_reason(st: FlashStatic, q, k, segments: bool) -> str | None:
    """None when the Mosaic GPU forward takes this call (unpadded shapes), else why Triton does."""
    from llm.kernels import flash_mgpu

    return flash_mgpu.unsupported_reason(st, q.shape, k.shape, q.dtype, segments)


def _head_dim_padded(d: int, backend: str) -> int:
    if backend in ("triton", "mosaic_gpu"):
        return max(16, _next_pow2(d))
    if backend == "tpu":
        return _round_up(d, 128)
    return d


def _pad(x: jax.Array, t: int, d: int) -> jax.Array:
    pads = ((0, 0), (0, t - x.shape[1]), (0, 0), (0, d - x.shape[3]))
    return x if not any(p for _, p in pads) else jnp.pad(x, pads)


def _pad_ids(ids: jax.Array, b: int, t: int, t_pad: int) -> jax.Array:
    ids = jnp.asarray(ids, jnp.int32)
    if ids.shape != (b, t):
        raise ValueError(f"segment ids must be [batch, length] = {(b, t)}, got {ids.shape}")
    return jnp.pad(ids, ((0, 0), (0, t_pad - t))) if t_pad != t else ids


def _lowering(st: FlashStatic):
    if st.backend == "tpu":
        from llm.kernels import flash_tpu  # Mosaic imports only when asked for

        return flash_tpu
    if st.backend == "mosaic_gpu":
        from llm.kernels import flash_mgpu  # forward only; its backward is flash_triton's

        return flash_mgpu
    return flash_triton


# --------------------------------------------------------------------------------------------------------
# Autodiff: the forward saves (inputs, output, lse); the backward recomputes probabilities block by block.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st: FlashStatic, q, k, v, q_seg, kv_seg, offset, slopes):
    return _lowering(st).forward(st, q, k, v, q_seg, kv_seg, offset, slopes)[0]


def _flash_fwd(st: FlashStatic, q, k, v, q_seg, kv_seg, offset, slopes):
    out, lse = _lowering(st).forward(st, q, k, v, q_seg, kv_seg, offset, slopes)
    return out, (q, k, v, q_seg, kv_seg, offset, slopes, out, lse)


def _flash_bwd(st: FlashStatic, res, do):
    q, k, v, q_seg, kv_seg, offset, slopes, out, lse = res
    # delta_i = sum_d dO_id * O_id = sum_j P_ij dP_ij: the softmax-Jacobian term, one number per row.
    delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))
    # Padded query rows: lse = +inf makes their probabilities 0, so they add nothing to dk or dv.
    valid = jnp.arange(q.shape[1]) < st.q_len
    lse = jnp.where(valid, lse, jnp.inf)
    delta = jnp.where(valid, delta, 0.0)
    dq, dk, dv = _lowering(st).backward(st, q, k, v, q_seg, kv_seg, do.astype(q.dtype), lse, delta, offset,
                                        slopes)
    return dq, dk, dv, None, None, None, None  # segment ids, offset and slopes get no gradient


_flash.defvjp(_flash_fwd, _flash_bwd)


def flops(batch: int, q_len: int, kv_len: int, heads: int, head_dim: int, *, causal: bool,
          mode: str = "fwd") -> float:
    """FlashAttention FLOP convention: forward 4*B*H*Tq*Tk*D (halved when causal), backward 2.5x, both 3.5x."""
    f = 4.0 * batch * heads * q_len * kv_len * head_dim * (0.5 if causal else 1.0)
    return f * {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}[mode]


__all__ = ["BACKENDS", "TUNING_KEYS", "default_tuning", "flash_attention", "flops", "mgpu_fallback_reason",
           "mgpu_opted_in", "resolve_backend", "visited_blocks"]

visited_blocks = fc.visited_blocks
