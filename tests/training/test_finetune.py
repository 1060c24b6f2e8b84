"""Fine-tuning parts: LoRA adapters and their merge, frozen parameters and per-group learning rates, starting
from another model's weights with a grown vocabulary."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm.config import get_base_config
from llm.errors import ConfigError
from llm.model import ModelConfig, Transformer
from llm.model.lora import merge_lora
from llm.parallel import unboxed
from llm.state import boxed_abstract_train_state, create_train_state
from llm.state.optimizers import make_optimizer, param_path
from llm.training.finetune import overlay

BASE = ModelConfig(vocab_size=23, d_model=32, n_layers=2, n_heads=4, max_len=16, ffn="swiglu", position="rope")
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 23, (2, 16)), jnp.int32)


def init(cfg, seed=0):
    return jax.jit(lambda: Transformer(cfg).init(jax.random.PRNGKey(seed), TOKENS[:, :4])["params"])()


def unbox(tree):
    import flax.linen as nn

    return nn.unbox(tree)


def paths(tree):
    return [param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


@pytest.mark.parametrize("scan", [False, True])
def test_lora_starts_as_the_base_model_and_merges_exactly(scan):
    base_cfg = dataclasses.replace(BASE, scan_layers=scan)
    lora_cfg = dataclasses.replace(base_cfg, lora_rank=4, lora_alpha=8.0, lora_targets="attention/(query|value),up")
    base = unbox(init(base_cfg))
    lora = unbox(init(lora_cfg, seed=1))
    adapters = [p for p in paths(lora) if "lora_" in p]
    assert {p.rsplit("/", 2)[-2] for p in adapters} == {"query", "value", "up"}
    assert len(adapters) == (6 if scan else 12)  # a, b for 3 projections (x 2 layers unless stacked)
    params = overlay(lora, base, "base")  # the base weights, fresh adapters (B = 0)
    logits = lambda cfg, p: jax.jit(Transformer(cfg).apply)({"params": p}, TOKENS)
    np.testing.assert_array_equal(logits(lora_cfg, params), logits(base_cfg, base))
    # Train-like perturbation of B, then fold A B into the kernels: the same function without adapters.
    rng = np.random.default_rng(2)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype) if "lora_b" in param_path(p) else x,
        params)
    merged, merged_cfg = merge_lora(params, lora_cfg)
    assert merged_cfg.lora_rank == 0 and not [p for p in paths(merged) if "lora_" in p]
    adapted = logits(lora_cfg, params)
    assert float(jnp.max(jnp.abs(adapted - logits(base_cfg, base)))) > 1e-3  # the adapters do something
    np.testing.assert_allclose(logits(merged_cfg, merged), adapted, atol=2e-5)


def finetune_section(**kw):
    f = get_base_config().finetune
    for k, v in kw.items():
        f[k] = v
    return f


def one_sgd_step(params, finetune):
    o = get_base_config().optim
    o.name, o.momentum, o.weight_decay, o.clip_norm, o.warmup_steps, o.schedule = "sgd", 0.0, 0.0, 0.0, 0, "constant"
    o.lr = 0.1
    tx, _ = make_optimizer(o, 10, finetune)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
    return {param_path(p): np.asarray(u) for p, u in jax.tree_util.tree_leaves_with_path(updates)}


def test_frozen_parts_and_learning_rate_groups():
    params = unbox(init(BASE))
    updates = one_sgd_step(params, finetune_section(freeze="embed", lr_groups="attention=0.5,feed_forward/up=2"))
    for name, u in updates.items():
        want = 0.0 if name.startswith("embed") else -0.1 * (0.5 if "attention" in name else 2 if "/up/" in name else 1)
        assert np.all(u == np.float32(want)), (name, u.flat[0], want)
    lora_cfg = dataclasses.replace(BASE, lora_rank=2)
    updates = one_sgd_step(unbox(init(lora_cfg)), finetune_section(train_only="lora_"))
    assert {n for n, u in updates.items() if np.any(u)} == {n for n in updates if "lora_" in n} != set()


def test_clipping_ignores_frozen_gradients():
    params = unbox(init(BASE))
    o = get_base_config().optim
    o.name, o.momentum, o.weight_decay, o.clip_norm, o.warmup_steps, o.schedule = "sgd", 0.0, 0.0, 1.0, 0, "constant"
    tx, _ = make_optimizer(o, 10, finetune_section(train_only="final_norm"))
    grads = jax.tree_util.tree_map(lambda x: 100 * jnp.ones_like(x), params)
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
    trained = [u for p, u in jax.tree_util.tree_leaves_with_path(updates) if "final_norm" in param_path(p)]
    norm = float(optax.tree.norm(trained))
    assert norm == pytest.approx(o.lr * 1.0, rel=1e-5)  # clipped to 1 by the trained gradients' norm alone


@pytest.mark.parametrize("optimizer, lora_rank, section", [
    ("adamw", 0, dict(freeze="embed", lr_groups="attention=0.5")),
    ("adafactor", 2, dict(train_only="lora_")),
])
def test_the_trainers_restore_target_is_the_state_init_makes(optimizer, lora_rank, section):
    """The trainer takes its restore target from the boxed abstract state (the one that names shardings), unboxed:
    the structure, shapes and dtypes of what create_train_state makes, frozen groups' empty state included."""
    o = get_base_config().optim
    o.name = optimizer
    tx, _ = make_optimizer(o, 10, finetune_section(**section))
    model = Transformer(dataclasses.replace(BASE, lora_rank=lora_rank))
    want = jax.eval_shape(lambda: create_train_state(model, tx, jax.random.PRNGKey(0), 16))
    got = unboxed(boxed_abstract_train_state(model, tx, 16))
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    assert [(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(got)] == \
        [(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(want)]


def test_overlay_grows_the_vocabulary_and_refuses_other_shapes():
    source = unbox(init(BASE))
    bigger = unbox(init(dataclasses.replace(BASE, vocab_size=30), seed=5))
    out = overlay(bigger, source, "base")
    emb = np.asarray(out["embed"]["embedding"])
    np.testing.assert_array_equal(emb[:23], np.asarray(source["embed"]["embedding"]))
    np.testing.assert_array_equal(emb[23:], np.asarray(bigger["embed"]["embedding"])[23:])
    with pytest.raises(ConfigError, match="has shape"):
        overlay(unbox(init(dataclasses.replace(BASE, d_model=64))), source, "base")
    with pytest.raises(ConfigError, match="has no parameter"):
        overlay(unbox(init(dataclasses.replace(BASE, n_layers=3))), source, "base")


# --------------------------------------------------------------------------------------------------------
# fine-tuning runs end to end


@pytest.fixture(scope="module")
def base_run(trained_run):
    from conftest import LM_RUN

    return trained_run(**LM_RUN)


@pytest.mark.slow
def test_lora_sft_run_from_a_base_run_trains_only_the_adapters(base_run, tmp_path):
    from conftest import tiny_config

    from llm.runs import load_run
    from llm.training import train

    config = tiny_config(tmp_path, **{"train.steps": 12, "train.eval_every": 12, "train.checkpoint_every": 12,
                                      "sample.num_samples": 0})
    config.finetune.init_from = str(base_run)
    config.data.sft = "task:num2words"
    config.data.sft_train_examples, config.data.sft_eval_examples = 200, 20
    config.model.lora_rank = 4
    config.model.n_layers = 7  # ignored: the architecture comes from the base run
    messages = []
    result = train(config, tmp_path / "ft", log=messages.append)
    assert any("fine-tuning from" in m for m in messages) and np.isfinite(result.val_loss)
    assert any(m.startswith("step 0 (") and "val loss" in m for m in messages)  # the base model on the new data
    base, tuned = load_run(base_run), load_run(tmp_path / "ft")
    assert tuned.model.cfg.n_layers == base.model.cfg.n_layers == 1 and tuned.model.cfg.lora_rank == 4
    assert "<|assistant|>" in tuned.tokenizer.special_tokens
    assert tuned.tokenizer.vocab_size > base.tokenizer.vocab_size  # digits and markers the base corpus lacked
    flat = lambda p: {param_path(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(p)}
    b, t = flat(base.params), flat(tuned.params)
    for name, value in t.items():
        if "lora_b" in name:
            assert np.any(value != 0), name  # trained
        elif "lora_a" not in name and "embed" not in name:
            np.testing.assert_array_equal(value, b[name])  # frozen
    emb_b, emb_t = b["embed/embedding"], t["embed/embedding"]
    np.testing.assert_array_equal(emb_t[: len(emb_b)], emb_b)  # the old rows are the base model's
    # The fine-tuned run serves `llm sample` like any run (the prompt uses characters only the task brought).
    from llm.cli import main

    assert main(["sample", "--workdir", str(tmp_path / "ft"), "--prompt", "to words: 42\n", "--max-new-tokens",
                 "5", "--temperature", "0"]) == 0
