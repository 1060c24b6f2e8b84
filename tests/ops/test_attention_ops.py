"""Every attention implementation against a from-scratch NumPy computation (tests/attention_oracle.py) in its
outputs, and against the `reference` implementation's gradients, which finite differences of the NumPy oracle
check in turn."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_oracle import oracle

from llm.ops.attention import AttentionSpec, attention, attention_weights, make_mask, missing

# (name, B, Tq, Tk, H, K, D, options)
CASES = [
    ("causal_mha", 2, 16, 16, 4, 4, 8, dict(causal=True)),
    ("noncausal_mha", 2, 16, 16, 4, 4, 8, dict(causal=False)),
    ("causal_gqa_odd", 1, 37, 37, 4, 2, 16, dict(causal=True)),
    ("causal_mqa_custom_scale", 2, 19, 19, 4, 1, 8, dict(causal=True, scale=0.3)),
    ("window_causal", 1, 33, 33, 2, 2, 8, dict(causal=True, window=6)),
    ("segments", 2, 24, 24, 4, 2, 8, dict(causal=True, segments=True)),
    ("segments_noncausal_window_mqa", 1, 24, 24, 2, 1, 8, dict(causal=False, window=5, segments=True)),
    ("alibi", 1, 17, 17, 4, 2, 8, dict(causal=True, alibi=True)),
    ("decode_offset", 2, 3, 29, 4, 2, 8, dict(causal=True, q_offset=11)),
    ("decode_one_window_segments", 2, 1, 20, 2, 1, 8, dict(causal=True, q_offset=15, window=7, segments=True)),
    ("softcap_gqa", 2, 23, 23, 4, 2, 8, dict(causal=True, softcap=2.5)),
    ("alibi_window_segments_offset_softcap", 2, 5, 26, 4, 2, 8,
     dict(causal=True, q_offset=21, window=9, segments=True, alibi=True, softcap=3.0)),
    ("alibi_noncausal_window_mqa", 1, 14, 14, 4, 1, 8, dict(causal=False, alibi=True, window=6)),
]
BF16_CASES = ("causal_gqa_odd", "window_causal", "segments", "decode_offset")  # bfloat16: a representative few


def make_inputs(b, tq, tk, h, kh, d, opts, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
               for shape in [(b, tq, h, d), (b, tk, kh, d), (b, tk, kh, d)])
    kw = dict(causal=opts["causal"], window=opts.get("window"), scale=opts.get("scale"), softcap=opts.get("softcap"))
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


def oracle_of(q, k, v, kw):
    """The NumPy oracle's (out, probs) for the arguments `make_inputs` made."""
    seg = kw.get("segment_ids")
    return oracle(q, k, v, causal=kw["causal"], window=kw["window"], q_offset=kw.get("q_offset", 0),
                  scale=kw["scale"], softcap=kw["softcap"], alibi_slopes=kw.get("alibi_slopes"),
                  q_segments=None if seg is None else np.asarray(seg),
                  k_segments=None if seg is None else np.asarray(kw["kv_segment_ids"]))


def spec_and_args(kw, impl="reference"):
    """`make_inputs`' keywords as an AttentionSpec (for `impl`) and the arguments beside it."""
    fields = ("causal", "window", "scale", "softcap")
    return AttentionSpec(impl, **{n: kw[n] for n in fields}), {n: x for n, x in kw.items() if n not in fields}


def arrays_and_static(args: dict) -> tuple[dict, dict]:
    """`spec_and_args`' arguments split into the arrays (traced under jit) and the rest (closed over)."""
    arrays = {n: x for n, x in args.items() if isinstance(x, jax.Array)}
    return arrays, {n: x for n, x in args.items() if n not in arrays}


def uses(kw) -> dict[str, bool]:
    return {"softcap": kw["softcap"] is not None, "alibi": kw.get("alibi_slopes") is not None,
            "window": kw["window"] is not None, "q_offset": bool(kw.get("q_offset"))}


