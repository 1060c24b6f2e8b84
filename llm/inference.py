"""Loading a trained run for inference, and the sampling job behind `llm sample`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from llm import run as run_lib
from llm.checkpoint import Checkpointer
from llm.config import model_config
from llm.model import Transformer
from llm.model.config import ConfigError
from llm.optim import make_optimizer
from llm.sampling import PromptError, generate
from llm.tokenizers import Tokenizer, load_tokenizer
from llm.train_state import abstract_train_state


@dataclasses.dataclass
class LoadedRun:
    config: ConfigDict
    model: Transformer
    params: Any
    tokenizer: Tokenizer
    step: int


def load_run(workdir: str | Path, checkpoint: str = "latest") -> LoadedRun:
    """The model, params and tokenizer of a run; checkpoint is 'latest', 'best' or a step number."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise ConfigError(f"workdir {workdir} does not exist; pass the --workdir of a `llm train` run")
    config = run_lib.load_config(workdir)
    tok_path = workdir / run_lib.TOKENIZER_FILE
    if not tok_path.exists():
        raise ConfigError(f"{tok_path} not found; the run in {workdir} never got past its start")
    tokenizer = load_tokenizer(tok_path)
    model = Transformer(model_config(config, vocab_size=tokenizer.vocab_size))
    ckpt = Checkpointer(workdir / run_lib.CHECKPOINT_DIR, keep=config.train.keep_checkpoints, async_save=False)
    steps = ckpt.all_steps()
    if not steps:
        raise ConfigError(f"no checkpoint in {workdir / run_lib.CHECKPOINT_DIR}; train first (llm train)")
    if checkpoint == "latest":
        step = max(steps)
    elif checkpoint == "best":
        step = ckpt.best_step() or max(steps)
    elif checkpoint.isdigit() and int(checkpoint) in steps:
        step = int(checkpoint)
    else:
        raise ConfigError(f"checkpoint {checkpoint!r} not found; choose latest, best or one of the steps {steps}")
    tx, _ = make_optimizer(config.optim, config.train.steps)
    seq_len = config.train.seq_len or model.cfg.max_len
    # Laid out on one device, whatever mesh the run was trained on (Orbax reshards as it reads).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                                    abstract_train_state(model, tx, seq_len))
    state, _ = ckpt.restore(step, target)
    ckpt.close()
    return LoadedRun(config, model, state.params, tokenizer, step)


def sample(run: LoadedRun, prompts: list[str], **kwargs) -> list[str]:
    """Continuations of each prompt from a loaded run (see `sample_texts`)."""
    return sample_texts(run.model, run.params, run.tokenizer, prompts, **kwargs)


def sample_texts(model: Transformer, params, tokenizer: Tokenizer, prompts: list[str], *, max_new_tokens: int,
                 temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 0) -> list[str]:
    """Continuations (prompt included) of each prompt, sampled as one batch with the KV cache."""
    encoded = []
    for p in prompts:
        try:
            encoded.append(tokenizer.encode(p))
        except ValueError as e:
            raise PromptError(f"prompt {p[:40]!r}: {e}") from None
    outs = generate(model, params, encoded, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_k=top_k, top_p=top_p, seed=seed, eos_id=tokenizer.eos_id)
    return [p + tokenizer.decode(o) for p, o in zip(prompts, outs)]
