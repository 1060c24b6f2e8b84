"""Optax optimizers and learning-rate schedules built from the `optim` config section."""

from __future__ import annotations

import re

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
        names = param_path(path).split("/")
        if names[-1] in _NO_DECAY:
            return False
        return decay_embeddings or not any(n in _EMBEDDINGS for n in names)

    return jax.tree_util.tree_map_with_path(wants_decay, params)


def param_path(path) -> str:
    """'layers_0/attention/query/kernel': a parameter's dict keys (boxes and containers left out)."""
    return "/".join(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))


def param_groups(freeze: str = "", train_only: str = "", lr_groups: str = ""):
    """A function params -> labels ('frozen', 'g0', 'g1', ...) and the learning-rate multiplier of each label.

    freeze / train_only: comma-separated regular expressions searched in each parameter's path; a parameter is
    frozen if it matches `freeze`, or if `train_only` is given and it matches none of it. lr_groups:
    'regex=multiplier,...'; a trained parameter takes the first matching multiplier (else 1).
    """
    patterns = lambda text: [re.compile(p.strip()) for p in text.split(",") if p.strip()]
    frozen, only = patterns(freeze), patterns(train_only)
    groups = []
    for item in filter(None, (x.strip() for x in lr_groups.split(","))):
        pattern, _, mult = item.rpartition("=")
        groups.append((re.compile(pattern), float(mult)))
    multipliers = {"g_default": 1.0, **{f"g{i}": m for i, (_, m) in enumerate(groups)}}

    def label(path, _):
        name = param_path(path)
        if any(p.search(name) for p in frozen) or (only and not any(p.search(name) for p in only)):
            return "frozen"
        return next((f"g{i}" for i, (p, _) in enumerate(groups) if p.search(name)), "g_default")

    return (lambda params: jax.tree_util.tree_map_with_path(label, params)), multipliers


def make_optimizer(o: ConfigDict, steps: int, finetune: ConfigDict | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer chain (clipping first) and its schedule, for logging the learning rate.

    finetune: the config's `finetune` section; its freeze / train_only / lr_groups split the parameters into
    groups through optax.multi_transform: frozen ones get no update (and no optimizer state), the others the
    optimizer with their learning-rate multiplier (a scaled update = a scaled learning rate, weight decay too).
    """
    lr = schedule(o, steps)
    f = finetune
    if f is None or not (f.freeze or f.train_only or f.lr_groups):
        opt = _base_optimizer(o, lr)
        return (optax.chain(optax.clip_by_global_norm(o.clip_norm), opt) if o.clip_norm else opt), lr
    labels, multipliers = param_groups(f.freeze, f.train_only, f.lr_groups)
    transforms = {"frozen": optax.set_to_zero()}
    for name, mult in multipliers.items():
        transforms[name] = _base_optimizer(o, lr) if mult == 1 else optax.chain(_base_optimizer(o, lr),
                                                                               optax.scale(mult))
    opt = optax.multi_transform(transforms, labels)
    if o.clip_norm:  # the norm of the trained parameters' gradients only
        frozen = lambda params: jax.tree_util.tree_map(lambda x: x == "frozen", labels(params))
        opt = optax.chain(optax.masked(optax.set_to_zero(), frozen), optax.clip_by_global_norm(o.clip_norm), opt)
    return opt, lr


def _base_optimizer(o: ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
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
        raise ValueError(f"unknown optimizer {o.name!r}")  # the config's optim.name check lists the known ones
    return opt
