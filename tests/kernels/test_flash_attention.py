"""The Pallas flash-attention kernel against the `reference` definition, in outputs and gradients.

On CPU the kernels run in Pallas' interpreter with small shapes and small blocks (so every test crosses
several blocks, padded tails included). `@pytest.mark.gpu` tests compile the Triton kernels at realistic
sizes; they run only where jax's default backend is a GPU (tools/gpu_check.sh).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_oracle import oracle

from llm.kernels import flash_attention as fa
from llm.kernels import flash_common as fc
from llm.ops.attention import AttentionSpec, attention

ON_GPU = jax.default_backend() == "gpu"


def gpu_test(f):
    """Marked `gpu` (selected by `-m gpu`) and skipped unless jax's default backend is a GPU."""
    return pytest.mark.gpu(pytest.mark.skipif(not ON_GPU, reason="needs a GPU")(f))


# Small tiles so the CPU shapes below span several blocks; the backward tiles differ from the forward ones
# on purpose (padding to their common multiple, different block ranges).
SMALL = dict(block_q=32, block_k=32, block_q_dq=32, block_k_dq=16, block_q_dkv=16, block_k_dkv=32)

TOL = {jnp.float32: dict(atol=1e-5, rtol=1e-5), jnp.bfloat16: dict(atol=4e-2, rtol=4e-2)}


def make_inputs(b, tq, tk, h, kh, d, dtype, *, segments=False, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
               for shape in [(b, tq, h, d), (b, tk, kh, d), (b, tk, kh, d)])
    seg = None
    if segments:
        # Packed documents: three per row at random boundaries, a different packing per batch row.
        assert tq == tk
        cuts = np.sort(np.random.default_rng(seed).integers(1, tk, size=(b, 2)), axis=1)
        pos = np.arange(tk)[None]
        seg = jnp.asarray((pos >= cuts[:, :1]).astype(np.int32) + (pos >= cuts[:, 1:]))
    return q, k, v, seg


def out_and_grads(impl, q, k, v, opts, extra=None):
    """Output and (dq, dk, dv) of sum(out * w) for a fixed random w, under jit."""
    fields = ("causal", "window", "softcap", "scale")
    spec = AttentionSpec(impl, **{n: x for n, x in opts.items() if n in fields})
    args = {n: x for n, x in opts.items() if n not in fields}

    @jax.jit
    def run(q, k, v):
        def f(q, k, v):
            out = attention(q, k, v, spec, **args, **(extra or {}))
            w = jax.random.normal(jax.random.PRNGKey(7), out.shape, jnp.float32)
            return jnp.sum(out.astype(jnp.float32) * w), out

        (_, out), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    return run(q, k, v)


def assert_close(got, want, dtype):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), **TOL[dtype])


def check_against_reference(b, tq, tk, h, kh, d, dtype, opts, *, segments=False, extra=SMALL):
    q, k, v, seg = make_inputs(b, tq, tk, h, kh, d, dtype, segments=segments)
    if seg is not None:
        opts = dict(opts, segment_ids=seg)
    out, grads = out_and_grads("flash", q, k, v, opts, extra)
    ref_out, ref_grads = out_and_grads("reference", q, k, v, opts)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_close(out, ref_out, dtype)
    for name, g, rg, x in zip("qkv", grads, ref_grads, (q, k, v)):
        assert g.shape == x.shape and g.dtype == x.dtype, name
        assert_close(g, rg, dtype)


