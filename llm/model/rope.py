"""RoPE's frequencies: the plain ones and the context-extension scalings, each as transformers computes it
(`modeling_rope_utils.py`: linear, dynamic, yarn, llama3, longrope).

A scaling is one function (base, rotary_dim, RopeScaling, positions_BT) -> (inv_freq [rotary_dim / 2],
attention_factor) in FREQUENCIES, keyed by ModelConfig's `rope_scaling` (ROPE_SCALINGS); `attention_factor`
multiplies the rotation's cos and sin (yarn and longrope's "mscale"). 'dynamic' and 'longrope' depend on the
sequence length, max(positions) + 1, as transformers' forward reads it from position_ids.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from llm.model.config import RopeScaling


def plain_inv_freq(base: float, dim: int) -> np.ndarray:
    """base^(-2i/dim) for i < dim/2, float32: RoPE's unscaled frequencies."""
    return base ** (-np.arange(0, dim, 2, dtype=np.float32) / dim)


def sequence_length(positions_BT: jnp.ndarray) -> jnp.ndarray:
    """transformers' seq_len of a forward: max(position_ids) + 1 over the batch."""
    return jnp.max(positions_BT) + 1


def _plain(base, dim, s, positions_BT):
    return plain_inv_freq(base, dim), 1.0


def _linear(base, dim, s, positions_BT):
    """Position interpolation: every frequency divided by `factor`."""
    return plain_inv_freq(base, dim) / np.float32(s.factor), 1.0


def _dynamic(base, dim, s, positions_BT):
    """NTK-aware: beyond the original context the base grows with the sequence length; within it, plain RoPE.

    transformers keeps the frequencies of the longest sequence seen until one shorter than the original context
    comes; this is its forward on a fresh model (and on a decode that grows one token at a time).
    """
    seq_len = jnp.maximum(sequence_length(positions_BT), s.original_max_len).astype(jnp.float32)
    grown = base * (s.factor * seq_len / s.original_max_len - (s.factor - 1)) ** (dim / (dim - 2))
    return 1.0 / grown ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim), 1.0


def _yarn(base, dim, s, positions_BT):
    """YaRN (Peng et al. 2023): frequencies that turn fewer than beta_slow times over the original context are
    divided by `factor`, those turning more than beta_fast times are kept, a linear ramp between."""

    def correction_dim(rotations):  # the (fractional) frequency index that turns `rotations` times
        return dim * math.log(s.original_max_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    interpolated = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    inv_freq = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
    inv_freq = inv_freq / np.float32(s.factor) * interpolated + inv_freq * (1 - interpolated)
    default = 0.1 * math.log(s.factor) + 1.0 if s.factor > 1 else 1.0
    return inv_freq, default if s.attention_factor is None else s.attention_factor


def _llama3(base, dim, s, positions_BT):
    """Llama 3.1: wavelengths longer than original/low_freq_factor divided by `factor`, shorter than
    original/high_freq_factor kept, a smooth blend between."""
    inv_freq = plain_inv_freq(base, dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (s.original_max_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    out = np.where(wavelen > s.original_max_len / s.low_freq_factor, inv_freq / s.factor, blended)
    return np.where(wavelen < s.original_max_len / s.high_freq_factor, inv_freq, out).astype(np.float32), 1.0


def _longrope(base, dim, s, positions_BT):
    """LongRoPE (Phi-3): a divisor per frequency, `long_factor` for a sequence longer than the original context,
    `short_factor` otherwise."""
    powers = base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
    short = 1.0 / (np.asarray(s.short_factor, np.float32) * powers)
    long = 1.0 / (np.asarray(s.long_factor, np.float32) * powers)
    inv_freq = jnp.where(sequence_length(positions_BT) > s.original_max_len, long, short)
    if s.attention_factor is not None:
        return inv_freq, s.attention_factor
    return inv_freq, math.sqrt(1 + math.log(s.factor) / math.log(s.original_max_len)) if s.factor > 1 else 1.0


FREQUENCIES = {"none": _plain, "linear": _linear, "dynamic": _dynamic, "yarn": _yarn, "llama3": _llama3,
               "longrope": _longrope}


def rope_frequencies(base: float, dim: int, scaling: RopeScaling,
                     positions_BT: jnp.ndarray) -> tuple[np.ndarray | jnp.ndarray, float]:
    """(inv_freq [dim / 2], attention_factor) of `scaling` for `dim` rotated channels."""
    return FREQUENCIES[scaling.kind](base, dim, scaling, positions_BT)
