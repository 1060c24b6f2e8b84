"""Context parallelism on 8 simulated CPU devices, against one device: what tests/parallel/test_context_parallel.py
checks (tests/sharding_worker.py runs these checks in the suite's one 8-device process).

    python tests/context_worker.py ops|model

ops:   the per-device attention (llm/parallel/context/attention.py) under shard_map over n = 2, 4, 8 devices, both
       strategies and layouts, against attention_oracle.py (forward) and jax.nn.dot_product_attention with a mask
       and bias built here in NumPy (gradients).
model: a tiny model's loss and parameter gradients with the sequence split over `context` (alone and with data,
       fsdp and tensor axes), against the same model unsharded on one device.
A dict per case (printed as a JSON line, `RESULT {...}`) with the largest absolute errors.
"""

import os
import sys

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(Path(__file__).parent))

from attention_oracle import oracle

from llm.config import get_base_config
from llm.model import ModelConfig, Transformer
from llm.ops import cross_entropy
from llm.ops.attention import AttentionSpec
from llm.parallel import logical_rules, make_mesh, state_shardings
from llm.parallel.context.attention import Layout, context_attention
from llm.parallel.context.layout import ContextSettings, context_settings, to_context_layout

B, T, H, K, D = 2, 32, 4, 2, 8


def mask_and_bias(window, segments, slopes):
    """[B, H, T, T] boolean mask and float bias of causal attention, from slots 0..T-1."""
    q_slot, k_slot = np.arange(T)[:, None], np.arange(T)[None, :]
    ok = k_slot <= q_slot
    if window is not None:
        ok = ok & (q_slot - k_slot < window)
    ok = ok[None] & (segments[:, :, None] == segments[:, None, :])
    bias = -np.asarray(slopes)[:, None, None] * np.abs(q_slot - k_slot) if slopes is not None else np.zeros((H, 1, 1))
    return np.broadcast_to(ok[:, None], (B, H, T, T)), np.broadcast_to(bias[None], (B, H, T, T)).astype(np.float32)


def max_error(got, want) -> float:
    """The largest absolute difference, in NumPy (a jnp expression on a sharded array compiles a program)."""
    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))


def op_cases():
    """(n, strategy, balanced, window, segments, alibi, softcap): both strategies and layouts at n=2, the features at
    n=4 and n=8."""
    for strategy in ("ring", "all_gather"):
        for balanced in (True, False):
            yield 2, strategy, balanced, None, False, False, None
    yield 4, "ring", True, 6, True, True, None
    yield 4, "ring", False, 6, True, True, None
    yield 4, "all_gather", True, 6, True, True, None
    yield 8, "ring", True, 6, True, True, None
    yield 8, "all_gather", False, None, True, True, None
    yield 4, "ring", True, 6, True, True, 3.0  # soft-cap: forward only (dot_product_attention has none)


def check_ops() -> list[dict]:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(B, T, H, D)).astype(np.float32)
    k, v = (rng.normal(size=(B, T, K, D)).astype(np.float32) for _ in range(2))
    data = {"qkv": (q, k, v), "cotangent": rng.normal(size=(B, T, H, D)).astype(np.float32),
            "segments": np.sort(rng.integers(0, 3, size=(B, T)), axis=1).astype(np.int32),
            "slopes": np.asarray([0.5, 0.25, 0.125, 0.0625], np.float32)}
    return [check_op_case(*case, **data) for case in op_cases()]


