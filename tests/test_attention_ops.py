"""Every attention implementation against the `reference` definition, in outputs and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.ops.attention import attention, make_mask

# (name, B, Tq, Tk, H, K, D, options)
CASES = [
    ("causal_mha", 2, 16, 16, 4, 4, 8, dict(causal=True)),
    ("noncausal_mha", 2, 16, 16, 4, 4, 8, dict(causal=False)),
    ("causal_gqa_odd", 1, 37, 37, 4, 2, 16, dict(causal=True)),
    ("causal_mqa", 2, 19, 19, 4, 1, 8, dict(causal=True)),
    ("window_causal", 1, 33, 33, 2, 2, 8, dict(causal=True, window=6)),
    ("window_noncausal", 1, 21, 21, 2, 1, 8, dict(causal=False, window=4)),
    ("segments", 2, 24, 24, 4, 2, 8, dict(causal=True, segments=True)),
    ("segments_noncausal_window", 1, 24, 24, 2, 2, 8, dict(causal=False, window=5, segments=True)),
    ("alibi", 1, 17, 17, 4, 2, 8, dict(causal=True, alibi=True)),
    ("decode_offset", 2, 3, 29, 4, 2, 8, dict(causal=True, q_offset=11)),
    ("decode_window_segments", 2, 1, 20, 2, 1, 8, dict(causal=True, q_offset=15, window=7, segments=True)),
    ("custom_scale", 1, 12, 12, 2, 2, 8, dict(causal=True, scale=0.3)),
]


def make_inputs(b, tq, tk, h, kh, d, opts, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
               for shape in [(b, tq, h, d), (b, tk, kh, d), (b, tk, kh, d)])
    kw = dict(causal=opts["causal"], window=opts.get("window"), scale=opts.get("scale"))
    if opts.get("q_offset"):
        kw["q_offset"] = opts["q_offset"]
    if opts.get("segments"):
        # Three documents per row with random boundaries; queries take the ids of their slots.
        cuts = np.sort(np.random.default_rng(seed).integers(1, tk, size=(b, 2)), axis=1)
        kv_seg = (np.arange(tk)[None] >= cuts[:, :1]).astype(np.int32) + (np.arange(tk)[None] >= cuts[:, 1:])
        off = opts.get("q_offset", 0)
        kw["segment_ids"] = jnp.asarray(kv_seg[:, off:off + tq])
        kw["kv_segment_ids"] = jnp.asarray(kv_seg)
    if opts.get("alibi"):
        kw["alibi_slopes"] = jnp.asarray(2.0 ** -np.arange(1, h + 1), jnp.float32)
    return q, k, v, kw


def loss_and_grads(impl, q, k, v, kw, extra):
    """Output and (dq, dk, dv) of a random projection of the output, compiled as one program."""
    arrays = {n: x for n, x in kw.items() if isinstance(x, jax.Array)}
    static = {n: x for n, x in kw.items() if n not in arrays}

    # A fixed random projection of the output, so each output element gets its own cotangent.
    w = np.random.default_rng(7).standard_normal(q.shape, np.float32)

    @jax.jit
    def run(q, k, v, arrays):
        def f(q, k, v):
            out = attention(q, k, v, impl=impl, **arrays, **static, **extra)
            return jnp.sum(out.astype(jnp.float32) * w), out

        (_, out), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    return run(q, k, v, arrays)


@functools.cache
def reference_for(case_name, dtype):
    _, b, tq, tk, h, kh, d, opts = next(c for c in CASES if c[0] == case_name)
    q, k, v, kw = make_inputs(b, tq, tk, h, kh, d, opts, dtype)
    return loss_and_grads("reference", q, k, v, kw, {})


# dense: 5-row query blocks, so most cases have several blocks and the causal / windowed ones skip key ranges.
IMPL_EXTRA = {"xla": {}, "chunked": {"block_k": 8}, "dense": {"block_q": 5}}


@pytest.mark.parametrize("impl", ["xla", "chunked", "dense"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_matches_reference(impl, case, dtype):
    _, b, tq, tk, h, kh, d, opts = case
    q, k, v, kw = make_inputs(b, tq, tk, h, kh, d, opts, dtype)
    out, grads = loss_and_grads(impl, q, k, v, kw, IMPL_EXTRA[impl])
    ref_out, ref_grads = reference_for(case[0], dtype)
    assert out.dtype == dtype and out.shape == (b, tq, h, d)
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == jnp.float32 else dict(atol=6e-2, rtol=6e-2)
    np.testing.assert_allclose(np.float32(out), np.float32(ref_out), **tol)
    for g, rg in zip(grads, ref_grads):
        np.testing.assert_allclose(np.float32(g), np.float32(rg), **tol)


@pytest.mark.parametrize("impl, extra", [("chunked", {"block_k": 5}), ("dense", {"block_q": 5})])
def test_softcap_matches_reference(impl, extra):
    q, k, v, kw = make_inputs(2, 23, 23, 4, 2, 8, dict(causal=True), jnp.float32)
    kw["softcap"] = 2.5
    out, grads = loss_and_grads(impl, q, k, v, kw, extra)
    ref_out, ref_grads = loss_and_grads("reference", q, k, v, kw, {})
    np.testing.assert_allclose(out, ref_out, atol=2e-5)
    for g, rg in zip(grads, ref_grads):
        np.testing.assert_allclose(g, rg, atol=2e-5)


def test_dense_with_traced_offset_matches_reference():
    """A traced query offset (KV-cache decoding under jit): the blocks span all keys, the mask does the rest."""
    q, k, v, _ = make_inputs(2, 6, 29, 4, 2, 8, dict(causal=True, window=9), jnp.float32)
    run = jax.jit(lambda off, impl: attention(q, k, v, impl=impl, q_offset=off, causal=True, window=9,
                                              **({"block_q": 4} if impl == "dense" else {})), static_argnums=1)
    for off in (0, 11, 23):
        np.testing.assert_allclose(run(jnp.int32(off), "dense"), run(jnp.int32(off), "reference"), atol=2e-5)


def test_dense_skips_invisible_key_blocks():
    """Causal 4 x 16-row blocks over 64 keys compute 10/16 of the scores: XLA's FLOP count drops accordingly."""
    q, k, v, _ = make_inputs(1, 64, 64, 2, 2, 32, dict(causal=True), jnp.float32)

    def flops(block_q):
        f = jax.jit(jax.grad(lambda q, k, v: attention(q, k, v, impl="dense", block_q=block_q).sum(), (0, 1, 2)))
        cost = f.lower(q, k, v).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]  # a list of dicts in some jax versions

    ratio = flops(16) / flops(64)
    assert 0.55 < ratio < 0.75, ratio


