"""The base experiment config, built from the option table, and the default experiment.

An experiment file in experiments/ defines `get_config(arg=None)`, starts from `get_base_config()` and changes
what it needs; command-line overrides (`--config.model.n_layers=8`) are applied on top by ml_collections. The
base config *is* the default experiment: a small character-level model trained on the Python documentation
that ships with every CPython, so `llm train` runs on a fresh machine with no network and no files. This file
doubles as the experiment file `llm train` loads when given no --config.
"""

from __future__ import annotations

from ml_collections import ConfigDict, config_dict

from llm.config.options import OPTIONS
from llm.errors import ConfigError


def get_base_config() -> ConfigDict:
    """All keys an experiment may set, with their defaults (llm/config/options.py)."""
    config = ConfigDict()
    for option in OPTIONS.values():
        *sections, name = option.key.split(".")
        node = config
        for section in sections:
            if section not in node:
                node[section] = ConfigDict()
            node = node[section]
        node[name] = config_dict.placeholder(option.type) if option.default is None else option.default
    return config


def get_config(arg: str | None = None) -> ConfigDict:
    """The default experiment."""
    if arg:
        raise ConfigError(f"the default config has no presets (got {arg!r})")
    return get_base_config()
