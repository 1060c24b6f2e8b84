"""Checking an experiment config: its keys and types against the base config, every value with its option's
check, the model with ModelConfig's own rules, and the few rules that relate options to each other."""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

from llm.config.base import get_base_config
from llm.config.options import OPTIONS
from llm.errors import ConfigError
from llm.model.config import ModelConfig


def validate_config(config: ConfigDict) -> None:
    """Raise ConfigError (one line) for unknown keys, wrong types and inconsistent values."""
    check_keys_and_types(config, get_base_config(), "")
    model = model_config(config, vocab_size=config.model.vocab_size or 1)
    for key, option in OPTIONS.items():
        value = lookup(config, key)
        if value is None and not option.nullable:
            raise ConfigError(f"{key} may not be None (its default is {option.default!r})")
        if option.check is not None and value is not None:
            problem = option.check(key, value)
            if problem:
                raise ConfigError(problem)
    _check_relations(config, model)


def _check_relations(config: ConfigDict, model: ModelConfig) -> None:
    t, s, d = config.train, config.sample, config.data
    if (t.seq_len or model.max_len) > model.max_len:
        raise ConfigError(f"train.seq_len={t.seq_len} is longer than the context model.max_len={model.max_len}")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
    if s.num_samples and not s.prompt:
        raise ConfigError("sample.prompt is empty; the samples after training need at least one character to "
                          "continue from (e.g. '\\n'), or set sample.num_samples=0")
    if d.sft and d.synthetic:
        raise ConfigError(f"data.sft={d.sft!r} and data.synthetic={d.synthetic!r} are both set; a run trains on one "
                          "of them (or on data.corpus when both are empty)")


def model_config(config: ConfigDict, *, vocab_size: int | None = None) -> ModelConfig:
    """The ModelConfig of an experiment; `vocab_size` fills in model.vocab_size when that is None."""
    d = config.model.to_dict()
    if d.get("vocab_size") is None:
        if vocab_size is None:
            raise ConfigError("model.vocab_size is None and no tokenizer gave one")
        d["vocab_size"] = vocab_size
    return ModelConfig.from_dict(d)


def lookup(config: ConfigDict, key: str) -> Any:
    """config['a']['b'] for the dotted key 'a.b'."""
    node = config
    for name in key.split("."):
        node = node[name]
    return node


def check_keys_and_types(config: Any, base: Any, prefix: str) -> None:
    """Same keys as the base config, and values of the base's types (ints may stand for floats)."""
    unknown = sorted(set(config.keys()) - set(base.keys()))
    if unknown:
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)} in {where}; "
                          f"valid keys: {', '.join(sorted(base.keys()))}")
    missing = sorted(set(base.keys()) - set(config.keys()))
    if missing:
        raise ConfigError(f"config is missing {', '.join(prefix + k for k in missing)}; start experiment files "
                          "from llm.config.get_base_config()")
    for key in base.keys():
        value, default = config[key], base[key]
        if isinstance(default, ConfigDict):
            if not isinstance(value, ConfigDict):
                raise ConfigError(f"{prefix}{key} must be a section (ConfigDict), got {value!r}")
            check_keys_and_types(value, default, f"{prefix}{key}.")
            continue
        expected = base.get_type(key) if hasattr(base, "get_type") else type(default)
        if value is None or expected is type(None):
            continue
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        ok = ok or (expected is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{prefix}{key} must be {expected.__name__}, got {type(value).__name__} {value!r}")
