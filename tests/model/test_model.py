"""The transformer: causality, head sharing, positions, KV-cache decoding, scan, counts, configuration."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.errors import ConfigError
from llm.model import ModelConfig, Transformer, count_params, param_count_formula, stack_layers
from llm.model.config import ROPE_SCALINGS, RopeScaling
from llm.model.positions import alibi_slopes, apply_rope, sinusoidal
from llm.model.rope import FREQUENCIES

BASE = dict(vocab_size=37, max_len=32, d_model=32, n_layers=2, n_heads=4)

VARIANTS = {
    "gpt2": dict(),
    "llama": dict(position="rope", norm="rmsnorm", ffn="swiglu", n_kv_heads=2, use_bias=False, tie_embeddings=False),
    "mqa_alibi_window": dict(position="alibi", n_kv_heads=1, window=6, ffn="geglu"),
    "sinusoidal_postnorm_relu": dict(position="sinusoidal", norm_position="post", activation="relu"),
    "nopos_qknorm_softcap": dict(position="none", qk_norm=True, attn_softcap=4.0, attention_impl="chunked"),
    "scan_remat_rope": dict(position="rope", scan_layers=True, remat="full", n_kv_heads=2),
    "shortconv_gqa_scan": dict(position="rope", short_conv=3, n_kv_heads=2, scan_layers=True),
    "yarn_partial_rope": dict(position="rope", rope_scaling="yarn", rope_factor=4.0, rope_original_max_len=8,
                              rotary_fraction=0.5, n_kv_heads=2),
}


def tokens(b, t, seed=0, vocab=37):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (b, t)), jnp.int32)


@functools.cache
def model_and_params(name, **overrides):
    cfg = ModelConfig(**{**BASE, **VARIANTS[name], **overrides})
    model = Transformer(cfg)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), tokens(1, 8))["params"])
    return model, params


@functools.cache
def forward(model):
    return jax.jit(lambda p, x, **kw: model.apply({"params": p}, x, **kw))


@pytest.mark.parametrize("name", VARIANTS)
def test_causality(name):
    """Changing a token changes no logit at an earlier position (and does change later ones)."""
    model, params = model_and_params(name)
    x = tokens(2, 24)
    y = x.at[:, 13].set((x[:, 13] + 5) % 37)
    a, b = forward(model)(params, x), forward(model)(params, y)
    np.testing.assert_array_equal(a[:, :13], b[:, :13])
    assert not np.allclose(a[:, 13:], b[:, 13:])


@pytest.mark.parametrize("name", VARIANTS)
def test_kv_cache_decoding_matches_full_forward(name):
    """Prefill 9 tokens, then decode one at a time: every position's logits equal the full forward pass."""
    model, params = model_and_params(name)
    x = tokens(2, 23, seed=1)
    full = forward(model)(params, x)
    cache = jax.jit(lambda: model.init(jax.random.PRNGKey(0), x[:, :1], decode=True)["cache"])()
    step = jax.jit(lambda p, c, x: model.apply({"params": p, "cache": c}, x, decode=True, mutable=["cache"]))
    logits, cache = step(params, cache, x[:, :9])
    outs = [logits]
    for i in range(9, 23):
        logits, cache = step(params, cache["cache"], x[:, i:i + 1])
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=2e-5, rtol=2e-5)


