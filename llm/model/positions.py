"""Position information: learned and sinusoidal embeddings, rotary embeddings (RoPE) and ALiBi slopes."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from llm.model.config import RopeScaling
from llm.model.rope import rope_frequencies


def sinusoidal(positions_BT: jnp.ndarray, d_model: int, base: float = 10000.0) -> jnp.ndarray:
    """The Transformer paper's fixed table, [B, T, d_model]: sin on even channels, cos on odd ones."""
    inv_freq = base ** (-np.arange(0, d_model, 2, dtype=np.float32) / d_model)  # [d_model/2]
    angle_BTF = positions_BT[..., None].astype(jnp.float32) * inv_freq
    table = jnp.stack([jnp.sin(angle_BTF), jnp.cos(angle_BTF)], axis=-1)  # interleave sin, cos
    return table.reshape(*positions_BT.shape, -1)[..., :d_model]


def apply_rope(x_BTHD: jnp.ndarray, positions_BT: jnp.ndarray, base: float, scaling: RopeScaling | None = None,
               rotary_dim: int | None = None) -> jnp.ndarray:
    """Rotate channel pairs (i, i + R/2) of the first R = rotary_dim channels (default: all D) by angle
    pos * inv_freq[i], the rotate-half layout of GPT-NeoX/Llama; the other D - R channels pass through (partial
    rotary, as Phi-3 / GPT-NeoX). inv_freq is base^(-2i/R), or `scaling`'s (llm/model/rope.py), whose attention
    factor multiplies the rotated channels.

    The dot product of two rotated vectors depends only on the difference of their positions (up to 'dynamic' and
    'longrope', whose frequencies depend on the sequence's length).
    """
    d = x_BTHD.shape[-1]
    r = d if rotary_dim is None else rotary_dim
    inv_freq, attention_factor = rope_frequencies(base, r, scaling or RopeScaling(), positions_BT)  # [R/2]
    angle_BTF = positions_BT[..., None].astype(jnp.float32) * inv_freq
    cos = jnp.cos(angle_BTF)[:, :, None, :]
    sin = jnp.sin(angle_BTF)[:, :, None, :]
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    x = x_BTHD.astype(jnp.float32)
    x1, x2 = jnp.split(x[..., :r] if r < d else x, 2, axis=-1)
    rotated = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    out = jnp.concatenate([*rotated, x[..., r:]] if r < d else rotated, axis=-1)
    return out.astype(x_BTHD.dtype)


def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi's per-head slopes (Press et al. 2022): a geometric sequence 2^(-8/n), 2^(-16/n), ...

    For a head count that is not a power of two, the paper's recipe: the slopes of the next lower power of
    two, then every other slope of the next higher one.
    """

    def power_of_two(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two(n_heads)
    else:
        lower = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(lower) + power_of_two(2 * lower)[0::2][: n_heads - lower]
    return np.asarray(slopes, np.float32)


class LearnedPositions(nn.Module):
    """A trainable [max_len, d_model] table looked up by position."""

    max_len: int
    d_model: int
    init_std: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, positions_BT: jnp.ndarray) -> jnp.ndarray:
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(self.init_std), (None, "embed")),
            (self.max_len, self.d_model),
            self.param_dtype,
        )
        return jnp.take(jnp.asarray(table, self.dtype), positions_BT, axis=0)