def loss_and_grads(impl, q, k, v, kw, extra, w=None):
    """Output and (dq, dk, dv) of a random projection of the output (`w`), compiled as one program."""
    spec, args = spec_and_args(kw, impl)
    arrays, static = arrays_and_static(args)

    # A fixed random projection of the output, so each output element gets its own cotangent.
    if w is None:
        w = np.random.default_rng(7).standard_normal(q.shape, np.float32)

    @jax.jit
    def run(q, k, v, arrays):
        def f(q, k, v):
            out = attention(q, k, v, spec, **arrays, **static, **extra)
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


CASE_DTYPES = [pytest.param(case, jnp.float32, id=f"{case[0]}-f32") for case in CASES] + [
    pytest.param(case, jnp.bfloat16, id=f"{case[0]}-bf16") for case in CASES if case[0] in BF16_CASES]


@pytest.mark.parametrize("impl", ["reference", "xla", "chunked", "dense"])
@pytest.mark.parametrize("case, dtype", CASE_DTYPES)
def test_matches_the_oracle(impl, case, dtype):
    """Outputs against the NumPy oracle, gradients against the reference implementation's."""
    name, b, tq, tk, h, kh, d, opts = case
    q, k, v, kw = make_inputs(b, tq, tk, h, kh, d, opts, dtype)
    if missing(impl, **uses(kw)):
        pytest.skip(f"{impl} has no {', '.join(missing(impl, **uses(kw)))} (llm/ops/attention/capabilities.py)")
    out, grads = loss_and_grads(impl, q, k, v, kw, IMPL_EXTRA.get(impl, {}))
    assert out.dtype == dtype and out.shape == (b, tq, h, d)
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == jnp.float32 else dict(atol=6e-2, rtol=6e-2)
    np.testing.assert_allclose(np.float32(out), oracle_of(q, k, v, kw)[0], **tol)
    if impl != "reference":
        for g, rg in zip(grads, reference_for(name, dtype)[1], strict=True):
            np.testing.assert_allclose(np.float32(g), np.float32(rg), **tol)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_attention_weights_are_the_oracles_probabilities(case):
    _, b, tq, tk, h, kh, d, opts = case
    q, k, v, kw = make_inputs(b, tq, tk, h, kh, d, opts, jnp.float32)
    spec, args = spec_and_args(kw)
    arrays, static = arrays_and_static(args)
    probs = jax.jit(lambda q, k, arrays: attention_weights(q, k, spec, **arrays, **static))(q, k, arrays)
    np.testing.assert_allclose(np.asarray(probs), oracle_of(q, k, v, kw)[1], atol=1e-6)


def test_reference_gradients_match_finite_differences():
    """d(sum(out * w))/d(q, k, v) of the reference against central differences of the NumPy oracle, with every
    feature on (GQA, window, segments, ALiBi, soft-cap, a query offset)."""
    q, k, v, kw = make_inputs(1, 3, 7, 2, 1, 4, dict(causal=True, q_offset=4, window=4, segments=True, alibi=True,
                                                     softcap=2.0), jnp.float32)
    w = np.random.default_rng(3).standard_normal(q.shape)
    _, grads = loss_and_grads("reference", q, k, v, kw, {}, w=w.astype(np.float32))
    arrays = [np.asarray(x, np.float64) for x in (q, k, v)]
    eps = 1e-5
    for which, grad in enumerate(grads):
        numeric = np.zeros_like(arrays[which])
        for index in np.ndindex(numeric.shape):
            plus, minus = [a.copy() for a in arrays], [a.copy() for a in arrays]
            plus[which][index] += eps
            minus[which][index] -= eps
            numeric[index] = (np.sum(oracle_of(*plus, kw)[0] * w) - np.sum(oracle_of(*minus, kw)[0] * w)) / (2 * eps)
        np.testing.assert_allclose(np.asarray(grad), numeric, atol=2e-4, rtol=1e-3)


