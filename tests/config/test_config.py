"""Experiment configs: the base config, every shipped experiment, overrides and validation errors."""

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from llm.config import get_base_config, model_config, validate_config
from llm.config.options import (
    ADAPTERS,
    CONTEXT,
    FIXED,
    FREE,
    OPTIONS,
    RUNTIME,
    SOURCE,
    UNSUPPORTED,
    WEIGHTS,
    model_fields,
)
from llm.errors import ConfigError
from llm.model import ModelConfig

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


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


# ---------------------------------------------------------------------------------------------------------
# the option table: every option defined once, every model field classified


def test_the_base_config_is_the_option_table():
    from llm.config.experiments import flatten

    flat = flatten(get_base_config().to_dict())
    assert set(flat) == set(OPTIONS)
    for key, option in OPTIONS.items():
        assert flat[key] == option.default, key
        assert option.resume in (FIXED, FREE), key
        assert option.nullable or option.default is not None, key


def test_every_model_field_is_classified():
    """A new ModelConfig field must say whether a fine-tune takes it from its source model and how HF conversion
    treats it: a missing row fails here, not in a user's run."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert {k.split(".", 1)[1] for k in OPTIONS if k.startswith("model.")} == fields
    for name in fields:
        option = OPTIONS[f"model.{name}"]
        assert option.finetune in (SOURCE, FREE), name
        assert option.hf in (WEIGHTS, CONTEXT, RUNTIME, ADAPTERS, UNSUPPORTED), name
        assert option.resume == FIXED, name  # the model is what a step computes


def test_the_columns_drive_resume_finetune_and_hf():
    from llm.config.experiments import resume_differences
    from llm.hf.configs import OVERRIDABLE

    base = get_base_config()
    saved = base.to_dict()
    changed = get_base_config()
    changed.train.log_every, changed.eval.split, changed.mesh.rules.batch = 7, "train", "data"
    assert resume_differences(saved, changed) == []  # all FREE
    changed.train.steps = 9
    assert resume_differences(saved, changed) == ["train.steps: 2000 -> 9"]
    del saved["data"]["order"]  # a run written before the option existed: it had the default's behaviour
    assert resume_differences(saved, changed) == ["train.steps: 2000 -> 9"]
    changed.data.order = "passes"
    assert resume_differences(saved, changed) == ["data.order: 'random' -> 'passes'", "train.steps: 2000 -> 9"]
    changed.data.order, changed.train.steps = "random", 2000
    changed.model.lora_targets = "feed_forward/up"  # LoRA off in both: the targets do nothing
    assert resume_differences(saved, changed) == []
    changed.model.lora_rank = 4
    assert resume_differences(saved, changed) == ["model.lora_rank: 0 -> 4", "model.lora_targets: "
                                                  f"{saved['model']['lora_targets']!r} -> 'feed_forward/up'"]
    assert set(OVERRIDABLE) == {"max_len"} | set(model_fields("hf", RUNTIME))
    assert "short_conv" in model_fields("hf", UNSUPPORTED) and "attention_impl" in model_fields("finetune", FREE)


def test_importing_the_config_loads_no_jax():
    code = ("import sys, llm.config, llm.sweep; "
            "print(sorted(m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("preset", ["alice_full", "alice_lora", "alice_scratch", "num2words", "dates", "fields"])
def test_every_finetune_preset_validates(preset):
    module = load_experiment("finetune")
    assert preset in module.PRESETS
    config = module.get_config(preset)
    validate_config(config)
    assert config.finetune.init_from in ("", module.BASE)


def test_sampling_rules_are_one_for_flags_and_config():
    """The config's sample section and the flags take the same rule from SamplingParams."""
    from llm.config.sampling import SamplingParams

    for field, bad in (("temperature", -1.0), ("top_k", -1), ("top_p", 1.5), ("max_new_tokens", 0), ("seed", 2**62)):
        rule = SamplingParams(**{field: bad}).problem(field)
        assert rule
        with pytest.raises(ConfigError) as info:
            validate_config(_with(**{f"sample__{field}": bad}))
        assert str(info.value) == f"sample.{field} {rule}"
        with pytest.raises(ConfigError) as info:
            SamplingParams(**{field: bad}).check(lambda f: "--" + f.replace("_", "-"))
        assert str(info.value) == f"--{field.replace('_', '-')} {rule}"
    validate_config(_with(sample__top_k=0, sample__top_p=1.0))  # 0 and 1: off, as for the flags