# (id, B, Tq, Tk, H, K, D, dtype, options, segments). Together: causal and not, windows of both kinds,
# packed documents, MHA / GQA / MQA, head_dim 64 and 128, lengths that are not block multiples, Tq != Tk,
# soft-cap, a custom scale, float32 (tight) and bfloat16 (loose).
CASES = [
    ("noncausal_gqa_odd37", 1, 37, 37, 4, 2, 64, jnp.float32, dict(causal=False), False),
    ("causal_mqa_odd100_d128", 1, 100, 100, 4, 1, 128, jnp.float32, dict(causal=True), False),
    ("cross_len_mqa", 1, 37, 100, 2, 1, 64, jnp.float32, dict(causal=False), False),
    ("window_causal_gqa", 1, 100, 100, 4, 2, 64, jnp.float32, dict(causal=True, window=24), False),
    ("window_noncausal_segments_softcap", 2, 100, 100, 2, 1, 64, jnp.float32,
     dict(causal=False, window=16, softcap=5.0), True),
    ("segments_causal_gqa_d128", 2, 64, 64, 4, 2, 128, jnp.float32, dict(causal=True), True),
    ("softcap_scale_causal", 1, 64, 64, 2, 2, 64, jnp.float32, dict(causal=True, softcap=2.0, scale=0.4),
     False),
    ("bf16_causal_gqa_d128_odd", 1, 100, 100, 4, 2, 128, jnp.bfloat16, dict(causal=True), False),
    ("bf16_window_segments", 2, 64, 64, 2, 2, 64, jnp.bfloat16, dict(causal=True, window=20), True),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_reference(case):
    _, b, tq, tk, h, kh, d, dtype, opts, segments = case
    check_against_reference(b, tq, tk, h, kh, d, dtype, opts, segments=segments)


def test_default_tiles_and_public_entry():
    """Default (interpreter) tiles, called both directly and through `attention(impl='flash')`."""
    q, k, v, _ = make_inputs(1, 150, 150, 2, 1, 64, jnp.float32)
    want = attention(q, k, v, AttentionSpec("reference", causal=True))
    np.testing.assert_allclose(attention(q, k, v, AttentionSpec("flash", causal=True)), want, **TOL[jnp.float32])
    np.testing.assert_allclose(fa.flash_attention(q, k, v), want, **TOL[jnp.float32])


def test_fully_masked_rows_are_zero():
    """Queries whose document has no keys (segment ids absent from kv) output zeros and zero gradients."""
    q, k, v, _ = make_inputs(1, 40, 40, 2, 2, 64, jnp.float32)
    q_seg = jnp.asarray(np.r_[np.zeros(20), np.full(20, 5)][None], jnp.int32)
    kv_seg = jnp.zeros((1, 40), jnp.int32)
    opts = dict(causal=False, segment_ids=q_seg, kv_segment_ids=kv_seg)
    out, (dq, dk, dv) = out_and_grads("flash", q, k, v, opts, SMALL)
    ref_out, (rdq, rdk, rdv) = out_and_grads("reference", q, k, v, opts)
    assert np.all(np.asarray(out[:, 20:]) == 0) and np.all(np.asarray(dq[:, 20:]) == 0)
    for got, want in ((out, ref_out), (dq, rdq), (dk, rdk), (dv, rdv)):
        np.testing.assert_allclose(got, want, **TOL[jnp.float32])


def test_vmap_and_grad():
    """vmap over an extra leading axis, forward and backward, against the reference."""
    q, k, v, _ = make_inputs(3, 48, 48, 2, 1, 64, jnp.float32)
    xs = tuple(x.reshape(3, 1, *x.shape[1:]) for x in (q, k, v))  # [vmap, B=1, T, heads, D]

    def loss(impl, extra, q, k, v):
        f = functools.partial(attention, impl=impl, causal=True, window=20, **extra)
        out = jax.vmap(f)(q, k, v)
        return jnp.sum(jnp.sin(out)), out

    got = jax.jit(jax.value_and_grad(functools.partial(loss, "flash", SMALL), (0, 1, 2), has_aux=True))(*xs)
    want = jax.jit(jax.value_and_grad(functools.partial(loss, "reference", {}), (0, 1, 2), has_aux=True))(*xs)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, **TOL[jnp.float32])


def test_scan_over_layers():
    """Inside a flax nn.scan over layers (jit + grad through the scanned custom_vjp)."""
    import flax.linen as nn

    class Layer(nn.Module):
        impl: str

        @nn.compact
        def __call__(self, x, _):
            b, t, _ = x.shape
            qkv = nn.Dense(3 * 64, use_bias=False)(x).reshape(b, t, 3, 2, 32)
            y = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], AttentionSpec(self.impl, causal=True),
                          **(dict(block_q=16, block_k=16, block_q_dq=16, block_k_dq=16, block_q_dkv=16,
                                  block_k_dkv=16) if self.impl == "flash" else {}))
            return x + nn.Dense(x.shape[-1], use_bias=False)(y.reshape(b, t, 64)), None

    def model(impl):
        return nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)(impl)

    x = jax.random.normal(jax.random.PRNGKey(1), (2, 40, 32))
    params = model("reference").init(jax.random.PRNGKey(0), x, None)

    def loss(impl, p):
        return jnp.mean(model(impl).apply(p, x, None)[0] ** 2)

    got = jax.jit(jax.value_and_grad(functools.partial(loss, "flash")))(params)
    want = jax.jit(jax.value_and_grad(functools.partial(loss, "reference")))(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5)


# --------------------------------------------------------------------------------------------------------
# ALiBi and query offsets (static, and traced as in KV-cache decoding): outputs against the NumPy oracle,
# gradients against `explicit_attention`, plain jnp with an explicit bias that shares no code with the
# kernels or with llm.ops.attention.masking (its own output is checked against the oracle too).

F32_TIGHT = dict(atol=2e-5, rtol=2e-5)