def test_decoding_left_padded_batch_matches_unpadded():
    """Batched prompts of different lengths: left padding with segment id 0 and per-row positions."""
    model, params = model_and_params("llama")
    short, long = tokens(1, 5, seed=2), tokens(1, 8, seed=3)
    batch = jnp.concatenate([jnp.pad(short, ((0, 0), (3, 0))), long])
    seg = jnp.array([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    pos = jnp.maximum(jnp.cumsum(seg, axis=1) - 1, 0)
    cache = model.init(jax.random.PRNGKey(0), batch, decode=True)["cache"]
    logits, _ = model.apply({"params": params, "cache": cache}, batch, positions_BT=pos, segment_ids_BT=seg,
                            decode=True, mutable=["cache"])
    np.testing.assert_allclose(logits[0, 3:], forward(model)(params, short)[0], atol=2e-5)
    np.testing.assert_allclose(logits[1], forward(model)(params, long)[0], atol=2e-5)


@pytest.mark.parametrize("name", ["gpt2", "shortconv_gqa_scan"])
def test_packed_documents_do_not_interact(name):
    """Two documents packed in one row (segment ids, positions restarting) = each document alone."""
    model, params = model_and_params(name)
    a, b = tokens(1, 10, seed=4), tokens(1, 14, seed=5)
    packed = jnp.concatenate([a, b], axis=1)
    seg = jnp.array([[1] * 10 + [2] * 14])
    pos = jnp.array([list(range(10)) + list(range(14))])
    out = forward(model)(params, packed, positions_BT=pos, segment_ids_BT=seg)
    np.testing.assert_allclose(out[:, :10], forward(model)(params, a), atol=2e-5)
    np.testing.assert_allclose(out[:, 10:], forward(model)(params, b), atol=2e-5)


def _with_repeated_kv(params, group):
    """Copy of params where each key/value head is repeated `group` times (GQA weights -> MHA weights)."""

    def expand(path, x):
        names = [getattr(p, "key", "") for p in path]
        if ("key" in names or "value" in names) and names[-1] in ("kernel", "bias"):
            return jnp.repeat(x, group, axis=-2)  # kernel [E, K, D] or bias [K, D]
        return x

    return jax.tree_util.tree_map_with_path(expand, params)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_equals_mha_with_repeated_kv(kv_heads):
    """GQA (and MQA, kv_heads=1) is MHA whose key/value heads are shared within groups."""
    gqa, params = model_and_params("gpt2", n_kv_heads=kv_heads)
    mha, _ = model_and_params("gpt2", n_kv_heads=4)
    x = tokens(2, 16)
    np.testing.assert_allclose(forward(gqa)(params, x), forward(mha)(_with_repeated_kv(params, 4 // kv_heads), x),
                               atol=2e-5)


def test_explicit_kv_heads_equal_n_heads_is_mha():
    mha, params = model_and_params("gpt2")
    same, params2 = model_and_params("gpt2", n_kv_heads=4)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(params2)
    x = tokens(2, 12)
    np.testing.assert_array_equal(forward(mha)(params, x), forward(same)(params, x))


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)

    def score(m, n):
        qm = apply_rope(q, jnp.array([[m]]), 10000.0)
        kn = apply_rope(k, jnp.array([[n]]), 10000.0)
        return float(jnp.sum(qm * kn))

    assert score(7, 3) == pytest.approx(score(107, 103), abs=1e-4)
    assert score(0, 5) == pytest.approx(score(20, 25), abs=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)
    # RoPE is a rotation: norms are preserved.
    np.testing.assert_allclose(jnp.linalg.norm(apply_rope(q, jnp.array([[42]]), 500.0)), jnp.linalg.norm(q),
                               rtol=1e-5)


def test_rope_base_is_used():
    model_a, params = model_and_params("llama")
    model_b, _ = model_and_params("llama", rope_base=500.0)
    x = tokens(1, 16)
    assert not np.allclose(forward(model_a)(params, x), forward(model_b)(params, x))


def test_unscaled_rope_is_the_plain_formula_bit_for_bit():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 5, 3, 16)), jnp.float32)
    positions = jnp.asarray(rng.integers(0, 1000, (2, 5)))
    inv_freq = 500.0 ** (-np.arange(0, 16, 2, dtype=np.float32) / 16)
    angle = positions[..., None].astype(jnp.float32) * inv_freq
    cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]
    x1, x2 = jnp.split(x, 2, axis=-1)
    want = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    assert np.asarray(apply_rope(x, positions, 500.0)).tobytes() == np.asarray(want).tobytes()


def test_every_rope_scaling_has_its_frequencies():
    assert tuple(FREQUENCIES) == ROPE_SCALINGS


