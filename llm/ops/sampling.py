"""Choosing the next token from logits: greedy, or a draw after temperature, top-k and top-p (nucleus) filters.
Their settings, with their rules, are `llm.config.sampling.SamplingParams`."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def filter_logits(logits_BV, *, top_k: int | None = None, top_p: float | None = None):
    """Set excluded tokens' logits to -inf: keep the top_k largest, then the smallest set with mass >= top_p
    (top_k None or 0, top_p None or 1: that filter is off)."""
    if top_k and top_k < logits_BV.shape[-1]:
        kth = jax.lax.top_k(logits_BV, top_k)[0][..., -1:]
        logits_BV = jnp.where(logits_BV < kth, -jnp.inf, logits_BV)
    if top_p is not None and top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_BV, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of strictly more likely tokens
        # The cut-off logit: the smallest one still needed to reach top_p (the top token always stays).
        keep = mass_before < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < cutoff, -jnp.inf, logits_BV)
    return logits_BV


def sample_logits(logits_BV, rng, *, temperature: float, top_k: int | None, top_p: float | None):
    """Next tokens [B]: argmax when temperature == 0, else a draw from the filtered, tempered distribution."""
    if temperature == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = filter_logits(logits_BV / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)