def explicit_attention(q, k, v, *, causal, window=None, q_offset=0, softcap=None, slopes=None, q_seg=None,
                       k_seg=None):
    """Softmax(cap(q k^T / sqrt(D)) - slope_h |q_slot - k_slot|, masked) v in float32; empty rows give 0."""
    h, kh = q.shape[2], k.shape[2]
    k, v = (jnp.repeat(x.astype(jnp.float32), h // kh, axis=2) for x in (k, v))
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k, precision="highest") / np.sqrt(q.shape[3])
    if softcap is not None:
        s = softcap * jnp.tanh(s / softcap)
    rel = (q_offset + jnp.arange(q.shape[1]))[:, None] - jnp.arange(k.shape[1])[None, :]  # q_slot - k_slot
    if slopes is not None:
        s = s - slopes[:, None, None] * jnp.abs(rel)
    vis = jnp.ones(rel.shape, bool)[None, None]
    if causal:
        vis = vis & (rel >= 0)
    if window is not None:
        vis = vis & (rel < window) & (causal | (-rel < window))
    if q_seg is not None:
        vis = vis & (q_seg[:, None, :, None] == k_seg[:, None, None, :])
    s = jnp.where(vis, s, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))  # a shift softmax ignores: no gradient
    e = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    total = jnp.sum(e, axis=-1, keepdims=True)
    return jnp.einsum("bhqk,bkhd->bqhd", e / jnp.where(total == 0, 1.0, total), v, precision="highest")


def oracle_out(q, k, v, *, causal, window=None, q_offset=0, softcap=None, slopes=None, q_seg=None, k_seg=None):
    seg = {} if q_seg is None else dict(q_segments=np.asarray(q_seg), k_segments=np.asarray(k_seg))
    return oracle(q, k, v, causal=causal, window=window, q_offset=int(q_offset), softcap=softcap,
                  alibi_slopes=None if slopes is None else np.asarray(slopes), **seg)[0]


def decode_segments(b, tq, tk, q_offset, seed=0):
    """Packed-document ids for a cache of tk slots ([B, Tk]) and the queries' ids at their slots ([B, Tq])."""
    cuts = np.sort(np.random.default_rng(seed).integers(1, tk, size=(b, 2)), axis=1)
    kv_seg = (np.arange(tk)[None] >= cuts[:, :1]).astype(np.int32) + (np.arange(tk)[None] >= cuts[:, 1:])
    return jnp.asarray(kv_seg[:, q_offset:q_offset + tq]), jnp.asarray(kv_seg)


def value_and_grads(f):
    """jit of (q, k, v, *args) -> (out, (dq, dk, dv)) of sum(out * w), w a fixed random projection."""

    def loss(q, k, v, *args):
        out = f(q, k, v, *args)
        w = jax.random.normal(jax.random.PRNGKey(7), out.shape, jnp.float32)
        return jnp.sum(out.astype(jnp.float32) * w), out

    def run(q, k, v, *args):
        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, *args)
        return out, grads

    return jax.jit(run)


def flash_with(opts, extra):
    """f(q, k, v, *offset) -> fa.flash_attention with explicit_attention's keywords `opts`; an offset passed
    as an argument is traced."""

    def f(q, k, v, *offset):
        kw = dict(opts, **dict(zip(["q_offset"], offset)))
        slopes, q_seg, k_seg = kw.pop("slopes", None), kw.pop("q_seg", None), kw.pop("k_seg", None)
        return fa.flash_attention(q, k, v, alibi_slopes=slopes, segment_ids=q_seg, kv_segment_ids=k_seg, **kw,
                                  **extra)

    return f


def check_against_explicit(q, k, v, opts, *, offsets=(None,), extra=SMALL) -> list[float]:
    """flash's output against the oracle and its gradients against explicit_attention's, each program compiled
    once; returns the largest errors of out, dq, dk, dv.

    opts: explicit_attention's keywords (a static q_offset among them); offsets: None, or ints passed traced."""
    flash = value_and_grads(flash_with(opts, extra))
    explicit = value_and_grads(
        lambda q, k, v, *offset: explicit_attention(q, k, v, **dict(opts, **dict(zip(["q_offset"], offset)))))
    errors = np.zeros(4)
    for offset in offsets:
        traced = () if offset is None else (jnp.int32(offset),)
        out, grads = flash(q, k, v, *traced)
        ref_out, ref_grads = explicit(q, k, v, *traced)
        want = oracle_out(q, k, v, **dict(opts, **({} if offset is None else {"q_offset": offset})))
        np.testing.assert_allclose(np.asarray(ref_out), want, **F32_TIGHT)  # the explicit reference is right
        np.testing.assert_allclose(np.asarray(out), want, **F32_TIGHT)
        for got, ref in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(ref), **F32_TIGHT)
        errors = np.maximum(errors, [np.max(np.abs(np.asarray(a, np.float64) - b))
                                     for a, b in zip((out, *grads), (want, *ref_grads))])
    return errors.tolist()


def alibi_slopes_for(h):
    return jnp.asarray(2.0 ** -np.arange(1, h + 1) * 4, jnp.float32)  # steep, so the bias matters at D=16


