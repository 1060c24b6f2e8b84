"""Fine-tuning: starting a run from another model's weights.

A run whose config sets `finetune.init_from` starts (at step 0, with a fresh optimizer state) from
  - another run of this project: `finetune.init_from = "runs/base"` (its `finetune.init_checkpoint`: latest,
    best or a step), whatever mesh it was trained on, or
  - a Hugging Face checkpoint directory: `finetune.init_from = "hf:path/to/dir"` (GPT-2 or Llama family;
    see llm/hf/),
and takes that model's architecture and tokenizer: the model options whose `finetune` column is SOURCE
(llm/config/options.py), merged when the run is resolved (llm/config/resolved.py); the experiment config may still
set the FREE ones (dropout, attention implementation,
remat, LoRA, the context: a longer one gets fresh learned-position rows, ...). The tokenizer may grow (new characters
of the fine-tuning text, chat special tokens): the embedding rows of new tokens keep their fresh initialisation.
Which parameters train, and at what learning rate, is `finetune.freeze / train_only / lr_groups`
(llm/state/optimizers.py). LoRA adapters fold back into the weights with llm.model.lora.merge_lora.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.errors import ConfigError
from llm.model import ModelConfig
from llm.runs import load_run
from llm.state import param_groups, param_path
from llm.tokenizers import Tokenizer


@dataclasses.dataclass
class InitSource:
    """The weights (on the host) a fine-tuning run starts from, with their model config and tokenizer."""

    name: str
    model: ModelConfig
    params: Any
    tokenizer: Tokenizer | None


def load_source(spec: str, checkpoint: str = "latest") -> InitSource:
    """The model behind `finetune.init_from` (see the module docstring)."""
    if spec.startswith("hf:"):
        from llm.hf.convert import import_hf  # a job of its own; imported only for hf: sources

        path = spec[3:]
        if not Path(path).is_dir():
            raise ConfigError(f"finetune.init_from={spec!r}: {path} is not a directory (a Hugging Face model "
                              "directory with config.json and *.safetensors)")
        try:
            cfg, params, tokenizer = import_hf(path)
        except (ValueError, OSError, KeyError) as e:
            raise ConfigError(f"finetune.init_from={spec!r}: cannot import it ({e})") from None
        return InitSource(spec, cfg, params, tokenizer)
    if not Path(spec).is_dir():
        raise ConfigError(f"finetune.init_from={spec!r} is not a run's workdir (or 'hf:DIR' for a Hugging Face "
                          "model)")
    run = load_run(spec, checkpoint)
    params = jax.tree_util.tree_map(np.asarray, run.params)
    return InitSource(f"{spec} (step {run.step})", run.model.cfg, params, run.tokenizer)


def overlay(fresh: Any, source: Any, source_name: str) -> Any:
    """`fresh` params with every array taken from `source` where the path exists there: equal shapes are copied,
    a vocabulary grown at the end (embedding rows, output columns) keeps the new rows of `fresh`; LoRA adapters
    absent from the source stay fresh. Anything else missing or misshapen is a ConfigError."""
    src = {param_path(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(source)}
    used = set()

    def take(path, x):
        name = param_path(path)
        if name not in src:
            if "/lora_" in f"/{name}":
                return x
            raise ConfigError(f"finetune.init_from {source_name} has no parameter {name}; it is another "
                              "architecture")
        used.add(name)
        s = src[name]
        if s.shape == x.shape:
            return jnp.asarray(s, x.dtype)
        if name.startswith("positions/") and s.shape[1:] == x.shape[1:] and s.shape[0] > x.shape[0]:
            return jnp.asarray(s[: x.shape[0]], x.dtype)  # a shorter context: the first positions' rows
        grown = [i for i, (a, b) in enumerate(zip(s.shape, x.shape, strict=True)) if a != b]
        if len(grown) == 1 and s.shape[grown[0]] < x.shape[grown[0]]:  # a vocabulary extended at its end
            index = tuple(slice(0, n) for n in s.shape)
            return jnp.asarray(x).at[index].set(jnp.asarray(s, x.dtype))
        raise ConfigError(f"finetune.init_from {source_name}: {name} has shape {s.shape} there but {x.shape} here")

    out = jax.tree_util.tree_map_with_path(take, fresh)
    unused = sorted(set(src) - used)
    if unused:
        raise ConfigError(f"finetune.init_from {source_name} has parameters this model lacks ({', '.join(unused[:3])}"
                          "); merge its LoRA adapters first (llm.model.lora.merge_lora) or match the architecture")
    return out


def trained_fraction(params, config) -> float:
    """The fraction of the parameters that finetune.freeze / train_only leave trainable."""
    f = config.finetune
    labels, _ = param_groups(f.freeze, f.train_only, f.lr_groups)
    sizes = [(x.size, lab != "frozen") for x, lab in zip(jax.tree_util.tree_leaves(params),
                                                         jax.tree_util.tree_leaves(labels(params)), strict=True)]
    return sum(n for n, trained in sizes if trained) / sum(n for n, _ in sizes)
