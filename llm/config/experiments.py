"""Experiment files and overrides: loading `FILE[:arg]`'s get_config / get_sweep, setting dotted keys, and the
saved config of a run (config.json) and how it differs from another.

Experiment files are Python and run as code when loaded: use only files you trust. Whatever goes wrong in one
(a missing file, a syntax error, an exception in get_config) is a one-line ConfigError naming the file.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from llm.config.base import get_base_config
from llm.config.options import FREE, OPTIONS
from llm.config.validation import validate_config
from llm.errors import ConfigError, one_line

DEFAULT_EXPERIMENT = str(Path(__file__).with_name("base.py"))  # what `llm train` runs without --config


def load_module(spec: str):
    """`FILE[:arg]` -> (the loaded module, FILE, arg). The file runs as Python code; any error in it is one line."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ConfigError(f"--config {path}: no such file; give an experiment file, e.g. "
                          "experiments/shakespeare_char.py:baby")
    # A fresh module per load: a module name reused across loads would keep an earlier file's get_config.
    module_spec = importlib.util.spec_from_file_location(f"llm_experiment_{abs(hash(spec))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"--config {path}: invalid syntax at line {e.lineno}: {e.msg}") from None
    except Exception as e:  # the file is the user's code: any error in it is theirs
        raise ConfigError(f"--config {path}: loading it raised {type(e).__name__}: {one_line(e)}") from None
    return module, path, arg


def load_experiment(spec: str, module=None) -> ConfigDict:
    """`FILE[:arg]` -> the ConfigDict of the file's get_config(arg) (`module`: the file, already loaded)."""
    path, _, arg = spec.partition(":")
    if module is None:
        module, path, arg = load_module(spec)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"--config {path}: has no get_config(); an experiment file defines get_config(arg=None) "
                          "returning a ConfigDict (see experiments/)")
    config = call(module, "get_config", arg, f"--config {spec}")
    if not isinstance(config, ConfigDict):
        raise ConfigError(f"--config {spec}: get_config() returned {type(config).__name__}, not a ConfigDict; start "
                          "from llm.config.get_base_config()")
    return config


def call(module, name: str, arg: str, where: str):
    """module.<name>(arg) (no argument when arg is empty); what it raises becomes a one-line ConfigError."""
    try:
        return getattr(module, name)(arg) if arg else getattr(module, name)()
    except Exception as e:
        raise ConfigError(f"{where}: {name} raised {type(e).__name__}: {one_line(e)}") from None


def check_key(config: ConfigDict, key: str, where: str) -> None:
    """ConfigError (naming the valid keys) unless the dotted `key` names a key of `config`."""
    node = config
    path = key.split(".")
    for depth, name in enumerate(path):
        if not isinstance(node, ConfigDict) or name not in node:
            section = ".".join(path[:depth]) or "the config"
            valid = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else "none (not a section)"
            raise ConfigError(f"{where}: unknown config key {key}; keys in {section}: {valid}")
        node = node[name]


def apply_overrides(config: ConfigDict, overrides: dict[str, Any]) -> ConfigDict:
    """A validated copy of `config` with the dotted keys set ({"model.position": "rope"}); ConfigError (one line)
    for an unknown key, a value of the wrong type, or a config that does not validate."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"override key {key!r}: expected a dotted config key like 'model.position'")
        check_key(config, key, f"override {key}")
        *sections, name = key.split(".")
        node = config
        for section in sections:
            node = node[section]
        if isinstance(node[name], ConfigDict):
            raise ConfigError(f"override {key}: is a section, not a value; set its keys ({key}.KEY) instead")
        expected = node.get_type(name)
        if isinstance(value, bool) and expected is not bool and node[name] is not None:
            raise ConfigError(f"override {key}={value!r}: must be {expected.__name__}, got bool")
        try:
            node[name] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"override {key}={value!r}: must be {expected.__name__}, got {type(value).__name__}"
                              f" ({one_line(e, 200)})") from None
    try:
        validate_config(config)
    except ConfigError as e:
        raise ConfigError(f"overrides {describe(overrides)}: {e}") from None
    return config


def describe(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "(none)"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'train.steps': 2000, ...}: a nested config dict's leaves under dotted keys."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def to_json(config: ConfigDict) -> str:
    """The text of a run's config.json."""
    return config.to_json_best_effort(indent=2, sort_keys=True)


def from_saved(saved: dict) -> ConfigDict:
    """The base config with a saved config's values (a run's config.json) set; ConfigError for keys the base
    config lacks or values of the wrong shape."""
    config = get_base_config()

    def update(node: ConfigDict, values: dict, prefix: str) -> None:
        for key, value in values.items():
            if key not in node:
                raise ConfigError(f"the saved config has an unknown key {prefix}{key}; was it made by another "
                                  "version?")
            if isinstance(value, dict):
                update(node[key], value, f"{prefix}{key}.")
            else:
                node[key] = value

    update(config, saved, "")
    return config


def resume_differences(saved: dict, config: ConfigDict) -> list[str]:
    """'key: old -> new' for every option a resumed run must keep (resume=FIXED) whose value differs between
    the saved config (a run's config.json, as a dict) and `config`. An option the saved config lacks (added to
    the code after the run was written) counts as its default, which keeps the old behaviour; one that needs
    another (`Option.needs`) unset in both configs does nothing, so it may differ."""
    old, new = flatten(saved), flatten(json.loads(config.to_json_best_effort()))
    for k in set(new) - set(old):
        if k in OPTIONS:
            old[k] = OPTIONS[k].default
    keys = sorted(set(old) | set(new))
    inert = lambda k: k in OPTIONS and OPTIONS[k].needs and not old.get(OPTIONS[k].needs) and not new.get(
        OPTIONS[k].needs)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys
            if old.get(k) != new.get(k) and (k not in OPTIONS or OPTIONS[k].resume != FREE) and not inert(k)]
