"""A run's workdir: its config, tokenizer, data and manifest, written once and read back by every job.

    workdir/
      config.json       the experiment config (ConfigDict as JSON)
      tokenizer.json    the tokenizer, trained on the corpus at the first start
      manifest.json     package versions, JAX backend and devices, git commit, corpus checksum
      checkpoints/      Orbax checkpoints (llm/checkpoint.py)
      metrics.jsonl     one JSON object per logged step
      tensorboard/      the same metrics for TensorBoard
      damaged-checkpoints/  checkpoints that failed their checksums (moved here, never deleted)
      .lock             held (flock) by the `llm train` process working in the workdir

Nothing in an existing run is overwritten unless asked: a workdir holding a run with another config is refused
(`--resume_anyway` continues it with the new config, the old config kept as config.json.<time>.bak;
`--overwrite` deletes the run's files and starts again).
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import importlib.metadata
import json
import os
import platform
import shutil
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
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
# What a run writes into its workdir (config backups are config.json.<time>.bak).
RUN_FILES = (CONFIG_FILE, TOKENIZER_FILE, MANIFEST_FILE, CHECKPOINT_DIR, METRICS_FILE, "tensorboard",
             "damaged-checkpoints", LOCK_FILE)
# Keys that may differ when a run is resumed: they change what is shown, measured or kept, how faults are
# handled, or where the work runs (devices, processes: the global batch and the math are the same on any mesh),
# not what a step computes.
RESUMABLE_KEYS = ("train.progress", "train.log_every", "train.eval_every", "train.eval_batches",
                  "train.checkpoint_every", "train.keep_checkpoints", "train.max_bad_steps", "train.spike_factor",
                  "train.spike_window", "train.max_rollbacks", "train.rollback_lr_factor", "sample.prompt",
                  "sample.num_samples", "sample.max_new_tokens", "sample.temperature", "sample.top_k",
                  "sample.top_p", "sample.seed")
RESUMABLE_SECTIONS = ("mesh.", "distributed.")


@dataclasses.dataclass
class RunData:
    corpus: Corpus
    tokenizer: Tokenizer
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    model: ModelConfig


def prepare_data(config: ConfigDict, workdir: Path | None = None) -> RunData:
    """Corpus -> split -> tokenizer -> cached token arrays; writes nothing into the workdir.

    The tokenizer is the run's own (workdir/tokenizer.json) when `workdir` holds one, else trained afresh
    (deterministically: every process of a multi-process run trains the same one).
    """
    d = config.data
    corpus = load_corpus(d.corpus, data_dir=d.data_dir)
    train_text, val_text = split_text(corpus.text, d.val_fraction)
    tok_path = None if workdir is None else workdir / TOKENIZER_FILE
    if tok_path is not None and tok_path.exists():
        tokenizer = load_tokenizer(tok_path)  # DataError naming the file when damaged
    else:
        # The character vocabulary comes from the whole text (as nanoGPT does), so the validation split never
        # holds an unknown character; BPE merges are learned from the training split only.
        source = corpus.text if d.tokenizer == "char" else train_text
        try:
            tokenizer = train_tokenizer(d.tokenizer, source,
                                        vocab_size=d.vocab_size if d.tokenizer == "bpe" else None)
        except ValueError as e:  # e.g. a BPE vocabulary smaller than its 257 base tokens
            raise ConfigError(f"data.tokenizer={d.tokenizer!r}, data.vocab_size={d.vocab_size}: {e}") from None
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
    """Write config.json; an existing one with other contents is kept as config.json.<time>.bak."""
    path = workdir / CONFIG_FILE
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if path.exists() and path.read_text() != text:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        os.replace(path, workdir / f"{CONFIG_FILE}.{stamp}.bak")
    _atomic_write(path, text)


def check_workdir(config: ConfigDict, workdir: Path, *, resume_anyway: bool = False,
                  overwrite: bool = False) -> str:
    """What starting `config` in `workdir` means: 'new', 'resume' or 'overwrite'; raises ConfigError (and
    changes nothing) when it would touch something it should not."""
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file, not a directory; choose another --workdir")
    if not workdir.exists():
        return "new"
    if overwrite:
        return "overwrite"
    if (workdir / CONFIG_FILE).exists():
        try:
            diff = config_differences(config, workdir)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ConfigError(f"{workdir / CONFIG_FILE} is damaged ({e}); move the run aside, or pass --overwrite "
                              "to delete it and start again") from None
        if diff and not resume_anyway:
            shown = "; ".join(diff[:6]) + ("; ..." if len(diff) > 6 else "")
            raise ConfigError(f"{workdir} holds a run with a different config ({shown}); use another --workdir "
                              "for a new run, --resume_anyway to continue this one with the new config, or "
                              "--overwrite to delete it and start again")
        return "resume"
    strangers = sorted(p.name for p in workdir.iterdir()
                       if p.name not in RUN_FILES and not p.match(f"{CONFIG_FILE}.*.bak"))
    if strangers:
        raise ConfigError(f"--workdir {workdir} is not empty and holds no run (found {', '.join(strangers[:3])}"
                          f"{', ...' if len(strangers) > 3 else ''}); choose a new or empty directory")
    return "new"


def clear_run(workdir: Path) -> None:
    """Delete the files a run wrote into `workdir` (for --overwrite); anything else there is left alone."""
    for path in [workdir / name for name in RUN_FILES] + list(workdir.glob(f"{CONFIG_FILE}.*.bak")):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class WorkdirLock:
    """An exclusive flock on workdir/.lock for the life of a training process (released by the OS on exit,
    even after SIGKILL), so two `llm train` processes never write one run."""

    def __init__(self, workdir: Path):
        self.path = workdir / LOCK_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise ConfigError(f"another `llm train` (pid {holder}) is running in {workdir}; wait for it, stop it, "
                              "or use another --workdir") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


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
    try:
        _update(config, saved, "")
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # valid JSON of the wrong shape or types
        raise ConfigError(f"{path} is damaged ({type(e).__name__}: {e}); restore the run's config file") from None
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
