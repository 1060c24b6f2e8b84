"""The train state (step, params, optimizer state) and its creation."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    lr_scale: jax.Array  # multiplies every update (= the learning rate); cut by rollbacks after divergence


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       seq_len: int) -> TrainState:
    """Fresh parameters and optimizer state (jit this: the whole init is one compiled program)."""
    dummy = jnp.zeros((1, seq_len), jnp.int32)
    params = nn.unbox(model.init(rng, dummy)["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      lr_scale=jnp.ones((), jnp.float32))


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation, seq_len: int) -> TrainState:
    """Shapes and dtypes of the train state, without computing it (a restore target)."""
    return jax.eval_shape(lambda: create_train_state(model, tx, jax.random.PRNGKey(0), seq_len))


def boxed_abstract_train_state(model: nn.Module, tx: optax.GradientTransformation, seq_len: int) -> TrainState:
    """Like `abstract_train_state`, with parameters and optimizer state still in their LogicallyPartitioned
    boxes, whose axis names give the shardings (llm/parallel/sharding.py)."""

    def make():
        params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, seq_len), jnp.int32))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      lr_scale=jnp.ones((), jnp.float32))

    return jax.eval_shape(make)
