"""Loading a trained run for inference, and the sampling job behind `llm sample`."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from llm import run as run_lib
from llm.checkpoint import Checkpointer, CheckpointError, DamagedCheckpoint
from llm.config import model_config
from llm.data import DataError
from llm.model import Transformer
from llm.model.config import ConfigError
from llm.optim import make_optimizer
from llm.sampling import PromptError, generate
from llm.tokenizers import Tokenizer, load_tokenizer
from llm.train_state import abstract_train_state


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


@dataclasses.dataclass
class LoadedRun:
    config: ConfigDict
    model: Transformer
    params: Any
    tokenizer: Tokenizer
    step: int


def load_run(workdir: str | Path, checkpoint: str = "latest", *, prompts: list[str] | None = None,
             log: Callable[[str], None] = _warn) -> LoadedRun:
    """The model, params and tokenizer of a run; checkpoint is 'latest', 'best' or a step number.

    prompts: when given, checked (see `encode_prompts`) before the checkpoint is read, so a bad prompt fails
    fast. Nothing in the workdir is written. User mistakes (no such run, damaged files, unknown checkpoint,
    bad prompt) raise ConfigError, DataError, PromptError or CheckpointError with a one-line message.
    Checkpoints are verified against their checksums: a damaged latest one is skipped with a warning (`log`) in
    favour of the one before; a damaged one asked for by step is an error.
    """
    workdir = Path(workdir)
    if not workdir.exists():
        raise ConfigError(f"workdir {workdir} does not exist; pass the --workdir of a `llm train` run")
    if not workdir.is_dir():
        raise ConfigError(f"workdir {workdir} is a file, not a directory; pass the --workdir of a `llm train` run")
    config = _load_config(workdir)
    tok_path = workdir / run_lib.TOKENIZER_FILE
    if not tok_path.exists():
        raise ConfigError(f"{tok_path} not found; the run in {workdir} never got past its start")
    tokenizer = load_tokenizer(tok_path)  # DataError (one line, naming the file) when damaged
    _check_tokenizer(workdir, tokenizer)
    model = Transformer(model_config(config, vocab_size=tokenizer.vocab_size))
    if model.cfg.vocab_size < tokenizer.vocab_size:
        raise DataError(f"{tok_path} has {tokenizer.vocab_size} tokens but the run's model only "
                        f"{model.cfg.vocab_size} (model.vocab_size); restore the run's own tokenizer.json")
    if prompts is not None:
        encode_prompts(tokenizer, prompts, model.cfg.max_len)
    ckpt_dir = workdir / run_lib.CHECKPOINT_DIR
    if not ckpt_dir.is_dir():  # checked here: the Checkpointer would create the directory
        raise ConfigError(f"no checkpoint in {ckpt_dir}; train first (llm train), or wait for the first checkpoint")
    ckpt = Checkpointer(ckpt_dir, keep=config.train.keep_checkpoints, async_save=False, read_only=True)
    steps = ckpt.all_steps()
    if not steps:
        ckpt.close()
        raise ConfigError(f"no checkpoint in {ckpt_dir}; train first (llm train), or wait for the first checkpoint")
    if checkpoint == "latest":
        step = max(steps)
    elif checkpoint == "best":
        step = ckpt.best_step() or max(steps)
    elif checkpoint.isdigit() and int(checkpoint) in steps:
        step = int(checkpoint)
    else:
        ckpt.close()
        raise ConfigError(f"checkpoint {checkpoint!r} not found; choose latest, best or one of the steps {steps}")
    tx, _ = make_optimizer(config.optim, config.train.steps, config.finetune)
    seq_len = config.train.seq_len or model.cfg.max_len
    # Laid out on one device, whatever mesh the run was trained on (Orbax reshards as it reads).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                                    abstract_train_state(model, tx, seq_len))
    try:
        for candidate in [s for s in reversed(steps) if s <= step] if checkpoint == "latest" else [step]:
            try:
                state, _ = ckpt.restore(candidate, target)
                step = candidate
                break
            except DamagedCheckpoint as e:
                if checkpoint != "latest":
                    raise CheckpointError(f"checkpoint {e}; choose another with --checkpoint (steps: {steps})"
                                          ) from None
                log(f"WARNING: checkpoint {e}; using the one before it")
        else:
            raise CheckpointError(f"every checkpoint in {ckpt_dir} is damaged (checksums differ or files unreadable); "
                                  "`llm train` in this workdir moves them aside and starts again")
    finally:
        ckpt.close()
    return LoadedRun(config, model, state.params, tokenizer, step)


def _load_config(workdir: Path) -> ConfigDict:
    """The run's config.json; a damaged one is a ConfigError naming the file."""
    path = workdir / run_lib.CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{path} not found: is {workdir} the workdir of a `llm train` run?")
    try:
        return run_lib.load_config(workdir)
    except ConfigError as e:
        message = str(e)
        if str(path) in message:
            raise
        raise ConfigError(f"{path}: {message}; the run's config file is damaged or was edited, restore it") from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # valid JSON of the wrong shape or types
        raise ConfigError(f"{path} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:200]}); restore the "
                          "run's config file") from None


