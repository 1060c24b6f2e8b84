"""Optax optimizers and learning-rate schedules built from the `optim` config section."""

from __future__ import annotations

import jax
import optax
from ml_collections import ConfigDict

# Parameter names that never get weight decay: norm gains and biases (and embeddings unless asked for).
_NO_DECAY = ("bias", "scale")
_EMBEDDINGS = ("embed", "positions")


def schedule(o: ConfigDict, steps: int) -> optax.Schedule:
    """Linear warmup from 0 to lr, then cosine / linear decay to lr * min_lr_ratio at decay_steps, or constant."""
    decay_steps = o.decay_steps or steps
    warmup = min(o.warmup_steps, decay_steps)
    end = o.lr * o.min_lr_ratio
    if o.schedule == "constant":
        main = optax.constant_schedule(o.lr)
    elif o.schedule == "cosine":
        main = optax.cosine_decay_schedule(o.lr, max(decay_steps - warmup, 1), alpha=o.min_lr_ratio)
    else:
        main = optax.linear_schedule(o.lr, end, max(decay_steps - warmup, 1))
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warmup), main], [warmup])


def decay_mask(params, decay_embeddings: bool):
    """True for weights that get weight decay: matrices, not norms, biases or (by default) embedding tables."""

    def wants_decay(path, _):
        # Dict keys only: boxed (LogicallyPartitioned) leaves add an attribute step ('.value') to the path.
        names = [str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey)]
        if names[-1] in _NO_DECAY:
            return False
        return decay_embeddings or not any(n in _EMBEDDINGS for n in names)

    return jax.tree_util.tree_map_with_path(wants_decay, params)


def make_optimizer(o: ConfigDict, steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer chain (clipping first) and its schedule, for logging the learning rate."""
    lr = schedule(o, steps)
    mask = lambda params: decay_mask(params, o.decay_embeddings)
    if o.name == "adamw":
        opt = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=mask)
    elif o.name == "lion":
        opt = optax.lion(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=mask)
    elif o.name == "sgd":
        opt = optax.chain(optax.add_decayed_weights(o.weight_decay, mask),
                          optax.sgd(lr, momentum=o.momentum or None))
    elif o.name == "adafactor":
        opt = optax.adafactor(lr, weight_decay_rate=o.weight_decay or None, weight_decay_mask=mask)
    else:
        raise ValueError(f"unknown optimizer {o.name!r}")
    if o.clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(o.clip_norm), opt)
    return opt, lr
