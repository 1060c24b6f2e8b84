"""Scoring a model on batches it is not trained on: the summed token loss and the answers' argmax accuracy.

A batch is a dict of numpy arrays (llm/data/dataset.py): "inputs" and "targets", and optionally "weights" (where
the loss counts), "segment_ids" and "positions". The step functions are jitted once per model (and mesh).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp

from llm.model import Transformer
from llm.ops import cross_entropy
from llm.parallel import Shardings
from llm.parallel.context.layout import to_context_layout


def _logits(model: Transformer, params, inputs, extras):
    return model.apply({"params": params}, inputs, positions_BT=extras.get("positions"),
                       segment_ids_BT=extras.get("segment_ids"))


def make_eval_step(model: Transformer, shardings: Shardings | None = None):
    """(params, inputs, targets, extras=None) -> (sum of token losses, token count); extras as in a batch."""

    def f(params, x, y, extras=None):
        x, y, extras = to_context_layout(x, y, extras or {})
        return cross_entropy(_logits(model, params, x, extras), y, extras.get("weights"))

    return _jit(f, shardings)


def make_accuracy_step(model: Transformer, shardings: Shardings | None = None):
    """(params, inputs, targets, extras) -> (weighted count of argmax == target, sum of weights)."""

    def f(params, x, y, extras):
        x, y, extras = to_context_layout(x, y, extras)
        w = extras["weights"].astype(jnp.float32)
        return jnp.sum((jnp.argmax(_logits(model, params, x, extras), -1) == y) * w), jnp.sum(w)

    return _jit(f, shardings)


def _jit(f, shardings: Shardings | None):
    if shardings is None:
        return jax.jit(f)
    return jax.jit(f, in_shardings=(shardings.state.params, shardings.batch, shardings.batch, shardings.batch),
                   out_shardings=shardings.replicated)


def score(eval_step, params, batches: Iterable[dict], *, accuracy_step=None, put: Callable = lambda x: x
          ) -> dict[str, float]:
    """{"loss": the mean token loss over `batches`} and, with `accuracy_step`, {"accuracy": ...} too; `put` makes
    device arrays from host rows (a multi-process run's global batch)."""
    total = count = correct = counted = 0.0
    for batch in batches:
        x, y = put(batch["inputs"]), put(batch["targets"])
        extras = {k: put(v) for k, v in batch.items() if k not in ("inputs", "targets")}
        s, c = eval_step(params, x, y, extras or None)
        total, count = total + float(s), count + float(c)
        if accuracy_step is not None:
            right, n = accuracy_step(params, x, y, extras)
            correct, counted = correct + float(right), counted + float(n)
    out = {"loss": total / max(count, 1.0)}
    if accuracy_step is not None:
        out["accuracy"] = correct / max(counted, 1.0)
    return out
