"""Dropout whose mask is a counter-based hash of each element's coordinates (`model.dropout_mask`).

"hash" (the default): a few rounds of MurmurHash3's 32-bit finaliser over the element's index along each axis and
two 32-bit words drawn from the module's 'dropout' key; an element is kept when its hash is at least
rate * 2^32. The whole mask is integer arithmetic on iotas that XLA fuses into the multiply that applies it, so
it costs about as much as the multiply: 1.6 ms for a [64, 256, 384] activation on the development CPU, where
drawing the same mask with `jax.random.bernoulli` took 34-42 ms (rbg or threefry keys; the 13 masks of the
shakespeare_char `small` step, benchmarks/results/perf_before_after.md). The mask depends only on the key and the
coordinates, not on how the array is sharded: a run resumed on another mesh draws the same masks.

"bernoulli": `jax.random.bernoulli` with the module's key, exactly as flax's `nn.Dropout` draws it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm.model.config import DROPOUT_MASKS

_GOLDEN = 0x9E3779B1  # 2^32 / golden ratio, odd: spreads consecutive indices over the 32-bit range


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's finaliser: a bijection of uint32 whose every output bit depends on every input bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """Boolean keep mask of `shape`: each element kept with probability 1 - rate (to 2^-32), independently
    in effect, from the coordinates and two words of `key`."""
    k0, k1 = jax.random.bits(key, (2,), jnp.uint32)
    h = jnp.broadcast_to(k0, shape)
    for axis in range(len(shape)):
        coordinate = jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
        h = _fmix32(h + coordinate * jnp.uint32(_GOLDEN))
    h = _fmix32(h ^ k1)
    return h >= jnp.uint32(min(round(rate * 2.0**32), 2**32 - 1))


class Dropout(nn.Module):
    """Inverted dropout: zero each element with probability `rate` and scale the rest by 1 / (1 - rate)."""

    rate: float
    deterministic: bool
    mask: str = "hash"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.rate == 0.0:
            return x
        if self.mask not in DROPOUT_MASKS:
            raise ValueError(f"dropout mask {self.mask!r} is not one of: {', '.join(DROPOUT_MASKS)}")
        key = self.make_rng("dropout")
        keep_prob = 1.0 - self.rate
        if self.mask == "hash":
            keep = hash_keep_mask(key, x.shape, self.rate)
        else:
            keep = jax.random.bernoulli(key, p=keep_prob, shape=x.shape)
        return jax.lax.select(keep, x / keep_prob, jnp.zeros_like(x))