def _check_tokenizer(workdir: Path, tokenizer: Tokenizer) -> None:
    """The tokenizer must be the one the run was trained with, as manifest.json records it: the same kind and
    size, and for byte and char tokenizers (whose JSON is this package's own) the same fingerprint. BPE JSON comes
    from Hugging Face `tokenizers`, whose serialisation may change between versions, so only kind and size count.
    """
    try:
        saved = json.loads((workdir / run_lib.MANIFEST_FILE).read_text())["tokenizer"]
        kind, size, fingerprint = saved["kind"], saved["vocab_size"], saved["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no (readable) manifest: nothing to compare with
    path, fix = workdir / run_lib.TOKENIZER_FILE, "restore the run's own tokenizer.json"
    if (kind, size) != (tokenizer.kind, tokenizer.vocab_size):
        raise DataError(f"{path} ({tokenizer.kind}, {tokenizer.vocab_size} tokens) is not the tokenizer this run was "
                        f"trained with ({kind}, {size} tokens, by its {run_lib.MANIFEST_FILE}); {fix}")
    if tokenizer.kind != "bpe" and fingerprint != tokenizer.fingerprint():
        raise DataError(f"{path} is not the tokenizer this run was trained with (same kind and size, but another "
                        f"vocabulary than the fingerprint in {run_lib.MANIFEST_FILE}); {fix}")


def encode_prompts(tokenizer: Tokenizer, prompts: list[str], max_len: int) -> list[np.ndarray]:
    """Each prompt's token ids; PromptError (one line, naming the prompt) for an empty prompt, text that is not
    valid Unicode, characters the tokenizer lacks, or a prompt that leaves no room in the context."""
    if not prompts:
        raise PromptError("no prompt given; pass at least one --prompt")
    encoded = []
    for i, p in enumerate(prompts, 1):
        label = f"prompt {i}" if len(prompts) > 1 else "the prompt"
        if not p:
            raise PromptError(f"{label} is empty; the model needs at least one token to continue from (e.g. a "
                              "newline, the default prompt)")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise PromptError(f"{label} {p[:40]!r} is not valid text (it holds bytes that are not UTF-8); pass it "
                              "as UTF-8") from None
        try:
            ids = tokenizer.encode(p)
        except ValueError as e:
            raise PromptError(f"{label} {p[:40]!r}: {e}; or leave them out of the prompt") from None
        if len(ids) == 0:
            raise PromptError(f"{label} {p[:40]!r} encodes to no tokens; give it some text")
        if len(ids) >= max_len:
            raise PromptError(f"{label} has {len(ids)} tokens and does not fit the model's context of {max_len} "
                              f"(at most {max_len - 1} tokens, leaving room to generate); shorten the prompt")
        encoded.append(ids)
    return encoded


def sample(run: LoadedRun, prompts: list[str], **kwargs) -> list[str]:
    """Continuations of each prompt from a loaded run (see `sample_texts`)."""
    return sample_texts(run.model, run.params, run.tokenizer, prompts, **kwargs)


def sample_texts(model: Transformer, params, tokenizer: Tokenizer, prompts: list[str], *, max_new_tokens: int,
                 temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 0) -> list[str]:
    """Continuations (prompt included) of each prompt, sampled as one batch with the KV cache."""
    encoded = encode_prompts(tokenizer, prompts, model.cfg.max_len)
    outs = generate(model, params, encoded, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_k=top_k, top_p=top_p, seed=seed, eos_id=tokenizer.eos_id)
    return [p + tokenizer.decode(o) for p, o in zip(prompts, outs)]