# (id, B, Tq, Tk, H, K, options, segments); a q_offset here is static (Tq < Tk: a chunk of a prefill).
ALIBI_CASES = [
    ("alibi_noncausal_window_segments_softcap_gqa", 2, 45, 45, 4, 2, dict(causal=False, window=19, softcap=4.0),
     True),
    ("alibi_prefill_chunk_static_offset", 1, 24, 90, 2, 2, dict(causal=True, q_offset=66), False),
]


@pytest.mark.parametrize("case", ALIBI_CASES, ids=[c[0] for c in ALIBI_CASES])
def test_alibi_and_static_offset_match_oracle(case):
    _, b, tq, tk, h, kh, opts, segments = case
    q, k, v, _ = make_inputs(b, tq, tk, h, kh, 16, jnp.float32)
    opts = dict(opts, slopes=alibi_slopes_for(h))
    if segments:
        opts["q_seg"], opts["k_seg"] = decode_segments(b, tq, tk, opts.get("q_offset", 0))
    check_against_explicit(q, k, v, opts)


def test_traced_offset_chunk_gradients():
    """A chunk of 20 queries at a traced offset (chunked prefill under jit), causal with a window and GQA:
    outputs and gradients at two offsets from one compiled program."""
    q, k, v, _ = make_inputs(1, 20, 70, 4, 2, 16, jnp.float32)
    check_against_explicit(q, k, v, dict(causal=True, window=33, slopes=alibi_slopes_for(4)), offsets=(7, 50))


def test_traced_offset_decode_step_reads_only_filled_blocks():
    """One query (Tq = 1) against a 128-slot cache with the offset traced under jit, as a decoding step through
    the public entry point: the oracle's output at several offsets, and the cache's unwritten tail (NaN here)
    is never read."""
    b, h, kh, tk = 2, 4, 2, 128
    q, k, v, _ = make_inputs(b, 1, tk, h, kh, 16, jnp.float32)
    opts = dict(causal=True, window=40, slopes=alibi_slopes_for(h))

    @jax.jit
    def step(q, k, v, offset, q_seg, k_seg):
        return attention(q, k, v, AttentionSpec("flash", causal=True, window=40), q_offset=offset,
                         alibi_slopes=opts["slopes"], segment_ids=q_seg, kv_segment_ids=k_seg, **SMALL)

    v_unwritten = v.at[:, 64:].set(jnp.nan)  # 32-key blocks 2 and 3 lie past every offset below
    for offset in (0, 31, 45, 63):
        q_seg, k_seg = decode_segments(b, 1, tk, offset)
        out = step(q, k, v_unwritten, jnp.int32(offset), q_seg, k_seg)
        want = oracle_out(q, k, v, q_offset=offset, q_seg=q_seg, k_seg=k_seg, **opts)
        np.testing.assert_allclose(np.asarray(out), want, **F32_TIGHT)


# --------------------------------------------------------------------------------------------------------
# Block skipping: counted from the loop bounds, and observed (skipped blocks may hold NaNs).


def test_causal_visits_about_half_the_blocks():
    n = fc.visited_blocks(q_len=4096, kv_len=4096, block_q=128, block_k=128, causal=True)
    assert n["total"] == 32 * 32
    assert n["visited"] == 32 * 33 // 2  # the lower triangle and the diagonal
    assert n["masked"] == 32  # only diagonal blocks pay for a mask
    assert 0.5 <= n["visited"] / n["total"] < 0.52
    full = fc.visited_blocks(q_len=4096, kv_len=4096, block_q=128, block_k=128, causal=False)
    assert full["visited"] == full["total"] and full["masked"] == 0
    # A sliding window visits a band: about (window / block + 1) blocks per query block.
    win = fc.visited_blocks(q_len=4096, kv_len=4096, block_q=128, block_k=128, causal=True, window=512)
    assert win["visited"] <= 32 * 5 and win["masked"] <= 32 * 2
    # Rectangular tiles and a ragged tail: masks only where the band or the padding cuts a block.
    odd = fc.visited_blocks(q_len=1000, kv_len=1000, block_q=128, block_k=64, causal=True)
    assert odd["visited"] < 0.6 * odd["total"] and odd["masked"] <= 2 * 8
    seg = fc.visited_blocks(q_len=1000, kv_len=1000, block_q=128, block_k=64, causal=True, segments=True)
    assert seg["visited"] == odd["visited"] and seg["masked"] == seg["visited"]


