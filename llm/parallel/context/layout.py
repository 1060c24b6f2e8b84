"""Where a sequence split over the mesh's `context` axis puts its tokens: the settings a run traces under
(`mesh.context_strategy`, `mesh.context_balance`), the current mesh's layout, and a batch reordered into it."""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import jax
import jax.numpy as jnp

from llm.parallel.context.attention import Layout

CONTEXT_AXIS = "context"  # the mesh axis that splits the sequence


@dataclasses.dataclass(frozen=True)
class ContextSettings:
    """How attention works when the mesh splits the sequence (`mesh.context_strategy`, `mesh.context_balance`)."""

    strategy: str = "ring"
    balance: bool = True


_settings = threading.local()


@contextlib.contextmanager
def context_settings(settings: ContextSettings):
    """Within it, models traced under a mesh with a `context` axis use `settings` (as flax's
    `logical_axis_rules` sets the rules)."""
    before = getattr(_settings, "value", None)
    _settings.value = settings
    try:
        yield
    finally:
        _settings.value = before


def context_layout() -> Layout | None:
    """The layout of the sequence over the current mesh's `context` axis; None without one (or of size 1)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.shape.get(CONTEXT_AXIS, 1) == 1:
        return None
    settings = getattr(_settings, "value", None) or ContextSettings()
    return Layout(CONTEXT_AXIS, mesh.shape[CONTEXT_AXIS], settings.balance, settings.strategy)


def to_context_layout(inputs_BT, targets_BT, extras: dict) -> tuple:
    """A batch's [B, T] arrays (inputs, targets and extras such as weights and segment ids) in the order the
    context layout wants, with explicit positions, so that the model's positions, masks and loss see every token
    at its true slot. Unchanged when the layout keeps the sequence in order."""
    layout = context_layout()
    if layout is None or not layout.balanced:
        return inputs_BT, targets_BT, extras
    b, t = inputs_BT.shape
    order = layout.order(t)
    extras = dict(extras)
    if extras.get("positions") is None:
        extras["positions"] = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    take = lambda x_BT: x_BT[:, order]
    return take(inputs_BT), take(targets_BT), {k: take(v) for k, v in extras.items() if v is not None}
