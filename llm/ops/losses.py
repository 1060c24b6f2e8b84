"""Losses on logits."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def cross_entropy(logits_BTV, targets_BT, weights_BT=None):
    """(sum of token losses, sum of weights): next-token cross-entropy in float32.

    Returning the sum and the count lets callers average over micro-batches, devices or a whole split exactly.
    """
    losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV.astype(jnp.float32), targets_BT)
    if weights_BT is None:
        return jnp.sum(losses_BT), jnp.asarray(losses_BT.size, jnp.float32)
    weights_BT = weights_BT.astype(jnp.float32)
    return jnp.sum(losses_BT * weights_BT), jnp.sum(weights_BT)