def test_dense_with_traced_offset_matches_reference():
    """A traced query offset (KV-cache decoding under jit): the blocks span all keys, the mask does the rest."""
    q, k, v, _ = make_inputs(2, 6, 29, 4, 2, 8, dict(causal=True, window=9), jnp.float32)
    run = jax.jit(lambda off, impl: attention(q, k, v, AttentionSpec(impl, causal=True, window=9), q_offset=off,
                                              **({"block_q": 4} if impl == "dense" else {})), static_argnums=1)
    for off in (0, 11, 23):
        np.testing.assert_allclose(run(jnp.int32(off), "dense"), run(jnp.int32(off), "reference"), atol=2e-5)


def test_dense_skips_invisible_key_blocks():
    """Causal 4 x 16-row blocks over 64 keys compute 10/16 of the scores: XLA's FLOP count drops accordingly."""
    q, k, v, _ = make_inputs(1, 64, 64, 2, 2, 32, dict(causal=True), jnp.float32)

    def flops(block_q):
        f = jax.jit(jax.grad(lambda q, k, v: attention(q, k, v, AttentionSpec("dense"), block_q=block_q).sum(),
                             (0, 1, 2)))
        cost = f.lower(q, k, v).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]  # a list of dicts in some jax versions

    ratio = flops(16) / flops(64)
    assert 0.55 < ratio < 0.75, ratio


def test_fully_masked_rows_are_zero():
    q, k, v, _ = make_inputs(1, 4, 4, 2, 2, 4, dict(causal=True), jnp.float32)
    seg_q = jnp.array([[5, 5, 5, 5]])
    seg_k = jnp.array([[1, 1, 1, 1]])
    for impl in ("reference", "chunked", "dense"):
        out, grads = loss_and_grads(impl, q, k, v, dict(causal=False, window=None, scale=None, softcap=None,
                                                        segment_ids=seg_q, kv_segment_ids=seg_k), {})
        assert np.all(np.asarray(out) == 0), impl
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
        f = jax.grad(lambda q, k, v: attention(q, k, v, AttentionSpec(impl), **extra).sum(), argnums=(0, 1, 2))
        return jax.jit(f).lower(q, q, q).compile().memory_analysis().temp_size_in_bytes

    ref = temp_bytes("reference")
    chunked = temp_bytes("chunked", block_k=128)
    assert ref > 4 * t * t * h  # at least the float32 scores
    assert chunked < ref / 8, (chunked, ref)


@pytest.mark.parametrize("spec, bad, message", [
    (AttentionSpec("nope"), {}, "unknown attention impl"),
    (AttentionSpec(window=0), {}, "window must be a positive"),
    (AttentionSpec("xla", softcap=1.0), {}, "no logit soft-cap"),
    (AttentionSpec("cudnn"), dict(q_offset=3), "no query offset"),
])
def test_bad_arguments(spec, bad, message):
    q, k, v, _ = make_inputs(1, 4, 4, 2, 2, 4, dict(causal=True), jnp.float32)
    with pytest.raises(ValueError, match=message):
        attention(q, k, v, spec, **bad)


def test_heads_must_divide():
    q = jnp.zeros((1, 4, 3, 4))
    k = jnp.zeros((1, 4, 2, 4))
    with pytest.raises(ValueError, match="do not divide"):
        attention(q, k, k)


ON_GPU = jax.default_backend() == "gpu"


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a GPU")
@pytest.mark.parametrize("opts", [dict(causal=True), dict(causal=True, window=64, segments=True),
                                  dict(causal=True, alibi=True)], ids=["causal_gqa", "window_segments", "alibi"])
def test_cudnn_matches_the_oracle(opts):
    """cuDNN's fused attention (GPU only) in bfloat16 against the NumPy oracle, its gradients against the
    reference's: what the capability table says it supports, it computes."""
    q, k, v, kw = make_inputs(1, 128, 128, 4, 2, 64, opts, jnp.bfloat16)
    out, grads = loss_and_grads("cudnn", q, k, v, kw, {})
    _, ref_grads = loss_and_grads("reference", q, k, v, kw, {})
    tol = dict(atol=6e-2, rtol=6e-2)
    np.testing.assert_allclose(np.float32(out), oracle_of(q, k, v, kw)[0], **tol)
    for g, rg in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.float32(g), np.float32(rg), **tol)
