"""A run, resolved once from its experiment config: what every job reads instead of the raw ConfigDict.

    run = resolve(config, source=source_model, n_devices=jax.device_count())   # training
    run = resolve(saved_config, vocab_size=tokenizer.vocab_size)             # a trained run (eval, sample, ...)
    run.data.kind, run.seq_len, run.layer_mixers, run.mesh.shape, run.model

Resolving merges a fine-tune's source architecture into the experiment (the model options whose `finetune`
column is SOURCE, llm/config/options.py), resolves the data spec (llm/data/spec.py), the training sequence
length, each layer's mixer and the mesh's axis sizes, and runs every check that needs them, so a run that would
train on reordered tokens or unreadable data is refused before anything is written.

A frozen dataclass rather than a resolved ConfigDict: the derived facts (the data's kind, the layer mixers, the
mesh) have types and exist in one place, and nothing downstream can change them; the merged ConfigDict
(`run.config`, a private copy) is kept as the record of the experiment, which config.json saves and whose plain
sections (optim, train, sample, eval) the jobs read as they are.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

from ml_collections import ConfigDict

from llm.config.options import SOURCE, model_fields
from llm.config.validation import model_config, validate_config
from llm.data.spec import DataSpec, data_spec
from llm.errors import ConfigError
from llm.model import ModelConfig
from llm.model.mixer_table import lacking
from llm.parallel.rules import MESH_AXES, Rules, logical_rules


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """The mesh a training run asks for, its sizes resolved against the devices it runs on."""

    shape: dict[str, int]  # MESH_AXES -> size, a -1 resolved
    rules: Rules  # logical axis name -> mesh axes
    context_strategy: str  # ring | all_gather
    context_balance: bool  # two mirrored chunks per device under context > 1

    @property
    def context(self) -> int:
        return self.shape["context"]


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
    config: ConfigDict  # the experiment with a fine-tune's source merged (config.json); read, never changed
    data: DataSpec
    seq_len: int  # the length of a training row: train.seq_len, or the model's context
    layer_mixers: tuple[str, ...]  # each layer's sequence mixer
    mesh: MeshSpec | None  # None where the run is read back, not trained (its mesh was the training devices')
    vocab_size: int | None = None  # model.vocab_size, else the tokenizer's once known (`with_vocab`)

    @functools.cached_property
    def model(self) -> ModelConfig:
        """The model: its vocabulary is model.vocab_size or the run's tokenizer's."""
        if self.vocab_size is None:
            raise ValueError("the run's vocabulary is not known yet: resolve it with_vocab(tokenizer.vocab_size)")
        return model_config(self.config, vocab_size=self.vocab_size)

    def with_vocab(self, tokenizer_size: int) -> ResolvedRun:
        """This run with its vocabulary: model.vocab_size when set (ConfigError if below the tokenizer's), else
        the tokenizer's."""
        vocab = self.config.model.vocab_size
        if vocab is not None and vocab < tokenizer_size:
            raise ConfigError(f"model.vocab_size={vocab} is smaller than the tokenizer's vocabulary "
                              f"({tokenizer_size}); leave it unset (None) to take the tokenizer's size")
        return dataclasses.replace(self, vocab_size=vocab or tokenizer_size)


def resolve(config: ConfigDict, *, source: ModelConfig | None = None, n_devices: int | None = None,
            vocab_size: int | None = None) -> ResolvedRun:
    """The run `config` describes (checked; ConfigError / DataError, one line, for anything wrong).

    source: the model a fine-tune starts from; its architecture replaces the experiment's SOURCE options.
    n_devices: the devices a training run spreads over (its mesh is resolved and checked); None for a run read
      back from its workdir.
    vocab_size: the tokenizer's vocabulary, where it is known already.
    """
    config = merge_source(config, source) if source is not None else copy.deepcopy(config)
    validate_config(config)
    arch = model_config(config, vocab_size=config.model.vocab_size or 1)  # everything but the vocabulary
    run = ResolvedRun(config, data_spec(config.data), config.train.seq_len or arch.max_len, arch.layer_mixers,
                      None if n_devices is None else mesh_spec(config, n_devices))
    if run.mesh is not None and run.mesh.context > 1:
        check_context_split(run, short_conv=arch.short_conv)
    return run if vocab_size is None else run.with_vocab(vocab_size)


def merge_source(config: ConfigDict, source: ModelConfig) -> ConfigDict:
    """A copy of `config` with a fine-tune source's architecture; with LoRA on and no finetune.train_only, only the
    adapters train."""
    config = copy.deepcopy(config)
    for name in model_fields("finetune", SOURCE):
        config.model[name] = getattr(source, name)
    if config.model.vocab_size is not None and config.model.vocab_size < source.vocab_size:
        raise ConfigError(f"model.vocab_size={config.model.vocab_size} is smaller than that of finetune.init_from "
                          f"({source.vocab_size}); leave it unset (None)")
    if config.model.lora_rank and not config.finetune.train_only:
        config.finetune.train_only = "lora_"
    return config


def mesh_spec(config: ConfigDict, n_devices: int) -> MeshSpec:
    from llm.parallel.mesh import mesh_shape  # imports JAX: only training runs resolve a mesh

    m = config.mesh
    shape = dict(zip(MESH_AXES, mesh_shape({axis: m[axis] for axis in MESH_AXES}, n_devices), strict=True))
    return MeshSpec(shape, logical_rules(m.rules), m.context_strategy, m.context_balance)


def check_context_split(run: ResolvedRun, *, short_conv: bool) -> None:
    """A mesh that splits the sequence: the length rule names the axis, every sequence splits evenly, and the
    balanced layout (which reorders the tokens) meets no layer that mixes tokens in order."""
    size, balance, rules = run.mesh.context, run.mesh.context_balance, run.config.mesh.rules
    if rules.length != "context":
        raise ConfigError(f"mesh.context={size} splits sequences, but mesh.rules.length={rules.length!r}; set "
                          "mesh.rules.length='context'")
    chunks = size * (2 if balance else 1)
    if run.seq_len % chunks:
        raise ConfigError(f"sequences of {run.seq_len} tokens do not split into {chunks} equal chunks (mesh.context="
                          f"{size}{', 2 per device with mesh.context_balance' if balance else ''}); make the sequence "
                          "length (train.seq_len or model.max_len) a multiple of it")
    mixers = lacking("context_balance", run.layer_mixers)
    in_order = ["model.short_conv"] * bool(short_conv) + [f"the {x} mixer" for x in mixers]
    if balance and in_order:
        raise ConfigError(f"mesh.context_balance reorders the tokens, which {in_order[0]} cannot take (it reads them "
                          "in order); set mesh.context_balance=False")
