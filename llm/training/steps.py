"""The compiled training step: gradients (accumulated over micro-batches), the optimizer update, and the guard that
makes a step with a non-finite loss or gradient change nothing but the step counter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from llm.model import Transformer
from llm.ops import cross_entropy
from llm.parallel import Shardings
from llm.parallel.context.layout import to_context_layout
from llm.state import TrainState


def make_train_step(model: Transformer, tx: optax.GradientTransformation, lr_schedule, grad_accum: int,
                    dropout_root: jax.Array, shardings: Shardings | None = None, dropout_rng: str = "threefry"):
    """(state, inputs, targets, extras) -> (state, metrics); one optimizer update per call, the state donated.

    The dropout key of step s is fold_in(dropout_root, s), derived inside the compiled step; with dropout_rng
    'rbg' the keys the dropout layers draw from it are XLA RngBitGenerator keys instead of threefry ones (cheaper
    on CPU with model.dropout_mask='bernoulli'; 'hash' masks take two words from the key;
    benchmarks/results/perf_before_after.md). With `shardings`, the step is jitted with the state's and batches'
    shardings (the state stays where it is).

    With grad_accum > 1 the batch is split into micro-batches whose gradients are summed in a lax.scan, so memory
    holds one micro-batch of activations and the update equals that of the whole batch. extras: optional [B, T]
    arrays 'weights' (per target token), 'segment_ids' and 'positions' (packed documents).
    """

    def loss_fn(params, inputs, targets, extras, key):
        """(sum of token losses, number of target tokens) of one (micro-)batch."""
        inputs, targets, extras = to_context_layout(inputs, targets, extras)
        logits = model.apply({"params": params}, inputs, positions_BT=extras.get("positions"),
                             segment_ids_BT=extras.get("segment_ids"), train=True, rngs={"dropout": key})
        return cross_entropy(logits, targets, extras.get("weights"))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, inputs, targets, extras=None):
        key = jax.random.fold_in(dropout_root, state.step)
        if dropout_rng != "threefry":
            key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl=dropout_rng)
        loss_sum, count, grads = _gradients(grad_fn, state.params, inputs, targets, extras or {}, key, grad_accum)
        # The mean over the batch's target tokens (weighted: only the tokens that count, e.g. completions).
        count = jnp.maximum(count, 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / count, grads)
        return guarded_update(tx, lr_schedule, state, loss_sum / count, grads)

    if shardings is None:
        return jax.jit(step, donate_argnums=(0,))
    return jax.jit(step, donate_argnums=(0,),
                   in_shardings=(shardings.state, shardings.batch, shardings.batch, shardings.batch),
                   out_shardings=(shardings.state, shardings.replicated))


def _gradients(grad_fn, params, inputs, targets, extras, key, grad_accum: int):
    """(summed token loss, token count, summed gradients) of the batch, over `grad_accum` micro-batches."""
    if grad_accum == 1:
        (loss_sum, count), grads = grad_fn(params, inputs, targets, extras, key)
        return loss_sum, count, grads
    micro = lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:])

    def accumulate(carry, xs):
        sum_acc, count_acc, grads_acc = carry
        x, y, e, i = xs
        (loss_sum, count), grads = grad_fn(params, x, y, e, jax.random.fold_in(key, i))
        return (sum_acc + loss_sum, count_acc + count, jax.tree_util.tree_map(jnp.add, grads_acc, grads)), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    (loss_sum, count, grads), _ = jax.lax.scan(
        accumulate, (jnp.zeros(()), jnp.zeros(()), zeros),
        (micro(inputs), micro(targets), jax.tree_util.tree_map(micro, extras), jnp.arange(grad_accum)))
    return loss_sum, count, grads


def guarded_update(tx: optax.GradientTransformation, lr_schedule, state: TrainState, loss, grads):
    """(the updated state, metrics). The update is multiplied by state.lr_scale (cut by rollbacks).

    A step whose loss or gradients are not finite changes nothing but the step counter (metrics["skipped"] is 1):
    the optimizer state, with its update count, stays as it was, so the learning-rate schedule counts applied
    updates and each skip delays it by a step (metrics["lr"] is the schedule at the step counter).
    """
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree_util.tree_map(lambda u: u * state.lr_scale.astype(u.dtype), updates)
    params = optax.apply_updates(state.params, updates)
    # A non-finite step keeps the old parameters and optimizer state (NaN must not reach the moments).
    keep = lambda new, old: jnp.where(ok, new, old)
    params = jax.tree_util.tree_map(keep, params, state.params)
    opt_state = jax.tree_util.tree_map(keep, opt_state, state.opt_state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr_schedule(state.step) * state.lr_scale,
               "skipped": 1.0 - ok.astype(jnp.float32)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
