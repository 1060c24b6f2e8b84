"""Fine-tuning: starting a run from another model's weights, and folding LoRA adapters back into the weights.

A run whose config sets `finetune.init_from` starts (at step 0, with a fresh optimizer state) from
  - another run of this project: `finetune.init_from = "runs/base"` (its `finetune.init_checkpoint`: latest,
    best or a step), whatever mesh it was trained on, or
  - a Hugging Face checkpoint directory: `finetune.init_from = "hf:path/to/dir"` (GPT-2 or Llama family;
    see llm/hf.py),
and takes that model's architecture and tokenizer; the experiment config may still change what does not change
the weights (dropout, attention implementation, remat, LoRA, ...) and the context (a longer one gets fresh
learned-position rows). The tokenizer may grow (new characters
of the fine-tuning text, chat special tokens): the embedding rows of new tokens keep their fresh initialisation.
Which parameters train, and at what learning rate, is `finetune.freeze / train_only / lr_groups` (llm/optim.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.model import ModelConfig
from llm.model.config import ConfigError
from llm.optim import param_path
from llm.tokenizers import Tokenizer

# ModelConfig fields a fine-tuning config may set differently from the model it starts from.
FREE_FIELDS = ("vocab_size", "max_len", "attention_impl", "dropout", "dtype", "param_dtype", "scan_layers", "remat",
               "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "init_std")


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
        from llm.hf import import_hf

        path = spec[3:]
        if not Path(path).is_dir():
            raise ConfigError(f"finetune.init_from={spec!r}: {path} is not a directory (a Hugging Face model "
                              "directory with config.json and *.safetensors)")
        try:
            cfg, params, tokenizer = import_hf(path)
        except (ValueError, OSError, KeyError) as e:
            raise ConfigError(f"finetune.init_from={spec!r}: cannot import it ({e})") from None
        return InitSource(spec, cfg, params, tokenizer)
    from llm.inference import load_run

    if not Path(spec).is_dir():
        raise ConfigError(f"finetune.init_from={spec!r} is not a run's workdir (or 'hf:DIR' for a Hugging Face "
                          "model)")
    run = load_run(spec, checkpoint)
    params = jax.tree_util.tree_map(np.asarray, run.params)
    return InitSource(f"{spec} (step {run.step})", run.model.cfg, params, run.tokenizer)


def resolve_init(config) -> InitSource:
    """Load `finetune.init_from` and write its architecture into `config.model` (all but FREE_FIELDS; the
    vocabulary follows the tokenizer). With LoRA on and no finetune.train_only, only the adapters train."""
    f = config.finetune
    source = load_source(f.init_from, f.init_checkpoint)
    for field in dataclasses.fields(ModelConfig):
        if field.name not in FREE_FIELDS:
            config.model[field.name] = getattr(source.model, field.name)
    if config.model.vocab_size is not None and config.model.vocab_size < source.model.vocab_size:
        raise ConfigError(f"model.vocab_size={config.model.vocab_size} is smaller than that of finetune.init_from "
                          f"({source.model.vocab_size}); leave it unset (None)")
    if config.model.lora_rank and not f.train_only:
        f.train_only = "lora_"
    return source


def merged_model_config(source: ModelConfig, wanted: ModelConfig) -> ModelConfig:
    """The source's architecture with the fine-tuning config's FREE_FIELDS."""
    return dataclasses.replace(source, **{f: getattr(wanted, f) for f in FREE_FIELDS if f != "vocab_size"})


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
                          "); merge its LoRA adapters first (llm.finetune.merge_lora) or match the architecture")
    return out


def merge_lora(params: Any, cfg: ModelConfig) -> tuple[Any, ModelConfig]:
    """Fold every LoRA pair into its kernel (W + alpha/rank * A B) and drop the adapters: the same function as
    the adapted model, as a plain model (for export or serving)."""
    scale = cfg.lora_alpha / max(cfg.lora_rank, 1)

    def fold(tree, scanned):
        if not isinstance(tree, dict):
            return tree
        out = {k: fold(v, scanned or (cfg.scan_layers and k == "layers")) for k, v in tree.items()
               if k not in ("lora_a", "lora_b")}
        if "lora_a" in tree:
            a, b, kernel = tree["lora_a"], tree["lora_b"], tree["kernel"]
            if scanned:  # a leading layer axis on all three
                delta = jax.vmap(lambda a, b: _ab(a, b, a.ndim - 1))(a, b)
            else:
                delta = _ab(a, b, a.ndim - 1)
            out["kernel"] = (kernel + scale * delta).astype(kernel.dtype)
        return out

    return fold(params, False), dataclasses.replace(cfg, lora_rank=0)


def _ab(a, b, n_in):
    in_shape, out_shape = a.shape[:n_in], b.shape[1:]
    prod = jnp.asarray(a, jnp.float32).reshape(-1, a.shape[-1]) @ jnp.asarray(b, jnp.float32).reshape(b.shape[0], -1)
    return prod.reshape(*in_shape, *out_shape)
