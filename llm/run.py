"""A run's workdir: its config, tokenizer, data and manifest, written once and read back by every job.

    workdir/
      config.json       the experiment config (ConfigDict as JSON)
      tokenizer.json    the tokenizer, trained on the corpus at the first start
      manifest.json     package versions, JAX backend and devices, git commit, corpus checksum
      checkpoints/      Orbax checkpoints (llm/checkpoint.py)
      metrics.jsonl     one JSON object per logged step
      tensorboard/      the same metrics for TensorBoard
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from llm import config as config_lib
from llm.data import Corpus, DataError, cache_dir, load_corpus, split_text, tokenize_to_memmap
from llm.model import ModelConfig
from llm.model.config import ConfigError
from llm.tokenizers import Tokenizer, load_tokenizer, train_tokenizer

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_DIR = "checkpoints"
# Keys that may differ when a run is resumed: they change what is shown, or where the work runs (devices,
# processes: the global batch and the math are the same on any mesh), not what is computed.
RESUMABLE_KEYS = ("train.progress", "train.log_every", "sample.prompt", "sample.num_samples",
                  "sample.max_new_tokens", "sample.temperature", "sample.top_k", "sample.top_p", "sample.seed")
RESUMABLE_SECTIONS = ("mesh.", "distributed.")


@dataclasses.dataclass
class RunData:
    corpus: Corpus
    tokenizer: Tokenizer
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    model: ModelConfig


def prepare_data(config: ConfigDict, workdir: Path, *, write: bool = True) -> RunData:
    """Corpus -> split -> tokenizer (trained once, then reloaded from the workdir) -> cached token arrays.

    write: save the tokenizer into the workdir (in multi-process runs only process 0 writes; the others train
      the same deterministic tokenizer themselves).
    """
    d = config.data
    corpus = load_corpus(d.corpus, data_dir=d.data_dir)
    train_text, val_text = split_text(corpus.text, d.val_fraction)
    tok_path = workdir / TOKENIZER_FILE
    if tok_path.exists():
        tokenizer = load_tokenizer(tok_path)
    else:
        # The character vocabulary comes from the whole text (as nanoGPT does), so the validation split never
        # holds an unknown character; BPE merges are learned from the training split only.
        source = corpus.text if d.tokenizer == "char" else train_text
        tokenizer = train_tokenizer(d.tokenizer, source, vocab_size=d.vocab_size if d.tokenizer == "bpe" else None)
        if write:
            tokenizer.save(tok_path)
    cache = Path(d.cache_dir) if d.cache_dir else cache_dir() / "tokens"
    train_tokens = tokenize_to_memmap(train_text, tokenizer, cache)
    val_tokens = tokenize_to_memmap(val_text, tokenizer, cache)
    model = config_lib.model_config(config, vocab_size=tokenizer.vocab_size)
    if model.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's vocabulary "
                          f"({tokenizer.vocab_size}); leave it unset (None) to take the tokenizer's size")
    seq_len = config.train.seq_len or model.max_len
    for name, tokens in (("training", train_tokens), ("validation", val_tokens)):
        if len(tokens) < seq_len + 1:
            raise DataError(f"the {name} split of {corpus.name} has {len(tokens)} tokens, fewer than the context "
                            f"of {seq_len} + 1; use a shorter train.seq_len / model.max_len or a bigger corpus")
    return RunData(corpus, tokenizer, train_tokens, val_tokens, model)


def save_config(config: ConfigDict, workdir: Path) -> None:
    _atomic_write(workdir / CONFIG_FILE, config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str | Path) -> ConfigDict:
    """The config a run was started with (validated against today's base config)."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{path} not found: is {workdir} the workdir of a `llm train` run?")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); the run's config file is damaged") from None
    config = config_lib.get_base_config()
    _update(config, saved, "")
    config_lib.validate_config(config)
    return config


def config_differences(config: ConfigDict, workdir: Path) -> list[str]:
    """Keys whose values differ from the config saved in the workdir (ignoring RESUMABLE_KEYS)."""
    saved = _flatten(json.loads((workdir / CONFIG_FILE).read_text()))
    now = _flatten(json.loads(config.to_json_best_effort()))
    keys = sorted(set(saved) | set(now))
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys
            if saved.get(k) != now.get(k) and k not in RESUMABLE_KEYS and not k.startswith(RESUMABLE_SECTIONS)]


def write_manifest(workdir: Path, data: RunData, config: ConfigDict) -> None:
    """Where and with what the run was made: enough to reproduce or to explain a difference."""
    packages = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml-collections", "numpy", "tokenizers"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    manifest = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "packages": packages,
        "jax_backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
        "process_count": jax.process_count(),
        "git_commit": _git_commit(),
        "corpus": {"name": data.corpus.name, "sha256": data.corpus.sha256, "provenance": data.corpus.provenance,
                   "characters": len(data.corpus.text)},
        "tokens": {"train": len(data.train_tokens), "val": len(data.val_tokens)},
        "tokenizer": {"kind": data.tokenizer.kind, "vocab_size": data.tokenizer.vocab_size,
                      "fingerprint": data.tokenizer.fingerprint()},
        "config_seed": config.seed,
    }
    _atomic_write(workdir / MANIFEST_FILE, json.dumps(manifest, indent=2))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _update(config: ConfigDict, saved: dict, prefix: str) -> None:
    for key, value in saved.items():
        if key not in config:
            raise ConfigError(f"the saved config has an unknown key {prefix}{key}; was it made by another version?")
        if isinstance(value, dict):
            _update(config[key], value, f"{prefix}{key}.")
        else:
            config[key] = value