def check_op_case(n, strategy, balanced, window, use_segments, use_alibi, softcap, *, qkv, cotangent, segments,
                  slopes):
    seg = segments if use_segments else np.zeros((B, T), np.int32)
    sl = slopes if use_alibi else None
    layout = Layout("context", n, balanced, strategy)
    options = AttentionSpec(causal=True, window=window, scale=D ** -0.5, softcap=softcap)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:n]), ("context",))
    order, back = layout.order(T), np.argsort(layout.order(T))

    def per_device(q, k, v, s):
        return context_attention(q, k, v, s, s, None if sl is None else jnp.asarray(sl), layout=layout,
                                 spec=options, block_k=4)

    def split(q, k, v):
        spec = P(None, "context")
        out = jax.shard_map(per_device, mesh=mesh, in_specs=(spec,) * 4, out_specs=spec, check_vma=False)(
            q[:, order], k[:, order], v[:, order], jnp.asarray(seg)[:, order])
        return out[:, back]

    out = jax.jit(split)(*qkv)
    want, _ = oracle(*qkv, causal=True, window=window, q_segments=seg, k_segments=seg, softcap=softcap,
                     alibi_slopes=sl)
    errors = {"out": max_error(out, want)}
    if softcap is None:
        mask, bias = mask_and_bias(window, seg, sl)

        def full(q, k, v):
            group = lambda x: jnp.repeat(x, H // K, axis=2)
            return jax.nn.dot_product_attention(q, group(k), group(v), bias=bias, mask=mask)

        grads = jax.jit(jax.grad(lambda *a: jnp.sum(split(*a) * cotangent), argnums=(0, 1, 2)))(*qkv)
        wants = jax.jit(jax.grad(lambda *a: jnp.sum(full(*a) * cotangent), argnums=(0, 1, 2)))(*qkv)
        errors.update({f"d{name}": max_error(g, w) for name, g, w in zip("qkv", grads, wants)})
    return dict(case=f"n={n} {strategy} {'balanced' if balanced else 'contiguous'} window={window} "
                f"segments={use_segments} alibi={use_alibi} softcap={softcap}", **errors)


MODEL_CASES = [  # mesh data,fsdp,context,tensor; strategy; balance; model fields
    ("1,1,8,1", "ring", True, {"position": "alibi", "window": 12}),
    ("1,1,4,1", "all_gather", True, {"position": "rope"}),
    ("2,1,2,2", "ring", True, {"position": "rope"}),
    ("1,2,4,1", "ring", False, {"position": "learned", "short_conv": 3}),
    ("1,2,2,2", "all_gather", False, {"position": "alibi"}),
]


def check_model() -> list[dict]:
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 19, size=(4, T + 1)).astype(np.int32)
    batch = (tokens[:, :-1], tokens[:, 1:], {"segment_ids": np.sort(rng.integers(0, 3, size=(4, T)), axis=1)})
    rules = logical_rules(get_base_config().mesh.rules)
    return [check_model_case(*case, batch=batch, rules=rules) for case in MODEL_CASES]


def check_model_case(spec, strategy, balance, fields, *, batch, rules):
    cfg = ModelConfig(vocab_size=19, max_len=T, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                      attention_impl="xla", **fields)
    model = Transformer(cfg)

    def loss(params, inputs, targets, extras):  # as the train step's loss (llm/training/steps.py)
        inputs, targets, extras = to_context_layout(inputs, targets, extras)
        logits = model.apply({"params": params}, inputs, positions_BT=extras.get("positions"),
                             segment_ids_BT=extras.get("segment_ids"))
        total, count = cross_entropy(logits, targets)
        return total / count

    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch[0])["params"]
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), batch[0])["params"])
    value_and_grad = jax.value_and_grad(loss)
    want_loss, want_grads = jax.jit(value_and_grad)(params, *batch)
    sizes = dict(zip(("data", "fsdp", "context", "tensor"), map(int, spec.split(","))))
    mesh = make_mesh(sizes, jax.devices()[: int(np.prod(list(sizes.values())))])
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), context_settings(ContextSettings(strategy, balance)):
        shardings = state_shardings(boxed, mesh, rules)
        rows = jax.sharding.NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", "length"), rules))
        got_loss, got_grads = jax.jit(value_and_grad, in_shardings=(shardings, rows, rows, rows))(
            jax.device_put(params, shardings), *batch)
    diffs = jax.tree_util.tree_map(max_error, got_grads, want_grads)
    scale = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(want_grads))
    return dict(case=f"{spec} {strategy} balance={balance} {fields}", loss=float(got_loss),
                want_loss=float(want_loss), grad_error=max(jax.tree_util.tree_leaves(diffs)), grad_scale=scale)


CHECKS = {"ops": check_ops, "model": check_model}

if __name__ == "__main__":
    for result in CHECKS[sys.argv[1]]():
        print("RESULT " + json.dumps(result), flush=True)