def numpy_rope(x, positions, inv_freq, scale=1.0):
    """Rotate-half RoPE in float64 on the first 2 * len(inv_freq) channels; cos and sin times `scale`."""
    r = 2 * len(inv_freq)
    angle = positions[..., None] * inv_freq
    cos, sin = scale * np.cos(angle)[:, :, None, :], scale * np.sin(angle)[:, :, None, :]
    x1, x2, rest = x[..., :r // 2], x[..., r // 2:r], x[..., r:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


def llama3_inv_freq(base, dim, factor, low, high, original):
    """Meta's `apply_scaling` (llama-models, Llama 3.1), one frequency at a time."""
    out = []
    for f in 1.0 / base ** (np.arange(0, dim, 2) / dim):
        wavelen = 2 * np.pi / f
        if wavelen < original / high:
            out.append(f)
        elif wavelen > original / low:
            out.append(f / factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return np.array(out)


def yarn_inv_freq(base, dim, factor, original, beta_fast=32, beta_slow=1):
    """YaRN's reference (jquesnelle/yarn): frequency index i is interpolated by a ramp from 0 (kept) at the index
    that turns beta_fast times over the original context to 1 (divided by factor) at the one that turns beta_slow
    times, both rounded outwards."""
    def index_turning(turns):  # solve original * base^(-2i/dim) / (2 pi) = turns for i
        return dim / 2 * np.log(original / (2 * np.pi * turns)) / np.log(base)
    low, high = max(np.floor(index_turning(beta_fast)), 0), min(np.ceil(index_turning(beta_slow)), dim - 1)
    ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
    plain = base ** (-np.arange(0, dim, 2) / dim)
    return plain * (1 - ramp) + plain / factor * ramp


@pytest.mark.parametrize("kind", ["llama3", "yarn"])
def test_scaled_rope_matches_a_numpy_reference(kind):
    """llama3 on all 32 channels of a head, yarn on the first 24 (partial rotary): against from-scratch float64
    versions of the published recipes."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 3, 32))
    positions = rng.integers(0, 200, (2, 6))
    if kind == "llama3":
        scaling, dim = RopeScaling("llama3", 8.0, 64, low_freq_factor=1.0, high_freq_factor=4.0), 32
        want = numpy_rope(x, positions, llama3_inv_freq(1e4, dim, 8.0, 1.0, 4.0, 64))
    else:
        scaling, dim = RopeScaling("yarn", 4.0, 64), 24
        want = numpy_rope(x, positions, yarn_inv_freq(1e4, dim, 4.0, 64), scale=0.1 * np.log(4.0) + 1)
    got = apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(positions), 1e4, scaling, rotary_dim=dim)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    assert not np.allclose(got, numpy_rope(x, positions, 1e4 ** (-np.arange(0, dim, 2) / dim)), atol=1e-2)


def test_sinusoidal_table():
    pe = np.asarray(sinusoidal(jnp.arange(50)[None], 8))[0]
    pos, i = 17, 2
    assert pe[pos, 2 * i] == pytest.approx(np.sin(pos / 10000 ** (2 * i / 8)), abs=1e-5)
    assert pe[pos, 2 * i + 1] == pytest.approx(np.cos(pos / 10000 ** (2 * i / 8)), abs=1e-5)


def test_alibi_slopes():
    np.testing.assert_allclose(alibi_slopes(8), 2.0 ** -np.arange(1, 9))
    # Non-power-of-two: the 4 slopes of 4 heads, then every other of 8 heads.
    np.testing.assert_allclose(alibi_slopes(6), [*(2.0 ** -np.arange(2, 10, 2)), 2 ** -1, 2 ** -3])


def test_scan_equals_unrolled_with_same_weights():
    unrolled, params = model_and_params("llama")
    scanned, _ = model_and_params("llama", scan_layers=True)
    x = tokens(2, 16)
    np.testing.assert_allclose(forward(scanned)(stack_layers(params), x), forward(unrolled)(params, x), atol=1e-5)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_does_not_change_gradients(policy):
    plain, params = model_and_params("llama")
    remat, _ = model_and_params("llama", remat=policy)
    x = tokens(2, 16)

    def grads(model):
        return jax.jit(jax.grad(lambda p: jnp.mean(model.apply({"params": p}, x) ** 2)))(params)

    for a, b in zip(jax.tree_util.tree_leaves(grads(plain)), jax.tree_util.tree_leaves(grads(remat)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", ["gpt2", "llama", "mqa_alibi_window", "sinusoidal_postnorm_relu",
                                  "shortconv_gqa_scan"])
def test_param_count_matches_closed_form(name):
    model, params = model_and_params(name)
    assert count_params(params) == param_count_formula(model.cfg)["total"]


def test_gpt2_small_param_count():
    """GPT-2 124M: the published 124,439,808 parameters (tied embeddings, learned positions, biases)."""
    cfg = ModelConfig(vocab_size=50257, max_len=1024, d_model=768, n_layers=12, n_heads=12)
    assert param_count_formula(cfg)["total"] == 124_439_808
    # And the formula agrees with an actual (abstract) init of that model.
    shapes = jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    assert count_params(nn.unbox(shapes["params"])) == 124_439_808


def test_every_param_has_logical_axis_names():
    cfg = ModelConfig(**{**BASE, **VARIANTS["llama"], "scan_layers": True, "qk_norm": True})
    boxed = jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim
    names = {n for leaf in leaves for n in leaf.names}
    assert {"vocab", "embed", "heads", "kv_heads", "kv", "mlp", "layers"} <= names


def test_bfloat16_compute_is_close_to_float32():
    f32, params = model_and_params("llama")
    bf16, _ = model_and_params("llama", dtype="bfloat16")
    x = tokens(2, 16)
    a, b = forward(f32)(params, x), forward(bf16)(params, x)
    assert b.dtype == jnp.float32  # logits are returned in float32
    # Within four bfloat16 roundings (2^-8 each, relative) of the logits' scale: measured 0.4-0.5% of max|logit|
    # (0.0018-0.0022 here), so the bound (about 0.007) is 3-4x the real error.
    np.testing.assert_allclose(a, b, atol=4 * 2.0**-8 * float(np.abs(a).max()), rtol=0)
    assert not np.array_equal(a, b)


def test_bfloat16_matmuls_are_close_to_float32():
    """model.matmul_dtype: bfloat16 operands, float32 sums and activations; logits and gradients within the
    operands' rounding of the float32 model's, parameters and gradients still float32. GPT-2's tied output
    projection multiplies by the embedding's transpose, the case XLA:CPU needed care for (tests/ops/test_matmul.py)."""
    f32, params = model_and_params("gpt2")
    low, _ = model_and_params("gpt2", matmul_dtype="bfloat16")
    x = tokens(2, 16)

    def loss_and_grads(model):
        return jax.jit(jax.value_and_grad(lambda p: jnp.mean(model.apply({"params": p}, x) ** 2)))(params)

    a, b = forward(f32)(params, x), forward(low)(params, x)
    assert b.dtype == jnp.float32 and not np.array_equal(a, b)
    np.testing.assert_allclose(a, b, atol=0.02 * float(np.abs(a).max()))
    (la, ga), (lb, gb) = loss_and_grads(f32), loss_and_grads(low)
    np.testing.assert_allclose(la, lb, rtol=0.02)
    for u, v in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb), strict=True):
        assert v.dtype == jnp.float32
        u, v = np.asarray(u), np.asarray(v)
        # 1e-8: the key biases' gradients are zero up to float32 noise (softmax ignores a shift of all scores).
        assert float(np.linalg.norm(u - v)) <= 0.02 * float(np.linalg.norm(u)) + 1e-8