def test_block_ranges_cover_exactly_the_visible_pairs():
    """kv_range / q_range against a brute-force scan of the visibility rule, for many shapes and query
    offsets (query row i at slot offset + i)."""
    shapes = [(37, 37, 8, 16, 0), (64, 64, 16, 16, 0), (50, 23, 16, 8, 0), (23, 50, 8, 16, 0), (23, 50, 8, 16, 13),
              (5, 64, 8, 16, 40), (37, 37, 16, 8, 9)]
    for causal, window in [(True, None), (False, None), (True, 5), (False, 7), (True, 40), (False, 1)]:
        for tq, tk, bq, bk, offset in shapes:
            band = fc.Band.from_rule(causal, window)
            qs, ks = offset + np.arange(tq)[:, None], np.arange(tk)[None, :]
            vis = np.ones((tq, tk), bool)
            if band.lo is not None:
                vis &= qs - ks >= band.lo
            if band.hi is not None:
                vis &= qs - ks <= band.hi
            nq, nk = -(-tq // bq), -(-tk // bk)
            for i in range(nq):
                r = fc.kv_range(i, band=band, block_q=bq, block_k=bk, kv_len=tk, exact=True, q_offset=offset,
                                q_len=tq)
                for j in range(nk):
                    blk = vis[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
                    # Padded query rows are don't-care; padded key columns must be masked.
                    full = blk.shape[1] == bk and blk.all()
                    assert (r.lo <= j < r.hi) or not blk.any(), (causal, window, i, j)
                    assert (r.full_lo <= j < r.full_hi) == full or (full and not r.lo <= j < r.hi), (i, j)
            for j in range(nk):
                r = fc.q_range(j, band=band, block_q=bq, block_k=bk, q_len=tq, kv_len=tk, exact=True,
                               q_offset=offset)
                for i in range(nq):
                    blk = vis[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
                    assert (r.lo <= i < r.hi) or not blk.any(), (causal, window, i, j)
                    if r.full_lo <= i < r.full_hi:  # unmasked: every real key column fully visible
                        assert blk.shape[1] == bk and blk.all(), (causal, window, i, j)


@functools.partial(jax.jit, static_argnames=("grad", "window"))
def _poison_probe(q, k, v, grad=True, window=None):
    """Forward (and, with grad, backward) of 32 x 32-tiled causal flash attention, cotangent on rows < 96."""
    tiles = dict(block_q=32, block_k=32, block_q_dq=32, block_k_dq=32, block_q_dkv=32, block_k_dkv=32)

    def f(q, k, v):
        out = fa.flash_attention(q, k, v, causal=True, window=window, **tiles)
        return jnp.sum(out[:, :96]), out

    if not grad:
        return f(q, k, v)[1]
    (_, out), grads = jax.value_and_grad(f, (0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def test_skipped_blocks_are_never_read():
    """Poison the blocks a band excludes with NaN: any visit, even a masked one, would spread the NaNs."""
    q, k, v, _ = make_inputs(1, 128, 128, 2, 2, 64, jnp.float32)
    finite = lambda x: bool(np.isfinite(np.asarray(x)).all())
    # Causal, forward and dq: the last key block is only visible from the last query block.
    out, (dq, _, _) = _poison_probe(q, k, v.at[:, 96:].set(jnp.nan))
    assert not finite(out[:, 96:])  # the poison is real where the block is visible
    assert finite(out[:, :96]) and finite(dq[:, :96])
    # Causal, dk/dv: the first query block is only visible from the first key block.
    _, (_, dk, dv) = _poison_probe(q.at[:, :32].set(jnp.nan), k, v)
    assert not finite(dk[:, :32])
    assert finite(dk[:, 32:]) and finite(dv[:, 32:])
    # Sliding window of 32: from query block 2 on, key block 0 is out of reach.
    out = _poison_probe(q, k, v.at[:, :32].set(jnp.nan), grad=False, window=32)
    assert not finite(out[:, :64]) and finite(out[:, 64:])


# --------------------------------------------------------------------------------------------------------
# The TPU (Mosaic) kernels, in the TPU interpreter; and both compiled lowerings, checked on CPU by exporting
# for the target platform (the kernels lower to Triton IR / Mosaic MLIR; only the device compiles them).

TPU_TILES = dict(block_q=128, block_k=128, block_q_dq=128, block_k_dq=128, block_q_dkv=128, block_k_dkv=128)


@pytest.mark.parametrize("opts,segments", [(dict(causal=True), False),
                                           (dict(causal=False, window=130, softcap=5.0), True)],
                         ids=["causal_mqa", "window_segments_softcap_gqa"])
def test_tpu_kernels_in_interpreter(opts, segments):
    kh = 1 if opts["causal"] else 2
    extra = dict(TPU_TILES, backend="tpu", interpret=True)
    check_against_reference(1, 300, 300, 4, kh, 64, jnp.float32, opts, segments=segments, extra=extra)


def test_tpu_kernels_alibi_and_traced_offset():
    """ALiBi and a traced (scalar-prefetched) offset in the TPU kernels: 20 queries at slot 200 with a window
    of 60 see key block 1 only, so the index_maps and block ranges must both shift with the offset."""
    q, k, v, _ = make_inputs(1, 20, 256, 2, 1, 64, jnp.float32)
    q_seg, k_seg = decode_segments(1, 20, 256, 200)
    opts = dict(causal=True, window=60, softcap=5.0, slopes=alibi_slopes_for(2), q_seg=q_seg, k_seg=k_seg)
    check_against_explicit(q, k, v, opts, offsets=(200,), extra=dict(TPU_TILES, backend="tpu", interpret=True))


def _export(fn, args, platform, device_kind):
    """Lower fn for `platform` on this CPU-only machine; an abstract device stands in for the chip."""
    from jax import export
    from jax._src import mesh as mesh_lib

    disabled = ([export.DisabledSafetyCheck.custom_call(name) for name in ("__gpu$xla.gpu.triton", "mosaic_gpu_v2")]
                if platform == "cuda" else [])
    exp = functools.partial(export.export, jax.jit(fn), platforms=[platform], disabled_checks=disabled)
    try:
        device = mesh_lib.AbstractDevice(device_kind=device_kind, num_cores=1,
                                         platform="gpu" if platform == "cuda" else platform)
        mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    except (AttributeError, TypeError):  # older jax: the Triton lowering falls back to sm_90 by itself
        return exp()(*args).mlir_module()
    with jax.sharding.use_abstract_mesh(mesh):
        return exp()(*args).mlir_module()


@pytest.mark.skipif(ON_GPU, reason="the GPU tests compile and run these kernels for real")
@pytest.mark.parametrize("backend,platform,device_kind,marker", [
    ("triton", "cuda", "NVIDIA H200", "xla.gpu.triton"),
    ("tpu", "tpu", "TPU v5p", "tpu_custom_call"),
])
def test_kernels_lower_for_device(backend, platform, device_kind, marker):
    q = jax.ShapeDtypeStruct((2, 1000, 8, 128), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((2, 1000, 2, 128), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((2, 1000), jnp.int32)

    def loss(q, k, v, s):
        out = fa.flash_attention(q, k, v, segment_ids=s, window=300, softcap=30.0, backend=backend,
                                 interpret=False)
        return out.astype(jnp.float32).sum()

    text = _export(jax.grad(loss, argnums=(0, 1, 2)), (q, k, k, seg), platform, device_kind)
    assert text.count(marker) == 3  # forward, dq, dk/dv


# --------------------------------------------------------------------------------------------------------
# The Mosaic GPU (Hopper) forward: backend choice and fallback everywhere, CUDA lowering on CPU; the
# numerics need a compute-capability-9 GPU (test_gpu_mgpu_* below). Its kernel uses wgmma, which Pallas'
# GPU interpreter does not run, so there is no CPU numerics test.


def test_mgpu_backend_resolution_and_fallback(monkeypatch):
    assert fa.resolve_backend("mgpu", False) == ("mosaic_gpu", False)
    assert fa.resolve_backend("mosaic_gpu", True) == ("interpret", True)  # CPU: the interpreted Triton kernels
    monkeypatch.delenv(fa.MGPU_ENV, raising=False)
    if not ON_GPU:
        assert not fa.mgpu_opted_in()  # the mgpu default only applies on a Hopper GPU
        assert fa.resolve_backend(None, None)[0] == "interpret"
    monkeypatch.setenv(fa.MGPU_ENV, "0")
    assert not fa.mgpu_opted_in()
    if ON_GPU:
        assert fa.resolve_backend(None, None)[0] == "triton"  # LLM_FLASH_MGPU=0 keeps Triton

    def reason(dtype=jnp.bfloat16, d=128, t=1024, **opts):
        q = jax.ShapeDtypeStruct((2, t, 8, d), dtype)
        k = jax.ShapeDtypeStruct((2, t, 2, d), dtype)
        knobs = fa.default_tuning("mgpu", d, dtype)
        st = fc.FlashStatic(causal=opts.get("causal", True), window=opts.get("window"), scale=d ** -0.5,
                            softcap=opts.get("softcap"), q_len=t, kv_len=t, backend="mosaic_gpu",
                            blocks=fa._fit_blocks(knobs, t, t, "mosaic_gpu"), num_stages=knobs["num_stages"],
                            q_offset=opts.get("q_offset", 0), alibi=opts.get("alibi", False))
        return fa.mgpu_fallback_reason(st, q, k, opts.get("segments", False))

    assert reason() is None and reason(jnp.float16, 64, causal=False) is None
    for bad in (dict(dtype=jnp.float32), dict(d=96), dict(t=1000), dict(window=64), dict(softcap=5.0),
                dict(segments=True), dict(alibi=True), dict(q_offset=128), dict(q_offset=None)):
        assert reason(**bad) is not None, bad


@pytest.mark.skipif(ON_GPU, reason="the GPU tests compile and run this kernel for real")
@pytest.mark.parametrize("causal,d,kh", [(True, 128, 8), (False, 128, 8), (True, 64, 2)])
def test_mgpu_forward_lowers_for_cuda(causal, d, kh):
    """The Mosaic GPU forward lowers for CUDA on CPU (Pallas -> Mosaic GPU MLIR; ptxas runs on the device),
    and under jax.grad the backward is still the two Triton kernels reading its residuals."""
    q = jax.ShapeDtypeStruct((2, 1024, 8, d), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((2, 1024, kh, d), jnp.bfloat16)

    def loss(q, k, v):
        return fa.flash_attention(q, k, v, causal=causal, backend="mgpu", interpret=False).astype(jnp.float32).sum()

    text = _export(jax.grad(loss, argnums=(0, 1, 2)), (q, k, k), "cuda", "NVIDIA H200")
    assert text.count("mosaic_gpu_v2") == 1 and text.count("xla.gpu.triton") == 2
    # Outside its scope (a window here) the whole call falls back to Triton.
    fallback = _export(jax.grad(lambda q, k, v: fa.flash_attention(
        q, k, v, causal=True, window=128, backend="mgpu", interpret=False).astype(jnp.float32).sum(),
        argnums=(0, 1, 2)), (q, k, k), "cuda", "NVIDIA H200")
    assert "mosaic_gpu" not in fallback and fallback.count("xla.gpu.triton") == 3


ON_HOPPER = ON_GPU and str(getattr(jax.devices()[0], "compute_capability", "")).startswith("9")

MGPU_CASES = [
    ("causal_bf16_d128", 2, 2048, 16, 16, 128, dict(causal=True)),
    ("noncausal_bf16_d128", 2, 2048, 16, 16, 128, dict(causal=False)),
    ("causal_gqa_bf16_d64", 2, 2048, 16, 4, 64, dict(causal=True)),
    ("noncausal_gqa_bf16_d64", 1, 1024, 8, 2, 64, dict(causal=False)),
]


def mgpu_test(f):
    return pytest.mark.gpu(pytest.mark.skipif(not ON_HOPPER, reason="needs a compute-capability-9 GPU")(f))


@pytest.mark.parametrize("case", MGPU_CASES, ids=[c[0] for c in MGPU_CASES])
@mgpu_test
def test_gpu_mgpu_forward_matches_reference(case):
    """The Mosaic GPU forward's output and saved lse against the reference and the Triton forward."""
    from llm.kernels import flash_mgpu, flash_triton

    _, b, t, h, kh, d, opts = case
    q, k, v, _ = make_inputs(b, t, t, h, kh, d, jnp.bfloat16)
    out = jax.jit(functools.partial(fa.flash_attention, backend="mgpu", **opts))(q, k, v)
    ref = jax.jit(functools.partial(attention, impl="reference", **opts))(q, k, v)
    assert out.dtype == q.dtype
    assert_close_to_scale(out, ref, 2e-2)
    knobs = fa.default_tuning("mgpu", d, q.dtype)
    st = fc.FlashStatic(causal=opts["causal"], window=None, scale=d ** -0.5, softcap=None, q_len=t, kv_len=t,
                        blocks=fa._fit_blocks(knobs, t, t, "mosaic_gpu"), backend="mosaic_gpu",
                        num_warps=knobs["num_warps"], num_stages=knobs["num_stages"])
    _, lse = jax.jit(functools.partial(flash_mgpu.forward, st))(q, k, v)
    tri = dataclasses.replace(st, backend="triton")
    _, lse_tri = jax.jit(functools.partial(flash_triton.forward, tri))(q, k, v, None, None)
    assert lse.shape == (b, h, t) and lse.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(lse), np.asarray(lse_tri), atol=2e-2, rtol=1e-3)


@pytest.mark.parametrize("case", MGPU_CASES, ids=[c[0] for c in MGPU_CASES])
@mgpu_test
def test_gpu_mgpu_grads_through_public_entry(case):
    """mgpu forward + Triton backward (through attention(impl='flash', backend='mgpu')) vs the reference."""
    _, b, t, h, kh, d, opts = case
    q, k, v, _ = make_inputs(b, t, t, h, kh, d, jnp.bfloat16)
    out, grads = out_and_grads("flash", q, k, v, opts, dict(backend="mgpu"))
    ref_out, ref_grads = out_and_grads("reference", q, k, v, opts)
    for got, want in zip((out, *grads), (ref_out, *ref_grads)):
        assert got.dtype == want.dtype
        assert_close_to_scale(got, want, 2e-2)


@mgpu_test
def test_gpu_mgpu_default_and_fallback(monkeypatch):
    """On Hopper the default is mgpu; an out-of-scope call (window, odd length) still works."""
    monkeypatch.delenv(fa.MGPU_ENV, raising=False)
    assert fa.resolve_backend(None, None)[0] == "mosaic_gpu"
    q, k, v, _ = make_inputs(1, 1000, 1000, 8, 2, 128, jnp.bfloat16)
    for opts in (dict(causal=True), dict(causal=True, window=256)):
        out, grads = out_and_grads("flash", q, k, v, opts)
        ref_out, ref_grads = out_and_grads("reference", q, k, v, opts)
        for got, want in zip((out, *grads), (ref_out, *ref_grads)):
            assert_close_to_scale(got, want, 2e-2)


# --------------------------------------------------------------------------------------------------------
# GPU: the compiled Triton kernels at realistic sizes.


GPU_CASES = [
    ("causal_bf16_d128", 2, 2048, 8, 8, 128, jnp.bfloat16, dict(causal=True), False),
    ("noncausal_gqa_bf16_d64", 2, 1024, 8, 2, 64, jnp.bfloat16, dict(causal=False), False),
    ("window_mqa_odd_bf16", 1, 1000, 8, 1, 128, jnp.bfloat16, dict(causal=True, window=256), False),
    ("segments_softcap_bf16", 2, 1024, 4, 2, 128, jnp.bfloat16, dict(causal=True, softcap=30.0), True),
    ("causal_f32_odd", 1, 777, 4, 2, 64, jnp.float32, dict(causal=True), False),
]


def assert_close_to_scale(got, want, rel):
    """Max error relative to the largest reference magnitude: long bf16 reductions make elementwise
    tolerances meaningless near zero, but the error must stay small against the tensor's scale."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.isfinite(got).all()
    err = np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-6)
    assert err < rel, f"max error {err:.2e} of the reference's scale (allowed {rel:.0e})"


@pytest.mark.parametrize("case", GPU_CASES, ids=[c[0] for c in GPU_CASES])
@gpu_test
def test_gpu_matches_reference(case):
    _, b, t, h, kh, d, dtype, opts, segments = case
    q, k, v, seg = make_inputs(b, t, t, h, kh, d, dtype, segments=segments)
    if seg is not None:
        opts = dict(opts, segment_ids=seg)
    out, grads = out_and_grads("flash", q, k, v, opts)  # the backend's default tiles
    ref_out, ref_grads = out_and_grads("reference", q, k, v, opts)
    # bf16: p and ds are rounded to bf16 for the tensor cores. f32: the reference's XLA einsums may use TF32.
    rel = 2e-2 if dtype == jnp.bfloat16 else 1e-2
    for got, want in zip((out, *grads), (ref_out, *ref_grads)):
        assert got.dtype == want.dtype
        assert_close_to_scale(got, want, rel)


@gpu_test
def test_gpu_vmap_grad_jit():
    q, k, v, _ = make_inputs(2, 512, 512, 4, 2, 128, jnp.bfloat16)
    xs = tuple(x.reshape(2, 1, *x.shape[1:]) for x in (q, k, v))

    def loss(impl, q, k, v):
        return jnp.sum(jax.vmap(functools.partial(attention, impl=impl, causal=True))(q, k, v)
                       .astype(jnp.float32) ** 2)

    got = jax.jit(jax.grad(functools.partial(loss, "flash"), (0, 1, 2)))(*xs)
    want = jax.jit(jax.grad(functools.partial(loss, "reference"), (0, 1, 2)))(*xs)
    for g, w in zip(got, want):
        assert_close_to_scale(g, w, 2e-2)


@pytest.mark.slow
def test_model_trains_the_same_with_flash_as_with_reference():
    """A few optimizer steps of a small model: flash follows the reference's loss curve and parameters."""
    from llm.config import get_base_config
    from llm.model import ModelConfig, Transformer
    from llm.state.optimizers import make_optimizer
    from llm.state.train_state import create_train_state
    from llm.training.steps import make_train_step

    o = get_base_config().optim
    o.warmup_steps, o.lr = 0, 3e-3
    rng = np.random.default_rng(0)
    x = rng.integers(0, 29, (4, 48)).astype(np.int32)
    y = np.roll(x, -1, axis=1)

    def run(impl):
        cfg = ModelConfig(vocab_size=29, max_len=48, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                          position="rope", window=24, attention_impl=impl, scan_layers=True)
        model = Transformer(cfg)
        tx, lr = make_optimizer(o, 10)
        state = jax.jit(create_train_state, static_argnums=(0, 1, 3))(model, tx, jax.random.PRNGKey(0), 48)
        step = make_train_step(model, tx, lr, 1, jax.random.PRNGKey(1))
        losses = []
        for _ in range(6):
            state, m = step(state, x, y)
            losses.append(float(m["loss"]))
        return losses, state.params

    ref_losses, ref_params = run("reference")
    flash_losses, flash_params = run("flash")
    np.testing.assert_allclose(flash_losses, ref_losses, rtol=1e-4)
    assert ref_losses[-1] < ref_losses[0]
    for a, b in zip(jax.tree_util.tree_leaves(ref_params), jax.tree_util.tree_leaves(flash_params)):
        np.testing.assert_allclose(a, b, atol=2e-4)
