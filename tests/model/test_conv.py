"""The short causal depthwise convolution (llm/model/conv.py) against a direct loop, and its decode cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.model import ModelConfig, Transformer
from llm.model.conv import ShortConv, causal_conv


def naive_conv(x, w, seg):
    """y[b, t] = sum_j w[j] * x[b, t - j] over j with t - j >= 0 and seg[b, t - j] == seg[b, t]."""
    y = np.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            for j in range(w.shape[0]):
                if t - j >= 0 and seg[b, t - j] == seg[b, t]:
                    y[b, t] += w[j] * x[b, t - j]
    return y


@pytest.mark.parametrize("kernel", [1, 2, 4])
def test_causal_conv_equals_direct_loop_with_document_boundaries(kernel):
    rng = np.random.default_rng(kernel)
    x = rng.standard_normal((2, 11, 3, 5)).astype(np.float32)
    w = rng.standard_normal((kernel, 3, 5)).astype(np.float32)
    seg = np.array([[1] * 4 + [2] * 7, [0] * 2 + [1] * 9])
    np.testing.assert_allclose(causal_conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(seg)),
                               naive_conv(x, w, seg), atol=1e-6)
    # No segment ids: one document per row.
    np.testing.assert_allclose(causal_conv(jnp.asarray(x), jnp.asarray(w)), naive_conv(x, w, np.ones((2, 11))),
                               atol=1e-6)


def test_decoding_in_pieces_and_rewinding_the_index_equals_the_full_convolution():
    """Feed 5 inputs, then 3 garbage ones, rewind the index to 5 (chat's bucketed prefill), then the rest one at a
    time: every output equals the convolution of the whole sequence."""
    conv = ShortConv(3, ("heads", "kv"), max_len=16, decode=True)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 12, 2, 4)), jnp.float32)
    variables = jax.jit(lambda x: conv.init(jax.random.PRNGKey(0), x, None, jnp.int32(0)))(x[:, :1])
    params = nn.unbox(variables["params"])
    want = causal_conv(x, params["kernel"])
    cache = variables["cache"]
    step = jax.jit(lambda c, x, i: conv.apply({"params": params, "cache": c}, x, None, i, mutable=["cache"]))
    y, c = step(cache, x[:, :5], jnp.int32(0))
    outs = [y]
    _, c = step(c["cache"], x[:, 5:8] * 100 + 7, jnp.int32(5))  # written at slots 5-7, then overwritten
    for i in range(5, 12):
        y, c = step(c["cache"], x[:, i:i + 1], jnp.int32(i))
        outs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), want, atol=1e-6)


def test_short_conv_gives_one_layer_the_previous_token():
    """With short_conv the logits at t depend on token t-1 even in a model whose attention is restricted to the
    token itself (window=1): the convolution, not attention, carries it; without it they do not."""
    base = dict(vocab_size=11, max_len=8, d_model=16, n_layers=1, n_heads=2, window=1, position="none")
    x = jnp.asarray([[1, 2, 3, 4, 5, 6]])
    y = x.at[0, 2].set(9)
    for conv, depends in [(0, False), (2, True)]:
        model = Transformer(ModelConfig(**base, short_conv=conv))
        params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
        forward = jax.jit(model.apply)
        a, b = forward({"params": params}, x), forward({"params": params}, y)
        assert np.allclose(a[0, 3], b[0, 3]) != depends
        np.testing.assert_array_equal(a[0, 4:], b[0, 4:])  # kernel 2 reaches one token back only
