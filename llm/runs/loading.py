"""Reading a trained run back: its config, tokenizer and model (`open_run`, cheap, checks the files) and its
parameters from a checkpoint (`RunFiles.restore`); `load_run` does both.

Nothing in the workdir is written. User mistakes (no such run, damaged files, an unknown checkpoint) raise
ConfigError, DataError or CheckpointError with a one-line message. Checkpoints are verified against their
checksums: a damaged latest one is skipped with a warning in favour of the one before; a damaged one asked for by
step is an error.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from llm.config import ResolvedRun, resolve
from llm.errors import CheckpointError, ConfigError, DataError
from llm.model import Transformer
from llm.runs.checkpoints import Checkpointer, DamagedCheckpoint
from llm.runs.layout import CHECKPOINT_DIR, MANIFEST_FILE, TOKENIZER_FILE
from llm.runs.workdir import load_config, read_manifest
from llm.state import abstract_train_state, make_optimizer
from llm.tokenizers import Tokenizer, load_tokenizer


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


@dataclasses.dataclass
class LoadedRun:
    run: ResolvedRun
    model: Transformer
    params: Any
    tokenizer: Tokenizer
    step: int

    @property
    def config(self) -> ConfigDict:
        return self.run.config


@dataclasses.dataclass
class RunFiles:
    """A run (resolved from its config.json), its tokenizer and model, read and checked; its parameters not yet
    read."""

    workdir: Path
    run: ResolvedRun
    tokenizer: Tokenizer
    model: Transformer

    @property
    def config(self) -> ConfigDict:
        return self.run.config

    def restore(self, checkpoint: str = "latest", *, log: Callable[[str], None] = _warn) -> LoadedRun:
        """The parameters of `checkpoint` ('latest', 'best' or a step), laid out on one device whatever mesh the
        run was trained on (Orbax reshards as it reads)."""
        ckpt_dir = self.workdir / CHECKPOINT_DIR
        if not ckpt_dir.is_dir():  # checked here: the Checkpointer would create the directory
            raise ConfigError(f"no checkpoint in {ckpt_dir}; train first (llm train), or wait for the first "
                              "checkpoint")
        ckpt = Checkpointer(ckpt_dir, keep=self.config.train.keep_checkpoints, async_save=False, read_only=True)
        try:
            candidates = _candidates(ckpt, checkpoint)
            state, step = _restore_first_good(ckpt, candidates, self._target(), strict=checkpoint != "latest",
                                              log=log)
        finally:
            ckpt.close()
        return LoadedRun(self.run, self.model, state.params, self.tokenizer, step)

    def _target(self):
        tx, _ = make_optimizer(self.config.optim, self.config.train.steps, self.config.finetune)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                                      abstract_train_state(self.model, tx, self.run.seq_len))


def open_run(workdir: str | Path) -> RunFiles:
    """The run in `workdir`: its config, its tokenizer (checked against the one the manifest records) and its
    model."""
    workdir = Path(workdir)
    if not workdir.exists():
        raise ConfigError(f"workdir {workdir} does not exist; pass the --workdir of a `llm train` run")
    if not workdir.is_dir():
        raise ConfigError(f"workdir {workdir} is a file, not a directory; pass the --workdir of a `llm train` run")
    config = load_config(workdir)
    tok_path = workdir / TOKENIZER_FILE
    if not tok_path.exists():
        raise ConfigError(f"{tok_path} not found; the run in {workdir} never got past its start")
    tokenizer = load_tokenizer(tok_path)  # DataError (one line, naming the file) when damaged
    check_tokenizer(workdir, tokenizer)
    run = resolve(config)
    try:
        run = run.with_vocab(tokenizer.vocab_size)
    except ConfigError:  # the saved config is the record; the tokenizer file beside it is what changed
        raise DataError(f"{tok_path} has {tokenizer.vocab_size} tokens but the run's model only "
                        f"{config.model.vocab_size} (model.vocab_size); restore the run's own tokenizer.json") from None
    return RunFiles(workdir, run, tokenizer, Transformer(run.model))


def load_run(workdir: str | Path, checkpoint: str = "latest", *, log: Callable[[str], None] = _warn) -> LoadedRun:
    """The model, params and tokenizer of a run; checkpoint is 'latest', 'best' or a step number."""
    return open_run(workdir).restore(checkpoint, log=log)


def check_tokenizer(workdir: Path, tokenizer: Tokenizer) -> None:
    """The tokenizer must be the one the run was trained with, as manifest.json records it: the same kind and
    size, and for byte and char tokenizers (whose JSON is this package's own) the same fingerprint. BPE JSON comes
    from Hugging Face `tokenizers`, whose serialisation may change between versions, so only kind and size count.
    """
    try:
        saved = read_manifest(workdir)["tokenizer"]
        kind, size, fingerprint = saved["kind"], saved["vocab_size"], saved["fingerprint"]
    except (KeyError, TypeError):
        return  # no (readable) manifest: nothing to compare with
    path, fix = workdir / TOKENIZER_FILE, "restore the run's own tokenizer.json"
    if (kind, size) != (tokenizer.kind, tokenizer.vocab_size):
        raise DataError(f"{path} ({tokenizer.kind}, {tokenizer.vocab_size} tokens) is not the tokenizer this run was "
                        f"trained with ({kind}, {size} tokens, by its {MANIFEST_FILE}); {fix}")
    if tokenizer.kind != "bpe" and fingerprint != tokenizer.fingerprint():
        raise DataError(f"{path} is not the tokenizer this run was trained with (same kind and size, but another "
                        f"vocabulary than the fingerprint in {MANIFEST_FILE}); {fix}")


def _candidates(ckpt: Checkpointer, checkpoint: str) -> list[int]:
    """The steps to try, newest first: for 'latest' every step, else the one asked for."""
    steps = ckpt.all_steps()
    if not steps:
        raise ConfigError(f"no checkpoint in {ckpt.directory}; train first (llm train), or wait for the first "
                          "checkpoint")
    if checkpoint == "latest":
        return list(reversed(steps))
    if checkpoint == "best":
        return [ckpt.best_step() or max(steps)]
    if checkpoint.isdigit() and int(checkpoint) in steps:
        return [int(checkpoint)]
    raise ConfigError(f"checkpoint {checkpoint!r} not found; choose latest, best or one of the steps {steps}")


def _restore_first_good(ckpt: Checkpointer, candidates: list[int], target, *, strict: bool, log):
    """(state, step) of the first candidate that passes its checks; a damaged one is an error when `strict`."""
    for step in candidates:
        try:
            state, _ = ckpt.restore(step, target)
            return state, step
        except DamagedCheckpoint as e:
            if strict:
                raise CheckpointError(f"checkpoint {e}; choose another with --checkpoint (steps: "
                                      f"{ckpt.all_steps()})") from None
            log(f"WARNING: checkpoint {e}; using the one before it")
    raise CheckpointError(f"every checkpoint in {ckpt.directory} is damaged (checksums differ or files unreadable); "
                          "`llm train` in this workdir moves them aside and starts again")
