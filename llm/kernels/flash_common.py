"""What every flash-attention lowering shares: static options, block ranges, masks and logits.

The kernels in `flash_triton` (GPU, and CPU through Pallas' interpreter) and `flash_tpu` (Mosaic) differ in how
they walk the blocks, not in what a block computes. This module holds the parts that must agree bit for bit
between the forward and the two backward kernels of every lowering:

* `FlashStatic`, the hashable options that select and shape a kernel;
* `Band` and the block-range functions, which say which key blocks a query block can see (and the reverse),
  and which of those need no mask at all. Kernels take their loop bounds from these, so masked-out blocks are
  skipped, not computed and thrown away. The same functions work on Python ints, which is how the tests and
  `visited_blocks` count the work;
* `block_logits` (`logits`, `with_alibi`, `block_mask`), the score transform of a block (scale, soft-cap,
  ALiBi bias, base 2) and its masking rule.

Slots: query row i sits at slot `q_offset + i`, key j at slot j (`llm.ops.attention.masking`). The offset is
a Python int baked into the kernel, or (`FlashStatic.q_offset is None`) a traced int32 scalar the kernels read
from an operand; the block ranges take either, so a KV-cache decoding step visits only the key blocks its
queries can see.

Numerics: scores go through exp2, so log2(e) is folded into the softmax scale and the saved log-sum-exp
(`lse`) is in base 2. Masked scores are -inf and the running max starts at a large finite negative, so a row
that has seen no visible key keeps l == 0 and exp2 never sees inf - inf; such rows output zeros and save
lse = +inf, which makes every recomputed probability of the row exactly 0 in the backward pass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

LOG2E = math.log2(math.e)
# Start value of the running row max: finite, so exp2(m_old - m_new) is never exp2(-inf + inf).
M_INIT = -1e30


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of the three kernels: forward, dq (query-major) and dk/dv (key-major)."""

    block_q: int
    block_k: int
    block_q_dq: int
    block_k_dq: int
    block_q_dkv: int
    block_k_dkv: int

    @property
    def q_multiple(self) -> int:
        """Query lengths are padded to a multiple of this (every q block size divides it)."""
        return math.lcm(self.block_q, self.block_q_dq, self.block_q_dkv)

    @property
    def k_multiple(self) -> int:
        return math.lcm(self.block_k, self.block_k_dq, self.block_k_dkv)


@dataclasses.dataclass(frozen=True)
class FlashStatic:
    """Everything static about one flash-attention call (hashable: it is a custom_vjp nondiff argument).

    Lengths are the true (unpadded) ones; the arrays the kernels see are padded to block multiples.
    `backend` is 'triton' (compiled GPU kernel), 'interpret' (the same kernel run by Pallas' interpreter) or
    'tpu' (Mosaic kernel; `interpret` then selects the TPU interpreter) or 'mosaic_gpu' (Hopper forward in
    Mosaic GPU, Triton backward).
    """

    causal: bool
    window: int | None
    scale: float
    softcap: float | None
    q_len: int
    kv_len: int
    blocks: BlockSizes
    backend: str
    interpret: bool = False
    q_offset: int | None = 0  # slot of query row 0; None: traced, the kernels' int32 [1] offset operand
    alibi: bool = False  # ALiBi slopes [H] arrive as an operand
    num_warps: int | None = None
    num_stages: int | None = None
    num_warps_bwd: int | None = None
    num_stages_bwd: int | None = None

    @property
    def band(self) -> Band:
        return Band.from_rule(self.causal, self.window)

    def offset(self, offset_ref=None):
        """The query offset inside a kernel: the static int, or the scalar read from its operand's ref."""
        return self.q_offset if self.q_offset is not None else offset_ref[0]


# --------------------------------------------------------------------------------------------------------
# Which blocks a block can see.


@dataclasses.dataclass(frozen=True)
class Band:
    """The visible diagonals: key j is visible from query i iff lo <= i - j <= hi (None = unbounded).

    This is `llm.ops.attention.allowed` without segment ids: causal gives lo = 0, a window W gives hi = W - 1
    and, when not causal, lo = -(W - 1).
    """

    lo: int | None
    hi: int | None

    @classmethod
    def from_rule(cls, causal: bool, window: int | None) -> Band:
        hi = None if window is None else window - 1
        if causal:
            return cls(0, hi)
        return cls(None if window is None else -(window - 1), hi)


def _is_int(*xs) -> bool:
    return all(isinstance(x, int) for x in xs)


def _max(a, b):
    return max(a, b) if _is_int(a, b) else jnp.maximum(a, b)


def _min(a, b):
    return min(a, b) if _is_int(a, b) else jnp.minimum(a, b)


def _div(a, b: int):
    """Floor division of a non-negative int (Python or traced): lax.div truncates, which agrees there."""
    return a // b if _is_int(a) else lax.div(a, jnp.asarray(b, a.dtype))


