"""A Hugging Face checkpoint as a project run (workdir), so `llm sample --workdir` uses it, and back."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from llm.config import get_base_config, resolve
from llm.config.options import MODEL_FIELDS
from llm.hf.configs import HFConversionError
from llm.hf.convert import export_hf, import_hf, read_hf_config
from llm.model import Transformer
from llm.runs import CHECKPOINT_DIR, TOKENIZER_FILE, Checkpointer, load_run, read_manifest, save_config, write_manifest
from llm.state import TrainState, abstract_train_state, make_optimizer
from llm.tokenizers import Tokenizer, load_tokenizer


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def import_to_workdir(hf_dir: str | os.PathLike, workdir: str | os.PathLike, *,
                      tokenizer: str | os.PathLike | Tokenizer | None = None, dtype: str = "float32",
                      **overrides: Any) -> Path:
    """Make a new workdir holding the HF model `hf_dir` as a run at step 0.

    Writes config.json (the base experiment config with the imported model section; data.tokenizer set to the
    tokenizer's kind), tokenizer.json (the folder's, or `tokenizer`: a path or a Tokenizer), manifest.json (which
    records the source folder and its HF config) and checkpoints/0 (the params with a fresh optimizer state of the
    config's optimizer, as `llm train` would save them: it takes about 3x the weights' size on disk for AdamW).
    `dtype` and `overrides` as in `import_hf`. The workdir must be new or empty. Returns its path.
    """
    workdir = Path(workdir)
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise HFConversionError(f"workdir {workdir} exists and is not an empty directory; choose a new one")
    hf = read_hf_config(hf_dir)
    cfg, params, hf_tokenizer = import_hf(hf_dir, dtype=dtype, **overrides)
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str | os.PathLike) else tokenizer or hf_tokenizer
    if tok is None:
        raise HFConversionError(f"{hf_dir} has no tokenizer.json, which sampling needs; give the model's "
                                "tokenizer.json (llm convert import --tokenizer PATH, or tokenizer= in Python)")
    if tok.vocab_size > cfg.vocab_size:
        raise HFConversionError(f"the tokenizer has {tok.vocab_size} tokens but the model only {cfg.vocab_size}; "
                                "is it the model's own tokenizer?")

    config = get_base_config()
    for name in MODEL_FIELDS:
        config.model[name] = getattr(cfg, name)
    config.data.tokenizer = tok.kind
    if tok.kind == "bpe":
        config.data.vocab_size = tok.vocab_size
    run = resolve(config, vocab_size=tok.vocab_size)
    config = run.config

    model = Transformer(cfg)
    tx, _ = make_optimizer(config.optim, config.train.steps)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       lr_scale=jnp.ones((), jnp.float32))
    target = abstract_train_state(model, tx, run.seq_len)
    if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(target):  # what load_run restores into
        raise HFConversionError("internal error: the imported train state does not have the layout of a run's")

    workdir.mkdir(parents=True, exist_ok=True)
    tok.save(workdir / TOKENIZER_FILE)
    save_config(config, workdir)
    write_manifest(workdir, config, tok, source={"hf_dir": str(Path(hf_dir).absolute()), "hf_config": hf})
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, keep=config.train.keep_checkpoints, async_save=False)
    try:
        ckpt.save(0, state, meta={"step": 0, "val_loss": None, "best_val_loss": None, "wall_time": time.time(),
                                  "imported_from": str(hf_dir)})
    finally:
        ckpt.close()
    return workdir


def export_workdir(workdir: str | os.PathLike, out_dir: str | os.PathLike, arch: str = "gpt2", *,
                   checkpoint: str = "latest", dtype: str | None = None, overwrite: bool = False,
                   log: Callable[[str], None] = _warn) -> Path:
    """Export a run's checkpoint ('latest', 'best' or a step) as a Hugging Face `arch` folder (see `export_hf`).

    A BPE tokenizer goes along as tokenizer.json; byte and char tokenizers have no HF form and are left out (with
    a note to `log`). A run imported with `import_to_workdir` gets its source's bos_token_id back.
    """
    run = load_run(workdir, checkpoint, log=log)
    tokenizer = run.tokenizer if run.tokenizer.kind == "bpe" else None
    if tokenizer is None:
        log(f"note: the run's {run.tokenizer.kind} tokenizer has no Hugging Face form; {out_dir} gets no "
            "tokenizer.json")
    bos_id = None
    try:
        source = read_manifest(workdir)["source"]["hf_config"]
        bos_id = source["bos_token_id"] if isinstance(source.get("bos_token_id"), int) else None
    except (KeyError, TypeError, AttributeError):
        pass
    return export_hf(run.model.cfg, run.params, out_dir, tokenizer, arch, dtype=dtype, bos_id=bos_id,
                     overwrite=overwrite)
