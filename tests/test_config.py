"""Experiment configs: the base config, every shipped experiment, overrides and validation errors."""

import importlib.util
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from llm.config import get_base_config, model_config, validate_config
from llm.model import ConfigError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, preset", [("default", None), ("shakespeare_char", "baby"),
                                          ("shakespeare_char", "small"), ("gpt2", "124m"), ("gpt2", "350m"),
                                          ("gpt2", "tiny"), ("llama", "tiny"), ("llama", "350m"), ("llama", "1b")])
def test_shipped_experiments_validate(name, preset):
    config = load_experiment(name).get_config(preset)
    validate_config(config)
    model_config(config, vocab_size=100)


def test_baby_is_nanogpts_cpu_command():
    c = load_experiment("shakespeare_char").get_config("baby")
    assert (c.model.n_layers, c.model.n_heads, c.model.d_model, c.model.max_len) == (4, 4, 128, 64)
    assert (c.train.batch_size, c.train.steps, c.optim.lr, c.optim.decay_steps, c.model.dropout) == (
        12, 2000, 1e-3, 2000, 0.0)
    small = load_experiment("shakespeare_char").get_config("small")
    assert (small.model.n_layers, small.model.d_model, small.model.max_len, small.train.batch_size,
            small.model.dropout) == (6, 384, 256, 64, 0.2)


def test_gpt2_124m_has_124m_params():
    from llm.model.params import param_count_formula

    cfg = model_config(load_experiment("gpt2").get_config("124m"), vocab_size=50257)
    assert param_count_formula(cfg)["total"] == 124_439_808


def test_llama_shape():
    cfg = model_config(load_experiment("llama").get_config("1b"), vocab_size=128256)
    assert (cfg.position, cfg.norm, cfg.ffn, cfg.kv_heads, cfg.use_bias) == ("rope", "rmsnorm", "swiglu", 8, False)


def test_base_config_is_locked_against_typos():
    c = get_base_config()
    c.lock()
    with pytest.raises(AttributeError):
        c.model.n_layer = 3


def _with(**changes):
    c = get_base_config()
    for key, value in changes.items():
        node = c
        *path, last = key.split("__")
        for p in path:
            node = node[p]
        with node.ignore_type():
            node[last] = value
    return c


@pytest.mark.parametrize("changes, message", [
    (dict(model__d_model=100, model__n_heads=3), "not divisible by model.n_heads"),
    (dict(model__n_heads=4, model__n_kv_heads=3), "not divisible by model.n_kv_heads"),
    (dict(model__window=4096), "larger than the context"),
    (dict(model__position="spiral"), "learned, sinusoidal, rope, alibi, none"),
    (dict(optim__name="adam"), "optim.name='adam' is not one of: adamw, sgd, lion, adafactor"),
    (dict(optim__schedule="step"), "cosine, linear, constant"),
    (dict(data__tokenizer="word"), "char, byte, bpe"),
    (dict(train__steps=0), "train.steps must be positive"),
    (dict(train__batch_size=10, train__grad_accum=3), "not divisible by train.grad_accum"),
    (dict(train__seq_len=4096), "longer than the context"),
    (dict(train__steps="many"), "train.steps must be int, got str"),
    (dict(optim__lr="fast"), "optim.lr must be float"),
    (dict(data__val_fraction=1.5), "val_fraction must be in"),
    (dict(sample__top_p=0.0), "top_p must be in"),
])
def test_validation_errors(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        validate_config(_with(**changes))
    assert "\n" not in str(info.value)


def test_unknown_and_missing_keys():
    c = get_base_config()
    c.train.colour = "blue"
    with pytest.raises(ConfigError, match=r"unknown key\(s\) train.colour"):
        validate_config(c)
    c = get_base_config()
    del c.optim["lr"]
    with pytest.raises(ConfigError, match=r"missing optim\.lr"):
        validate_config(c)
    c = get_base_config()
    c.extra = ConfigDict({"x": 1})
    with pytest.raises(ConfigError, match="unknown key"):
        validate_config(c)