def test_dropout_only_in_training():
    model, params = model_and_params("gpt2", dropout=0.3)
    x = tokens(2, 12)
    apply = jax.jit(lambda p, x, r: model.apply({"params": p}, x, train=True, rngs={"dropout": r}))
    a = apply(params, x, jax.random.PRNGKey(1))
    b = apply(params, x, jax.random.PRNGKey(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(forward(model)(params, x), forward(model)(params, x))


def test_untied_embeddings_have_own_output_matrix():
    _, tied = model_and_params("gpt2")
    _, untied = model_and_params("gpt2", tie_embeddings=False)
    assert "unembed" not in tied and untied["unembed"]["kernel"].shape == (32, 37)


@pytest.mark.parametrize("overrides, message", [
    (dict(d_model=30), "not divisible by model.n_heads"),
    (dict(n_kv_heads=3), "not divisible by model.n_kv_heads"),
    (dict(window=64), "larger than the context"),
    (dict(position="spiral"), "model.position='spiral' is not one of: learned, sinusoidal, rope, alibi, none"),
    (dict(attention_impl="magic"), "reference, dense, xla, cudnn, chunked, flash"),
    (dict(n_layers=0), "model.n_layers must be positive"),
    (dict(n_layers=2.5), "model.n_layers must be int"),
    (dict(dropout=1.5), "dropout must be in"),
    (dict(attn_softcap=3.0, attention_impl="xla"), "no logit soft-cap"),
    (dict(short_conv=-1), "model.short_conv is a kernel size >= 0"),
    (dict(colour="blue"), "unknown model config key"),
    (dict(matmul_dtype="int8"), "model.matmul_dtype='int8' is not one of: float32, bfloat16, float16"),
    (dict(position="rope", rope_scaling="ntk"), "model.rope_scaling='ntk' is not one of: none, linear, dynamic"),
    (dict(rope_scaling="linear"), "apply to position='rope' only"),
    (dict(position="rope", rope_scaling="yarn"), "needs model.rope_original_max_len"),
    (dict(position="rope", rope_factor=0.0), "model.rope_factor must be positive"),
    (dict(position="rope", rope_scaling="llama3", rope_original_max_len=16, rope_low_freq_factor=4.0),
     "model.rope_low_freq_factor=4.0 must be below model.rope_high_freq_factor=4.0"),
    (dict(position="rope", rope_scaling="longrope", rope_original_max_len=16, rope_short_factor="1,2",
          rope_long_factor="1,2,3,4"), "model.rope_short_factor='1,2' must be 4 comma-separated positive numbers"),
    (dict(position="rope", rope_scaling="longrope", rope_original_max_len=16, rope_short_factor="1,2,3,4",
          rope_long_factor="1,x,3,4"), "model.rope_long_factor='1,x,3,4' must be 4"),
    (dict(position="rope", rotary_fraction=1.5), "model.rotary_fraction must be in (0, 1]"),
    (dict(position="rope", rotary_fraction=0.1), "0.1) = 0 channels, which must be even and > 0"),
    (dict(position="rope", rotary_fraction=0.4), "0.4) = 3 channels, which must be even"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig.from_dict({**BASE, **overrides})


def test_config_from_dict_roundtrip():
    cfg = ModelConfig.from_dict({**BASE, **VARIANTS["llama"], "rope_base": 500})
    assert cfg.rope_base == 500.0 and isinstance(cfg.rope_base, float)
    assert ModelConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    assert cfg.hidden_ff == 128  # 8/3 * 32 = 85.3, rounded up to a multiple of 64
