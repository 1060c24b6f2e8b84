"""Dropout masks (llm/model/dropout.py): the hash mask's rate and independence, the module's arithmetic, and
the 'bernoulli' mask equal to flax's nn.Dropout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.errors import ConfigError
from llm.model import ModelConfig
from llm.model.dropout import Dropout, hash_keep_mask

SHAPE = (32, 128, 96)  # 393,216 elements


def keep(seed, rate, shape=SHAPE, impl="threefry2x32"):
    return np.asarray(jax.jit(hash_keep_mask, static_argnums=(1, 2))(jax.random.key(seed, impl=impl), shape, rate))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_hash_mask_keeps_one_minus_rate(rate):
    m = keep(0, rate)
    sigma = (rate * (1 - rate) / m.size) ** 0.5
    assert abs(m.mean() - (1 - rate)) < 5 * sigma
    assert keep(0, 0.0).all() and not keep(0, 1.0).any()


def test_hash_mask_has_no_structure_along_any_axis_nor_across_keys():
    rate = 0.5
    m = keep(1, rate).astype(np.float64)
    n = m.size
    for axis in range(m.ndim):
        # Neighbours along the axis are uncorrelated ...
        a, b = np.moveaxis(m, axis, 0)[:-1].ravel(), np.moveaxis(m, axis, 0)[1:].ravel()
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / a.size**0.5, axis
        # ... and the keep rate of each slice along it varies as binomial counts do (no stripes, no period).
        other = n // m.shape[axis]
        rates = m.mean(axis=tuple(i for i in range(m.ndim) if i != axis))
        assert 0.7 < rates.std() / (rate * (1 - rate) / other) ** 0.5 < 1.3 or m.shape[axis] < 50, axis
    # Different keys, and the same key, give independent and identical masks; rbg keys work as threefry ones do.
    assert abs(np.corrcoef(m.ravel(), keep(2, rate).ravel())[0, 1]) < 5 / n**0.5
    np.testing.assert_array_equal(m, keep(1, rate))
    rbg = keep(1, rate, impl="rbg")
    assert abs(rbg.mean() - 0.5) < 5 * (0.25 / n) ** 0.5 and not np.array_equal(rbg, m)


def test_module_zeroes_and_rescales_and_its_gradient_is_the_mask():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 32)), jnp.float32)
    layer = Dropout(0.25, deterministic=False)
    rngs = {"dropout": jax.random.key(7)}
    y = layer.apply({}, x, rngs=rngs)
    kept = np.asarray(y != 0)
    np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    assert 0.6 < kept.mean() < 0.9
    grad = jax.grad(lambda x: layer.apply({}, x, rngs=rngs).sum())(x)
    np.testing.assert_allclose(grad, kept / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(Dropout(0.25, deterministic=True).apply({}, x), x)
    np.testing.assert_array_equal(Dropout(0.0, deterministic=False).apply({}, x, rngs=rngs), x)


def test_bernoulli_mask_is_flax_dropout():
    x = jnp.ones((8, 64), jnp.float32)
    rngs = {"dropout": jax.random.key(3)}
    ours = Dropout(0.3, deterministic=False, mask="bernoulli").apply({}, x, rngs=rngs)
    theirs = nn.Dropout(0.3, deterministic=False).apply({}, x, rngs=rngs)
    np.testing.assert_array_equal(ours, theirs)
    assert not np.array_equal(ours, Dropout(0.3, deterministic=False).apply({}, x, rngs=rngs))


def test_unknown_mask_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.dropout_mask='coin' is not one of: hash, bernoulli"):
        ModelConfig(vocab_size=8, dropout_mask="coin").validate()
