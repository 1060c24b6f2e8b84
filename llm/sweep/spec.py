"""Sweeps as data: an experiment file's `get_sweep(arg=None)` returns its runs as a list of override dicts
(big_vision style), built with these helpers, and each run gets a short, stable name.

    from llm import sweep

    def get_sweep(arg=None):
        return sweep.product(**{"model.position": ["rope", "alibi"], "seed": [0, 1, 2]})

A run's `_name` entry (NAME_KEY) names it; otherwise its name is made from its overrides.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from typing import Any

NAME_KEY = "_name"  # in an override dict: the run's name (not a config key)
MAX_NAME_CHARS = 100
# What a sweep directory holds besides its runs' directories (so no run may take these names).
SWEEP_FILE, SLURM_FILE, LOG_DIR = "sweep.json", "sweep.slurm", "logs"
REPORT_FILES = ("report.md", "report.csv", "curves.png", "variants.png", "state.png", "width.png")
RESERVED_NAMES = {SWEEP_FILE, SLURM_FILE, LOG_DIR, *REPORT_FILES}


def product(**axes: list) -> list[dict[str, Any]]:
    """The cartesian product of the axes, the first axis varying slowest:
    product(**{"model.position": ["rope", "alibi"], "seed": [0, 1]}) -> 4 override dicts."""
    for key, values in axes.items():
        _check_axis(key, values)
    keys = list(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(axes[k] for k in keys))]


def zip_(**axes: list) -> list[dict[str, Any]]:
    """The axes side by side (all of one length): zip_(**{"optim.lr": [1e-3, 3e-4], "train.steps": [100, 200]})."""
    for key, values in axes.items():
        _check_axis(key, values)
    lengths = {k: len(v) for k, v in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zip_: the axes differ in length ({', '.join(f'{k}: {n}' for k, n in lengths.items())})")
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in zip(*(axes[k] for k in keys), strict=True)]


def chain(*lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of several sweeps, one after the other."""
    out = []
    for runs in lists:
        if not isinstance(runs, list | tuple):
            raise ValueError(f"chain: expected lists of override dicts, got {type(runs).__name__}")
        out.extend(dict(r) for r in runs)
    return out


def _check_axis(key: str, values: Any) -> None:
    if not isinstance(values, list | tuple):
        raise ValueError(f"axis {key!r}: expected a list of values, got {type(values).__name__} {values!r}")


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_name(overrides: dict[str, Any]) -> str:
    """A short, stable, readable file name for a run: 'position=rope,seed=0' (each key's last component; the full
    key when two keys share it). Characters other than letters, digits and . _ - = , become '-'."""
    if not overrides:
        return "base"
    if NAME_KEY in overrides:
        return re.sub(r"[^A-Za-z0-9._=,-]+", "-", str(overrides[NAME_KEY])).strip(".-") or "run"
    last = [k.split(".")[-1] for k in overrides]
    parts = []
    for key, short in zip(overrides, last, strict=True):
        label = short if last.count(short) == 1 else key
        parts.append(f"{label}={_format_value(overrides[key])}")
    name = re.sub(r"[^A-Za-z0-9._=,-]+", "-", ",".join(parts)).strip(".-") or "run"
    if len(name) > MAX_NAME_CHARS:  # long values: keep it a valid file name, and unique by a hash of the overrides
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME_CHARS - 9]}-{digest}"
    return name


def run_names(runs: list[dict[str, Any]]) -> list[str]:
    """run_name of each run, made unique within the sweep by a suffix (-2, -3, ...) where names collide."""
    names, seen = [], set()
    for overrides in runs:
        base = run_name(overrides)
        name, i = base, 1
        while name in seen or name in RESERVED_NAMES:
            i += 1
            name = f"{base}-{i}"
        seen.add(name)
        names.append(name)
    return names


def flag_value(value: Any) -> str:
    """A value as ml_collections parses it from --config.a.b=VALUE."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def override_flags(overrides: dict[str, Any]) -> list[str]:
    return [f"--config.{k}={flag_value(v)}" for k, v in overrides.items()]
