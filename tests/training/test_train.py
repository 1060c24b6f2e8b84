"""The training job: learning, exact resume, gradient accumulation, optimizers, checkpoints, metrics."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from llm import runs as run_lib
from llm.config import get_base_config
from llm.errors import ConfigError
from llm.model import ModelConfig, Transformer
from llm.runs import Checkpointer
from llm.state.optimizers import decay_mask, make_optimizer, schedule
from llm.state.train_state import create_train_state
from llm.tokenizers import load_tokenizer
from llm.training import train
from llm.training.steps import make_train_step


def params_of(workdir, step=None):
    from llm.runs import load_run

    return load_run(workdir, str(step) if step else "latest").params


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_loss_goes_down_and_run_is_recorded(tmp_path):
    config = tiny_config(tmp_path, **{"train.steps": 120, "train.eval_every": 60, "train.log_every": 10})
    result = train(config, tmp_path / "run", log=lambda *_: None)
    vocab = load_tokenizer(tmp_path / "run" / "tokenizer.json").vocab_size
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if "val_loss" in x]
    steps = [x for x in lines if "loss" in x]
    assert [e["step"] for e in evals] == [60, 120]
    # From about uniform (log V) to well below it: the model learned the corpus's structure.
    assert steps[0]["loss"] > 0.9 * np.log(vocab)
    assert result.val_loss == evals[-1]["val_loss"] < 0.6 * np.log(vocab)
    assert {"lr", "grad_norm", "tokens_per_s", "step_time_ms", "mfu"} <= set(steps[-1])
    assert 0 < steps[-1]["mfu"] < 1
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["corpus"]["sha256"] and manifest["packages"]["jax"] == jax.__version__
    assert (tmp_path / "run" / "tokenizer.json").exists() and (tmp_path / "run" / "tensorboard").is_dir()
    assert len(result.samples) == 1 and result.samples[0].startswith("\n")


def test_resume_is_bit_exact(tmp_path):
    """Stopped at step 7 and resumed = never stopped (params, optimizer state and the logged losses)."""
    config = tiny_config(tmp_path, **{"train.steps": 16, "train.checkpoint_every": 4, "train.log_every": 1,
                                      "model.dropout": 0.1})
    quiet = dict(log=lambda *_: None)
    train(config, tmp_path / "straight", **quiet)
    train(config, tmp_path / "resumed", stop_after=7, **quiet)
    assert Checkpointer(tmp_path / "resumed" / "checkpoints").latest_step() == 7
    train(config, tmp_path / "resumed", **quiet)
    assert_trees_equal(params_of(tmp_path / "straight"), params_of(tmp_path / "resumed"))

    def losses(run):
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    assert losses("straight") == losses("resumed")


def test_rerun_of_finished_run_trains_nothing(tmp_path):
    config = tiny_config(tmp_path, **{"train.steps": 10})
    train(config, tmp_path / "run", log=lambda *_: None)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    messages = []
    result = train(config, tmp_path / "run", log=messages.append)
    assert result.step == 10 and (tmp_path / "run" / "metrics.jsonl").read_text() == before
    assert any("already holds a finished run" in m for m in messages)


def test_workdir_with_other_config_is_refused(tmp_path):
    config = tiny_config(tmp_path, **{"train.steps": 10})
    train(config, tmp_path / "run", log=lambda *_: None)
    config.model.n_layers = 3
    with pytest.raises(ConfigError, match=r"different config \(model.n_layers: 1 -> 3\)"):
        train(config, tmp_path / "run", log=lambda *_: None)


def test_checkpoints_keep_latest_and_best(tmp_path):
    config = tiny_config(tmp_path, **{"train.steps": 30, "train.checkpoint_every": 5, "train.eval_every": 5,
                                      "train.keep_checkpoints": 2})
    train(config, tmp_path / "run", log=lambda *_: None)
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    steps = ckpt.all_steps()
    best = ckpt.best_step()
    assert steps[-2:] == [25, 30] and best in steps and len(steps) <= 3
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    assert vals[best] == min(vals.values())


def _step_fn_and_state(grad_accum, optim_name="adamw"):
    cfg = ModelConfig(vocab_size=16, max_len=8, d_model=16, n_layers=1, n_heads=2)
    model = Transformer(cfg)
    o = get_base_config().optim
    o.name, o.warmup_steps, o.schedule = optim_name, 0, "constant"
    o.lr = 1e-2 if optim_name == "adafactor" else 2e-3  # adafactor scales steps by the parameters' RMS
    tx, lr = make_optimizer(o, 10)
    state = jax.jit(create_train_state, static_argnums=(0, 1, 3))(model, tx, jax.random.PRNGKey(0), 8)
    return make_train_step(model, tx, lr, grad_accum, jax.random.PRNGKey(3)), state


def test_gradient_accumulation_equals_full_batch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, (8, 8)).astype(np.int32)
    y = np.roll(x, -1, axis=1)
    step1, s1 = _step_fn_and_state(1)
    step4, s4 = _step_fn_and_state(4)
    s1, m1 = step1(s1, x, y)
    s4, m4 = step4(s4, x, y)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s4.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "sgd", "lion", "adafactor"])
def test_each_optimizer_lowers_the_loss(name):
    step, state = _step_fn_and_state(1, name)
    x = np.tile(np.arange(8, dtype=np.int32), (4, 1))
    y = np.roll(x, -1, axis=1)
    losses = []
    for _ in range(30):
        state, m = step(state, x, y)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.1, (name, losses[0], losses[-1])


def test_schedule_shape():
    o = get_base_config().optim
    o.lr, o.warmup_steps, o.min_lr_ratio = 1.0, 10, 0.1
    lr = schedule(o, 110)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0) and float(lr(110)) == pytest.approx(0.1)
    o.schedule = "linear"
    assert float(schedule(o, 110)(60)) == pytest.approx(0.55)
    o.schedule = "constant"
    assert float(schedule(o, 110)(100)) == pytest.approx(1.0)


def test_weight_decay_mask():
    params = {"embed": {"embedding": 0}, "positions": {"embedding": 0},
              "layers_0": {"attention": {"query": {"kernel": 0, "bias": 0}}, "ffn_norm": {"scale": 0, "bias": 0}}}
    mask = decay_mask(params, decay_embeddings=False)
    assert mask["layers_0"]["attention"]["query"] == {"kernel": True, "bias": False}
    assert mask["layers_0"]["ffn_norm"] == {"scale": False, "bias": False}
    assert not mask["embed"]["embedding"] and not mask["positions"]["embedding"]
    assert decay_mask(params, decay_embeddings=True)["embed"]["embedding"]


def test_clipping_is_applied():
    o = get_base_config().optim
    o.name, o.clip_norm, o.warmup_steps, o.schedule, o.lr, o.weight_decay = "sgd", 1.0, 0, "constant", 1.0, 0.0
    o.momentum = 0.0
    tx, _ = make_optimizer(o, 10)
    params = {"w": np.zeros(4, np.float32)}
    updates, _ = tx.update({"w": np.full(4, 10.0, np.float32)}, tx.init(params), params)
    assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


def test_data_too_short_for_context(tmp_path):
    config = tiny_config(tmp_path)
    (tmp_path / "short.txt").write_text("abc " * 40)
    config.data.corpus = str(tmp_path / "short.txt")
    from llm.errors import DataError

    with pytest.raises(DataError, match="fewer than the context"):
        train(config, tmp_path / "run", log=lambda *_: None)
    assert not (tmp_path / "run" / run_lib.CONFIG_FILE).exists()


def test_stopping_early_flushes_pending_metrics(tmp_path):
    config = tiny_config(tmp_path, **{"train.steps": 12, "train.log_every": 5, "train.checkpoint_every": 10})
    train(config, tmp_path / "run", stop_after=7, log=lambda *_: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [5, 7]
    assert Checkpointer(tmp_path / "run" / "checkpoints").latest_step() == 7


def test_dropout_rng_choices():
    """'rbg' and 'threefry' dropout: each deterministic per step, different from each other, masks at rate p."""
    cfg = ModelConfig(vocab_size=16, max_len=8, d_model=16, n_layers=1, n_heads=2, dropout=0.3)
    model = Transformer(cfg)
    o = get_base_config().optim
    tx, lr = make_optimizer(o, 10)
    state = jax.jit(create_train_state, static_argnums=(0, 1, 3))(model, tx, jax.random.PRNGKey(0), 8)
    x = np.tile(np.arange(8, dtype=np.int32), (4, 1))
    losses = {}
    for rng in ("rbg", "threefry"):
        step = make_train_step(model, tx, lr, 1, jax.random.PRNGKey(3), dropout_rng=rng)
        runs = [float(step(jax.tree.map(jnp.copy, state), x, x)[1]["loss"]) for _ in range(2)]
        assert runs[0] == runs[1], rng
        losses[rng] = runs[0]
    assert losses["rbg"] != losses["threefry"]
    key = jax.random.wrap_key_data(jax.random.bits(jax.random.PRNGKey(0), (4,), jnp.uint32), impl="rbg")
    kept = nn.Dropout(0.3, deterministic=False).apply({}, jnp.ones((100_000,)), rngs={"dropout": key}) != 0
    assert abs(float(kept.mean()) - 0.7) < 0.01


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_byte_and_bpe_tokenizers_train_and_sample(tmp_path, kind):
    """The other tokenizers through the whole job: trained (BPE on the training split), saved, used to tokenize,
    to size the model, to sample; a resumed run reads the saved one."""
    config = tiny_config(tmp_path, **{"data.tokenizer": kind, "data.vocab_size": 300, "model.n_layers": 1,
                                      "train.steps": 4, "train.eval_every": 4, "train.checkpoint_every": 2,
                                      "train.eval_batches": 1})
    train(config, tmp_path / "run", stop_after=2, log=lambda *_: None)
    tok = load_tokenizer(tmp_path / "run" / "tokenizer.json")
    assert tok.kind == kind and (tok.vocab_size == 257 if kind == "byte" else 257 < tok.vocab_size <= 300)
    result = train(config, tmp_path / "run", log=lambda *_: None)  # resumed: with the saved tokenizer
    assert load_tokenizer(tmp_path / "run" / "tokenizer.json") == tok
    assert result.step == 4 and len(result.samples) == 1
    assert params_of(tmp_path / "run")["embed"]["embedding"].shape[0] == tok.vocab_size
