"""Attention over a sequence split across devices (context parallelism): per-device code, run under shard_map
with the sequence split over the mesh axis `Layout.axis`.

The T slots of the sequence are cut into n * parts chunks of L = T / (n * parts) slots over the n devices:
  contiguous (parts=1): device d holds chunk d.
  balanced   (parts=2): device d holds chunks d and 2n-1-d. Under the causal mask the queries of the last chunks
             see many keys and those of the first few; a device pairing a first chunk with its mirror has the same
             work as every other. The model takes its tokens in this order (`Layout.order`).

Strategies:
  all_gather  gather every device's keys and values (O(T) of them per device), attend with the local queries.
  ring        n steps: attend to the key/value block in hand, fold it into the running softmax (output and
              logsumexp), pass the block on to the next device (ppermute); O(T / n) keys per device, and the transfer
              of the next block may overlap the compute on this one. The backward pass runs the ring again, each
              block's key/value gradients travelling with it until they are home.
Every (query chunk, key chunk) pair runs the chunked kernel (llm/ops/attention/chunked.py) with the pair's slot
offset; in the ring, pairs that the causal mask or the window hide entirely are skipped (lax.cond), which is
where the balanced layout's even work comes from.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from llm.ops.attention.chunked import block_attention, block_attention_grads, chunked_attention
from llm.ops.attention.spec import AttentionSpec
from llm.parallel.context import CONTEXT_STRATEGIES


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the sequence lies on the `axis` of `size` devices, and how attention gathers it (see the module doc)."""

    axis: str
    size: int
    balanced: bool = True
    strategy: str = "ring"

    @property
    def parts(self) -> int:
        return 2 if self.balanced else 1

    def chunks(self, device):
        """The chunk ids device `device` (an int or a traced index) holds, in order."""
        return [device] if not self.balanced else [device, 2 * self.size - 1 - device]

    def order(self, length: int) -> np.ndarray:
        """The slots in layout order: entry p of the laid-out sequence is slot order[p] of the original."""
        n_chunks = self.size * self.parts
        if length % n_chunks:
            raise ValueError(f"a sequence of {length} tokens does not split into {n_chunks} equal chunks over "
                             f"{self.size} devices{' (2 per device, balanced)' if self.balanced else ''}")
        chunk = length // n_chunks
        ids = [c for d in range(self.size) for c in self.chunks(d)]
        return np.concatenate([np.arange(c * chunk, (c + 1) * chunk) for c in ids])


def context_attention(q, k, v, q_seg, kv_seg, alibi_slopes, *, layout: Layout, spec: AttentionSpec,
                      block_k: int = 512):
    """The local queries' attention over the whole sequence, q [B, T/n, H, D] and k, v [B, T/n, K, D] this device's
    slots in `layout`, q_seg and kv_seg [B, T/n] int segment ids, alibi_slopes [H] (this device's heads) or None;
    each block by the chunked kernel with `block_k` keys a step (`spec.impl` is not read)."""
    blocks = _Blocks(spec.scaled(q.shape[-1]), block_k)
    if layout.strategy == "all_gather":
        return _all_gather_attention(q, k, v, q_seg, kv_seg, alibi_slopes, layout, blocks)
    if layout.strategy != "ring":
        raise ValueError(f"unknown context-parallel strategy {layout.strategy!r}; choose one of {CONTEXT_STRATEGIES}")
    return _ring(layout, blocks, q, k, v, q_seg, kv_seg, alibi_slopes)


@dataclasses.dataclass(frozen=True)
class _Blocks:
    """The options of every block's attention (hashable: a static argument of the custom VJP)."""

    spec: AttentionSpec  # scaled
    block_k: int


def _split(x, parts: int, axis: int = 1):
    return jnp.split(x, parts, axis=axis)


def _join(xs, axis: int = 1):
    return xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=axis)


def _all_gather_attention(q, k, v, q_seg, kv_seg, slopes, layout: Layout, blocks: _Blocks):
    gather = functools.partial(jax.lax.all_gather, axis_name=layout.axis, axis=1, tiled=True)
    k_all, v_all, kv_seg_all = gather(k), gather(v), gather(kv_seg)
    if layout.balanced:  # back to slot order, so key j sits at slot j
        back = np.argsort(layout.order(k_all.shape[1]))
        k_all, v_all, kv_seg_all = k_all[:, back], v_all[:, back], kv_seg_all[:, back]
    me = jax.lax.axis_index(layout.axis)
    chunk = q.shape[1] // layout.parts
    outs = [chunked_attention(q_a, k_all, v_all, blocks.spec, segment_ids=seg_a, kv_segment_ids=kv_seg_all,
                              q_offset=c * chunk, alibi_slopes=slopes, block_k=blocks.block_k)
            for q_a, seg_a, c in zip(_split(q, layout.parts), _split(q_seg, layout.parts), layout.chunks(me))]
    return _join(outs)


def _visible(q_chunk, k_chunk, chunk: int, spec: AttentionSpec):
    """Whether any query of chunk `q_chunk` may see any key of chunk `k_chunk` (True when no mask limits it)."""
    first = (q_chunk - k_chunk) * chunk  # q_slot - k_slot of the chunks' first rows; the pair spans +-(chunk - 1)
    ok = True
    if spec.causal:
        ok = first + chunk - 1 >= 0
    if spec.window is not None:
        ok = ok & (first - (chunk - 1) < spec.window)
        if not spec.causal:
            ok = ok & (first + chunk - 1 > -spec.window)
    return ok


def _when_visible(ok, compute, zeros):
    return compute() if ok is True else jax.lax.cond(ok, compute, zeros)