def _cdiv(a, b: int):
    return _div(a + (b - 1), b)


def _select(pred, a, b):
    if isinstance(pred, bool):
        return a if pred else b
    return jnp.where(pred, a, b)


@dataclasses.dataclass(frozen=True)
class BlockRange:
    """Inner-loop block indices for one outer block: [lo, hi) may hold visible pairs, and the blocks in
    [full_lo, full_hi) (a sub-range) are visible everywhere, so they run without a mask."""

    lo: Any
    full_lo: Any
    full_hi: Any
    hi: Any

    def clamped(self) -> BlockRange:
        if _is_int(self.full_lo, self.lo) and self.full_lo <= self.lo:
            full_lo = self.lo  # statically empty masked head (lo <= hi always holds)
        else:
            full_lo = _min(_max(self.full_lo, self.lo), self.hi)
        full_hi = _min(_max(self.full_hi, full_lo), self.hi)
        return BlockRange(self.lo, full_lo, full_hi, self.hi)


def kv_range(q_block, *, band: Band, block_q: int, block_k: int, kv_len: int, exact: bool,
             q_offset=0, q_len: int | None = None) -> BlockRange:
    """Key blocks a query block needs (forward and dq kernels).

    q_block: index of the query block; q_offset: slot of query row 0 (each an int or a traced int32 >= 0).
    exact: False when another mask (segment ids) applies to every block, so no block may skip masking. Key
    blocks past `kv_len` are never visited; the one that straddles it is always masked. q_len: rows from here
    on are padding, whose outputs are discarded, so the range serves the real rows only (a decoding step's
    one query, padded to a tile, reads no key block past its own slot).
    """
    r0, r1 = q_block * block_q, q_block * block_q + (block_q - 1)
    if q_len is not None:
        r0, r1 = _min(r0, q_len - 1), _min(r1, q_len - 1)
    q0, q1 = r0 + q_offset, r1 + q_offset  # slots of the first and last rows served
    n_k = -(-kv_len // block_k)
    # Visible keys lie in [q0 - band.hi, q1 - band.lo].
    lo = 0 if band.hi is None else _div(_max(q0 - band.hi, 0), block_k)
    hi = n_k if band.lo is None else _min(_cdiv(_max(q1 - band.lo + 1, 0), block_k), n_k)
    if not exact:
        return BlockRange(lo, hi, hi, hi)
    # A block is fully visible when all its keys are in [q1 - band.hi, q0 - band.lo] and below kv_len.
    full_lo = 0 if band.hi is None else _cdiv(_max(q1 - band.hi, 0), block_k)
    full_hi = kv_len // block_k
    if band.lo is not None:
        full_hi = _min(_div(_max(q0 - band.lo + 1, 0), block_k), full_hi)
    return BlockRange(lo, full_lo, full_hi, hi).clamped()


def q_range(k_block, *, band: Band, block_q: int, block_k: int, q_len: int, kv_len: int,
            exact: bool, q_offset=0) -> BlockRange:
    """Query blocks that see a key block (dk/dv kernel); the mirror image of `kv_range`.

    Padded query rows need no mask here (their saved lse is +inf, so their probabilities are 0), but a key
    block that reaches past `kv_len` is masked on every visit.
    """
    k_last = k_block * block_k + (block_k - 1)
    # The block's first and last key slots, shifted into query rows (row = slot - q_offset; may be < 0).
    k0 = k_block * block_k - q_offset
    k1 = k0 + (block_k - 1)
    n_q = -(-q_len // block_q)
    # Visible query rows lie in [k0 + band.lo, k1 + band.hi].
    lo = 0 if band.lo is None else _div(_max(k0 + band.lo, 0), block_q)
    hi = n_q if band.hi is None else _min(_cdiv(_max(k1 + band.hi + 1, 0), block_q), n_q)
    if not exact:
        return BlockRange(lo, hi, hi, hi)
    # A query block is fully visible when all its rows are in [k1 + band.lo, k0 + band.hi].
    full_lo = 0 if band.lo is None else _cdiv(_max(k1 + band.lo, 0), block_q)
    full_hi = n_q if band.hi is None else _div(_max(k0 + band.hi + 1, 0), block_q)
    if kv_len % block_k:
        # The straddling key block and any wholly padded one after it are never mask-free.
        full_hi = _select(k_last < kv_len, full_hi, full_lo)
    return BlockRange(lo, full_lo, full_hi, hi).clamped()


def visited_blocks(*, q_len: int, kv_len: int, block_q: int, block_k: int, causal: bool,
                   window: int | None = None, segments: bool = False, q_offset: int = 0) -> dict[str, int]:
    """Count the (query block, key block) pairs the forward kernel computes, and how many of them it masks.

    Plain Python over the same `kv_range` the kernel uses, for tests and cost estimates.
    """
    band = Band.from_rule(causal, window)
    visited = masked = 0
    for i in range(-(-q_len // block_q)):
        r = kv_range(i, band=band, block_q=block_q, block_k=block_k, kv_len=kv_len, exact=not segments,
                     q_offset=q_offset, q_len=q_len)
        visited += r.hi - r.lo
        masked += (r.full_lo - r.lo) + (r.hi - r.full_hi)
    total = -(-q_len // block_q) * -(-kv_len // block_k)
    return {"visited": visited, "masked": masked, "total": total}


# --------------------------------------------------------------------------------------------------------
# What one block computes.


def block_mask(st: FlashStatic, q_slot, k_slot, q_seg=None, k_seg=None):
    """Visibility of a block of scores; q_slot and k_slot broadcast against each other (either orientation).

    Same rule as `llm.ops.attention.allowed`, plus the padding rule: key slots at or past kv_len are hidden.
    """
    ok = None

    def conj(a, b):
        return b if a is None else a & b

    band = st.band
    diff = q_slot - k_slot
    if band.lo is not None:
        ok = conj(ok, diff >= band.lo)
    if band.hi is not None:
        ok = conj(ok, diff <= band.hi)
    if q_seg is not None:
        ok = conj(ok, q_seg == k_seg)
    if st.kv_len % st.blocks.k_multiple:
        ok = conj(ok, k_slot < st.kv_len)
    if ok is None:  # only reachable for a block that needs no mask; keep the caller simple
        ok = jnp.ones(jnp.broadcast_shapes(jnp.shape(q_slot), jnp.shape(k_slot)), bool)
    return ok


@dataclasses.dataclass(frozen=True)
class Logits:
    """Base-2 logits of a block in factored form: logits2 = value * mul (mul > 0 is a Python float).

    Keeping the scale as a separate positive factor lets the kernels take the row max of the raw scores and
    fuse the scale into the exponent (exp2(s * mul - m), one FMA per score). `tanh` is the soft-cap's
    tanh(s * scale / cap), kept for the backward pass (None without a cap).
    """

    value: jax.Array
    mul: float
    tanh: jax.Array | None = None

    def scaled(self) -> jax.Array:
        return self.value if self.mul == 1.0 else self.value * self.mul

    def row_max(self, axis: int) -> jax.Array:
        m = jnp.max(self.value, axis=axis)
        return m if self.mul == 1.0 else m * self.mul


def logits(st: FlashStatic, s: jax.Array) -> Logits:
    """Raw scores q.k -> base-2 logits: log2(e) * cap(scale * s), cap(x) = softcap * tanh(x / softcap)."""
    if st.softcap is not None:
        t = jnp.tanh(s * (st.scale / st.softcap))
        return Logits(t * (st.softcap * LOG2E), 1.0, t)
    mul = st.scale * LOG2E
    if mul > 0:
        return Logits(s, mul)
    return Logits(s * mul, 1.0)  # a non-positive scale flips the max: no folding then


def with_alibi(lg: Logits, slope, q_slot, k_slot) -> Logits:
    """Add ALiBi's bias -slope * |q_slot - k_slot| to the (capped) logits, in base 2 like them.

    slope: the head's float32 scalar; q_slot and k_slot broadcast to the block (either orientation). The bias
    differs per score, so the scale is applied here and the factored form ends (mul = 1)."""
    dist = jnp.abs(q_slot - k_slot).astype(jnp.float32)
    return Logits(lg.scaled() - (slope * LOG2E) * dist, 1.0, lg.tanh)


def block_logits(st: FlashStatic, s: jax.Array, q_slot, k_slot, *, masked: bool, slope=None, q_seg=None,
                 k_seg=None) -> Logits:
    """Raw scores of a block -> base-2 logits: scale, soft-cap, ALiBi bias (with st.alibi), then the mask
    (only when `masked`), in `llm.ops.attention.masking.masked_scores`' order."""
    lg = logits(st, s)
    if st.alibi:
        lg = with_alibi(lg, slope, q_slot, k_slot)
    if masked:
        lg = masked_logits(lg, block_mask(st, q_slot, k_slot, q_seg, k_seg))
    return lg


def masked_logits(lg: Logits, ok: jax.Array) -> Logits:
    """Hide masked scores (-inf survives the positive factor `mul`)."""
    return dataclasses.replace(lg, value=jnp.where(ok, lg.value, -jnp.inf))


def softcap_grad(lg: Logits, ds: jax.Array) -> jax.Array:
    """Chain rule through the cap: d cap(x)/dx = 1 - tanh(x / cap)^2."""
    return ds if lg.tanh is None else ds * (1.0 - lg.tanh * lg.tanh)


def dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b.T with float32 accumulation: contracts the last dims, so no transpose is materialised."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def dot_nn(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b with float32 accumulation."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