def test_reference_is_softmax_attention():
    """The reference against a from-scratch numpy computation (MHA, causal)."""
    q, k, v, _ = make_inputs(1, 6, 6, 2, 2, 4, dict(causal=True), jnp.float32)
    out = np.asarray(attention(q, k, v, impl="reference", causal=True))
    qn, kn, vn = (np.asarray(x, np.float64) for x in (q, k, v))
    for hd in range(2):
        s = qn[0, :, hd] @ kn[0, :, hd].T / 2.0
        s[np.triu_indices(6, 1)] = -np.inf
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        np.testing.assert_allclose(out[0, :, hd], p @ vn[0, :, hd], atol=1e-5)


def test_fully_masked_rows_are_zero():
    q, k, v, _ = make_inputs(1, 4, 4, 2, 2, 4, dict(causal=True), jnp.float32)
    seg_q = jnp.array([[5, 5, 5, 5]])
    seg_k = jnp.array([[1, 1, 1, 1]])
    for impl in ("reference", "chunked", "dense"):
        out = attention(q, k, v, impl=impl, causal=False, segment_ids=seg_q, kv_segment_ids=seg_k)
        assert np.all(np.asarray(out) == 0), impl
        loss = functools.partial(lambda q, k, v, impl: attention(
            q, k, v, impl=impl, causal=False, segment_ids=seg_q, kv_segment_ids=seg_k).sum(), impl=impl)
        grads = jax.grad(loss, (0, 1, 2))(q, k, v)
        assert all(np.all(np.asarray(g) == 0) for g in grads), impl


def test_mask_rule():
    m = np.asarray(make_mask(5, 5, causal=True, window=2))[0, 0]
    expected = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(m, expected)
    m = np.asarray(make_mask(2, 5, causal=True, window=None, q_offset=2))[0, 0]
    np.testing.assert_array_equal(m, np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool))


def test_chunked_memory_is_linear_in_length():
    """Compiled temp memory of forward+backward: chunked stays far below the reference's T^2 scores."""
    t, h, d = 2048, 2, 16
    q = jax.ShapeDtypeStruct((1, t, h, d), jnp.float32)

    def temp_bytes(impl, **extra):
        f = jax.grad(lambda q, k, v: attention(q, k, v, impl=impl, **extra).sum(), argnums=(0, 1, 2))
        return jax.jit(f).lower(q, q, q).compile().memory_analysis().temp_size_in_bytes

    ref = temp_bytes("reference")
    chunked = temp_bytes("chunked", block_k=128)
    assert ref > 4 * t * t * h  # at least the float32 scores
    assert chunked < ref / 8, (chunked, ref)


@pytest.mark.parametrize("bad, message", [
    (dict(impl="nope"), "unknown attention impl"),
    (dict(window=0), "window must be a positive"),
    (dict(impl="xla", softcap=1.0), "no logit soft-cap"),
])
def test_bad_arguments(bad, message):
    q, k, v, _ = make_inputs(1, 4, 4, 2, 2, 4, dict(causal=True), jnp.float32)
    with pytest.raises(ValueError, match=message):
        attention(q, k, v, **bad)


def test_heads_must_divide():
    q = jnp.zeros((1, 4, 3, 4))
    k = jnp.zeros((1, 4, 2, 4))
    with pytest.raises(ValueError, match="do not divide"):
        attention(q, k, k)