def _merge(out_a, lse_a, out_b, lse_b):
    """Two partial softmaxes of the same queries ([B, L, H, D] normalised outputs and [B, K, G, L] logsumexps)
    as one."""
    lse = jnp.logaddexp(lse_a, lse_b)
    safe = jnp.where(jnp.isfinite(lse), lse, 0.0)

    def weight(part):  # [B, K, G, L] -> [B, L, H, 1]
        w = jnp.where(jnp.isfinite(part), jnp.exp(part - safe), 0.0)
        b, kh, g, length = w.shape
        return jnp.moveaxis(w, 3, 1).reshape(b, length, kh * g, 1)

    return out_a * weight(lse_a) + out_b * weight(lse_b), lse


def _pass_on(x, layout: Layout):
    """Every device's `x` to the next device on the ring."""
    return jax.lax.ppermute(x, layout.axis, [(d, (d + 1) % layout.size) for d in range(layout.size)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _ring(layout, blocks, q, k, v, q_seg, kv_seg, slopes):
    return _ring_forward(layout, blocks, q, k, v, q_seg, kv_seg, slopes)[0].astype(q.dtype)


def _ring_forward(layout: Layout, blocks: _Blocks, q, k, v, q_seg, kv_seg, slopes):
    """(out float32 [B, T/n, H, D], logsumexp [B, K, G, T/n])."""
    me = jax.lax.axis_index(layout.axis)
    parts, chunk = layout.parts, q.shape[1] // layout.parts
    qs, q_segs, q_chunks = _split(q, parts), _split(q_seg, parts), layout.chunks(me)
    b, _, h, d = q.shape
    kh = k.shape[2]
    empty = (jnp.zeros((b, chunk, h, d), jnp.float32), jnp.full((b, kh, h // kh, chunk), -jnp.inf, jnp.float32))

    def attend(step, block, acc):
        ks, vs, kv_segs = (_split(x, parts) for x in block)
        k_chunks = layout.chunks((me - step) % layout.size)  # the block in hand started on device me - step
        new = []
        for a in range(parts):
            out, lse = acc[a]
            for c in range(parts):
                compute = functools.partial(block_attention, qs[a], ks[c], vs[c], q_segs[a], kv_segs[c],
                                            (q_chunks[a] - k_chunks[c]) * chunk, slopes, blocks.spec,
                                            block_k=blocks.block_k)
                part = _when_visible(_visible(q_chunks[a], k_chunks[c], chunk, blocks.spec), compute, lambda: empty)
                out, lse = _merge(out, lse, *part)
            new.append((out, lse))
        return new

    def step(i, carry):
        block, acc = carry
        incoming = _pass_on(block, layout)  # issued before the compute, so the two may overlap
        return incoming, attend(i, block, acc)

    block, acc = jax.lax.fori_loop(0, layout.size - 1, step, ((k, v, kv_seg), [empty] * parts))
    acc = attend(layout.size - 1, block, acc)
    return _join([o for o, _ in acc]), _join([lse for _, lse in acc], axis=3)


def _ring_fwd(layout, blocks, q, k, v, q_seg, kv_seg, slopes):
    out, lse = _ring_forward(layout, blocks, q, k, v, q_seg, kv_seg, slopes)
    out = out.astype(q.dtype)
    return out, (q, k, v, q_seg, kv_seg, slopes, out, lse)


def _ring_bwd(layout: Layout, blocks: _Blocks, res, do):
    q, k, v, q_seg, kv_seg, slopes, out, lse = res
    me = jax.lax.axis_index(layout.axis)
    parts, chunk = layout.parts, q.shape[1] // layout.parts
    qs, q_segs, outs, dos = (_split(x, parts) for x in (q, q_seg, out, do))
    lses, q_chunks = _split(lse, parts, axis=3), layout.chunks(me)

    def step(i, carry):
        (k_blk, v_blk, seg_blk), (dk, dv), dq = carry
        incoming = _pass_on((k_blk, v_blk, seg_blk), layout)  # issued before the compute, so the two may overlap
        ks, vs, kv_segs, dks, dvs = (_split(x, parts) for x in (k_blk, v_blk, seg_blk, dk, dv))
        k_chunks = layout.chunks((me - i) % layout.size)
        dq = list(dq)
        for a in range(parts):
            for c in range(parts):
                compute = functools.partial(block_attention_grads, qs[a], ks[c], vs[c], q_segs[a], kv_segs[c],
                                            (q_chunks[a] - k_chunks[c]) * chunk, slopes, outs[a], lses[a], dos[a],
                                            blocks.spec, block_k=blocks.block_k)
                zeros = lambda a=a, c=c: (jnp.zeros(qs[a].shape, jnp.float32), jnp.zeros(ks[c].shape, jnp.float32),
                                          jnp.zeros(vs[c].shape, jnp.float32))
                dq_ac, dk_ac, dv_ac = _when_visible(_visible(q_chunks[a], k_chunks[c], chunk, blocks.spec),
                                                    compute, zeros)
                dq[a], dks[c], dvs[c] = dq[a] + dq_ac, dks[c] + dk_ac, dvs[c] + dv_ac
        # A block's key/value gradients follow it round the ring; after n passes they are home.
        return incoming, _pass_on((_join(dks), _join(dvs)), layout), tuple(dq)

    zeros_kv = jnp.zeros(k.shape, jnp.float32)
    init = ((k, v, kv_seg), (zeros_kv, zeros_kv), tuple(jnp.zeros(x.shape, jnp.float32) for x in qs))
    _, (dk, dv), dq = jax.lax.fori_loop(0, layout.size, step, init)
    return (_join(list(dq)).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None,
            None if slopes is None else jnp.zeros_like(slopes))


_ring.defvjp(_ring_fwd, _ring_bwd)
