"""Every option of an experiment config, each defined once: its type, default, check, whether a resumed run may
change it, and (model options) whether a fine-tune may set it and how Hugging Face conversion treats it.

    OPTIONS["train.steps"].default          # 2000
    OPTIONS["model.dropout"].finetune       # FREE: a fine-tune may set its own dropout

`get_base_config()` is built from this table; `validate_config` checks every value with its option's `check`;
resuming compares the FIXED options only; fine-tuning takes the SOURCE model options from the model it starts
from; HF import and export read the `hf` column. The model options' types and checks are `ModelConfig`'s
(llm/model/config.py), which validates a model on its own; this table gives their columns and the defaults of
the default experiment. tests/config/test_config.py checks that every ModelConfig field has a row, so a new option
cannot be half-added.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from llm.config.sampling import SamplingParams
from llm.data.corpora.corpus import DEFAULT_CORPUS
from llm.data.mixture import parse_mixture
from llm.errors import ConfigError
from llm.model.config import ModelConfig
from llm.parallel.context import CONTEXT_STRATEGIES
from llm.parallel.rules import MESH_AXES, logical_rules
from llm.tokenizers import KINDS as TOKENIZERS

# resume: may a resumed run have another value?
FIXED = "fixed"  # part of what a step computes: a resumed run must keep the saved value
FREE = "free"  # what is shown, measured or kept, how faults are handled, where the work runs
# finetune (model options): where a fine-tune's value comes from
SOURCE = "source"  # the model it starts from (finetune.init_from); FREE: the fine-tune's own config
# hf (model options): how Hugging Face conversion treats the option
WEIGHTS = "weights"  # fixed by the checkpoint: read from and written to the HF config.json
CONTEXT = "context"  # written to config.json; an import may shorten it (a smaller KV cache)
RUNTIME = "runtime"  # how the math runs, not what it is: set freely on import, not exported
ADAPTERS = "adapters"  # LoRA: folded into the kernels on export
UNSUPPORTED = "unsupported"  # no HF form: export needs the default value

OPTIMIZERS = ("adamw", "sgd", "lion", "adafactor")  # llm/state/optimizers.py
SCHEDULES = ("cosine", "linear", "constant")
Check = Callable[[str, Any], "str | None"]  # (key, value) -> the problem as one line, or None


@dataclasses.dataclass(frozen=True)
class Option:
    key: str
    type: type  # int, float, str or bool (ints pass where a float is wanted)
    default: Any
    doc: str = ""
    check: Check | None = None  # None: the type is all there is to check
    nullable: bool = False
    resume: str = FIXED
    finetune: str | None = None  # model options: SOURCE or FREE
    hf: str | None = None  # model options: WEIGHTS, CONTEXT, RUNTIME, ADAPTERS or UNSUPPORTED
    needs: str | None = None  # the option whose truthy value it only matters with (LoRA's settings: lora_rank)


# ---------------------------------------------------------------------------------------------------------
# checks: (key, value) -> the problem, or None


def mixture(key: str, value) -> str | None:
    try:
        parse_mixture(value) if value else None
    except ValueError as e:
        return f"{key}: {e}"
    return None


def positive(key: str, value) -> str | None:
    return None if value is None or value > 0 else f"{key} must be positive, got {value}"


def at_least(low: int, note: str = "") -> Check:
    return lambda key, value: None if value >= low else f"{key} must be >= {low}{note}, got {value}"


def choice(*options: str) -> Check:
    return lambda key, value: None if value in options else f"{key}={value!r} is not one of: {', '.join(options)}"


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False, note: str = "") -> Check:
    shown = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(key, value):
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        return None if ok else f"{key} must be in {shown}{note}, got {value}"

    return check


def sampling(field: str) -> Check:
    """SamplingParams' rule for `field` (llm/ops/sampling.py): the same as `llm sample`'s and `llm chat`'s flags."""

    def check(key, value):
        problem = SamplingParams(**{field: value}).problem(field)
        return None if problem is None else f"{key} {problem}"

    return check


def regexes(key: str, value: str) -> str | None:
    for pattern in filter(None, (p.strip() for p in value.split(","))):
        try:
            re.compile(pattern)
        except re.error as e:
            return f"{key}: {pattern!r} is not a regular expression ({e})"
    return None


def lr_groups(key: str, value: str) -> str | None:
    for item in filter(None, (x.strip() for x in value.split(","))):
        pattern, eq, mult = item.rpartition("=")
        try:
            re.compile(pattern)
            ok = bool(eq and pattern) and float(mult) >= 0
        except (re.error, ValueError):
            ok = False
        if not ok:
            return f"{key}: {item!r} is not 'regex=multiplier' (a number >= 0), e.g. 'embed=0.1,attention=0.5'"
    return None


def checkpoint_name(key: str, value: str) -> str | None:
    ok = value in ("latest", "best") or value.isdigit()
    return None if ok else f"{key}={value!r}: use latest, best or a step number"



def mesh_size(key: str, value: int) -> str | None:
    ok = value == -1 or value > 0
    return None if ok else f"{key} must be a positive device count or -1 (fill), got {value}"


def mesh_axes(key: str, value: str) -> str | None:
    try:
        logical_rules({key.rpartition(".")[2]: value})  # the sharding module owns the rule syntax
    except ConfigError as e:
        return str(e)
    return None


def device_ids(key: str, value: str | None) -> str | None:
    ok = value is None or all(x.strip().isdigit() for x in value.split(","))
    return None if ok else f"{key}={value!r} must be comma-separated device numbers, e.g. '0,1'"


def seed(key: str, value: int) -> str | None:
    return None if 0 <= value < 2**63 else f"{key} must be in [0, 2**63), got {value}"


# ---------------------------------------------------------------------------------------------------------
# the model section: ModelConfig's fields, their columns, and the default experiment's own defaults

# field: (finetune, hf)
_MODEL_COLUMNS: dict[str, tuple[str, str]] = {
    "vocab_size": (FREE, WEIGHTS),  # a fine-tune's tokenizer may grow; new embedding rows start fresh
    "max_len": (FREE, CONTEXT),  # a longer context gets fresh learned-position rows
    "d_model": (SOURCE, WEIGHTS),
    "n_layers": (SOURCE, WEIGHTS),
    "n_heads": (SOURCE, WEIGHTS),
    "n_kv_heads": (SOURCE, WEIGHTS),
    "head_dim": (SOURCE, WEIGHTS),
    "d_ff": (SOURCE, WEIGHTS),
    "ff_multiple_of": (SOURCE, WEIGHTS),
    "ffn": (SOURCE, WEIGHTS),
    "activation": (SOURCE, WEIGHTS),
    "norm": (SOURCE, WEIGHTS),
    "norm_eps": (SOURCE, WEIGHTS),
    "norm_position": (SOURCE, WEIGHTS),
    "position": (SOURCE, WEIGHTS),
    "rope_base": (SOURCE, WEIGHTS),
    **{name: (SOURCE, WEIGHTS) for name in (
        "rope_scaling", "rope_factor", "rope_original_max_len", "rope_low_freq_factor", "rope_high_freq_factor",
        "rope_beta_fast", "rope_beta_slow", "rope_truncate", "rope_attention_factor", "rope_short_factor",
        "rope_long_factor")},
    "rotary_fraction": (SOURCE, WEIGHTS),  # Phi-3's partial_rotary_factor; HF's Llama, Mistral, Qwen need 1.0
    "attention_impl": (FREE, RUNTIME),
    "window": (SOURCE, WEIGHTS),
    "qk_norm": (SOURCE, WEIGHTS),
    "short_conv": (SOURCE, UNSUPPORTED),
    "attn_softcap": (SOURCE, UNSUPPORTED),
    "mixer": (SOURCE, UNSUPPORTED),  # Hugging Face's GPT-2 / Llama have softmax attention only
    "mixer_pattern": (SOURCE, UNSUPPORTED),
    "feature_map": (SOURCE, UNSUPPORTED),
    "feature_dim": (SOURCE, UNSUPPORTED),
    "mixer_chunk": (FREE, RUNTIME),
    "mixer_impl": (FREE, RUNTIME),
    "dropout": (FREE, RUNTIME),
    "dropout_mask": (FREE, RUNTIME),
    "use_bias": (SOURCE, WEIGHTS),
    "tie_embeddings": (SOURCE, WEIGHTS),
    "dtype": (FREE, RUNTIME),
    "param_dtype": (FREE, RUNTIME),
    "matmul_dtype": (FREE, RUNTIME),
    "init_std": (FREE, WEIGHTS),  # initialises only what a fine-tune adds (new rows, adapters)
    "scan_layers": (FREE, RUNTIME),
    "remat": (FREE, RUNTIME),
    "lora_rank": (FREE, ADAPTERS),
    "lora_alpha": (FREE, ADAPTERS),
    "lora_dropout": (FREE, ADAPTERS),
    "lora_targets": (FREE, ADAPTERS),
}
# Model options that do nothing unless another model option is set (so resuming ignores them while it is unset).
_MODEL_NEEDS = {"lora_alpha": "lora_rank", "lora_dropout": "lora_rank", "lora_targets": "lora_rank"}
# The default experiment's model where it differs from ModelConfig's defaults (None: the tokenizer's size).
_MODEL_DEFAULTS = {"vocab_size": None, "max_len": 64}


def _model_options() -> list[Option]:
    hints = typing.get_type_hints(ModelConfig)
    out = []
    for field in dataclasses.fields(ModelConfig):
        hint = hints[field.name]
        nullable = isinstance(hint, types.UnionType) or field.name in _MODEL_DEFAULTS
        base = next(t for t in typing.get_args(hint) if t is not type(None)) if isinstance(
            hint, types.UnionType) else hint
        finetune, hf = _MODEL_COLUMNS.get(field.name, (None, None))
        out.append(Option(f"model.{field.name}", base, _MODEL_DEFAULTS.get(field.name, field.default),
                          "see ModelConfig", nullable=nullable, finetune=finetune, hf=hf,
                          needs=f"model.{_MODEL_NEEDS[field.name]}" if field.name in _MODEL_NEEDS else None))
    return out


# ---------------------------------------------------------------------------------------------------------
# the table

_positive_train = ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "log_every", "checkpoint_every",
                   "max_bad_steps", "spike_window")

_OPTIONS: list[Option] = [
    Option("seed", int, 0, "seeds the parameters, the batches and dropout", check=seed),
    *_model_options(),
    # ---- data: a corpus, or supervised records (data.sft), or a synthetic task (data.synthetic)
    Option("data.corpus", str, DEFAULT_CORPUS, "a name (builtin:python_docs, tinyshakespeare, alice, ...), a text "
           "file, or a directory made by `llm prepare` (which brings its own tokenizer and split)"),
    Option("data.mixture", str, "", "prepared directories with weights, PATH:W,PATH:W (sampled by weight; "
           "replaces data.corpus)", check=mixture),
    Option("data.order", str, "random", "training windows of a corpus: random offsets (nanoGPT), or passes: every "
           "non-overlapping window once per pass, shuffled anew each pass", check=choice("random", "passes")),
    Option("data.pack_documents", bool, False, "prepared data: segment ids and positions restart after each "
           "end-of-text id, so attention stays inside documents"),
    Option("data.data_dir", str, None, "where named corpora are looked up first", nullable=True),
    Option("data.val_fraction", float, 0.1, "the last fraction of the text's characters is the validation split "
           "(of data.sft's records, the held-out ones)",
           check=within(0, 1, low_open=True, high_open=True)),
    Option("data.tokenizer", str, "char", "char, byte or bpe", check=choice(*TOKENIZERS)),
    Option("data.vocab_size", int, 1024, "for the BPE tokenizer", check=positive),
    Option("data.cache_dir", str, None, "texts prepared on first use; default $LLM_CACHE_DIR/prepared or "
           "~/.cache/llm/prepared", nullable=True, resume=FREE),
    Option("data.sft", str, "", "supervised fine-tuning instead of a corpus: a JSONL file of {prompt, completion} "
           "or {messages} records, or task:num2words, task:dates, task:fields"),
    Option("data.sft_pack", bool, True, "several examples per row, kept apart by segment ids"),
    Option("data.sft_train_examples", int, 4000, "for task:...", check=positive),
    Option("data.sft_eval_examples", int, 200, "for task:...", check=positive),
    Option("data.synthetic", str, "", "a synthetic attention task generated on the fly (llm/data/synthetic.py), "
           "e.g. mqar:pairs=16,vocab=128, copy, selective_copy:content=16"),
    # ---- training
    *(Option(f"train.{name}", int, default, check=positive,
             resume=FIXED if name in ("steps", "batch_size", "grad_accum") else FREE)
      for name, default in zip(_positive_train, (2000, 16, 1, 250, 20, 50, 500, 10, 50), strict=True)),
    Option("train.seq_len", int, None, "None: model.max_len", check=positive, nullable=True),
    Option("train.dropout_rng", str, "rbg", "generator of the dropout keys: rbg (XLA's RngBitGenerator) or threefry; "
           "it draws the masks themselves only with model.dropout_mask='bernoulli'", check=choice("rbg", "threefry")),
    Option("train.keep_checkpoints", int, 2, "the latest N, plus the best by validation loss",
           check=at_least(2, " (the previous checkpoint is the fallback when the latest one is damaged)"),
           resume=FREE),
    Option("train.progress", bool, True, "a tqdm progress bar on the terminal", resume=FREE),
    Option("train.spike_factor", float, 0.0, "a loss above this many times the mean of the last spike_window losses "
           "rolls back (0: off)", resume=FREE,
           check=lambda key, v: None if v == 0 or v > 1 else (
               f"{key} must be > 1 (a loss this many times the recent mean is a spike) or 0 (off), got {v}")),
    Option("train.max_rollbacks", int, 3, "rollbacks before the run stops as diverged", check=at_least(0),
           resume=FREE),
    Option("train.rollback_lr_factor", float, 1.0, "multiplies the learning rate at each rollback",
           check=within(0, 1, low_open=True, note=" (1: no learning-rate cut)"), resume=FREE),
    # ---- optimizer (llm/state/optimizers.py)
    Option("optim.name", str, "adamw", check=choice(*OPTIMIZERS)),
    Option("optim.lr", float, 2e-3, check=positive),
    Option("optim.schedule", str, "cosine", check=choice(*SCHEDULES)),
    Option("optim.warmup_steps", int, 100, check=at_least(0)),
    Option("optim.decay_steps", int, None, "None: train.steps", check=positive, nullable=True),
    Option("optim.min_lr_ratio", float, 0.1, "the schedule ends at lr * min_lr_ratio", check=within(0, 1)),
    Option("optim.b1", float, 0.9),
    Option("optim.b2", float, 0.99),
    Option("optim.eps", float, 1e-8, check=positive),
    Option("optim.weight_decay", float, 0.1, check=at_least(0)),
    Option("optim.momentum", float, 0.9, "for sgd"),
    Option("optim.clip_norm", float, 1.0, "global-norm clipping; 0 disables it", check=at_least(0)),
    Option("optim.decay_embeddings", bool, False, "weight decay on embedding tables (never on norms or biases)"),
    # ---- fine-tuning (llm/training/finetune.py)
    Option("finetune.init_from", str, "", "start from another run ('runs/base') or a Hugging Face model ('hf:DIR')"),
    Option("finetune.init_checkpoint", str, "latest", "of an init_from run: latest, best or a step",
           check=checkpoint_name),
    Option("finetune.freeze", str, "", "comma-separated regexes of parameter paths that do not train", check=regexes),
    Option("finetune.train_only", str, "", "comma-separated regexes: only these train", check=regexes),
    Option("finetune.lr_groups", str, "", "learning-rate multipliers, 'embed=0.1,attention=0.5'", check=lr_groups),
    # ---- evaluation runs (`llm eval`, llm/evaluation/): what they measure, not what training computes
    Option("eval.corpus", str, "", "'' = the run's own data, or a corpus spec / task:NAME", resume=FREE),
    Option("eval.split", str, "val", check=choice("val", "train", "all"), resume=FREE),
    Option("eval.max_tokens", int, 0, "0: the whole split", check=at_least(0), resume=FREE),
    Option("eval.metrics", str, "exact_match,chrf,rouge_l", "for supervised tasks, comma-separated (the names in "
           "llm/evaluation/metrics.py, checked when `llm eval` starts)", resume=FREE),
    Option("eval.max_examples", int, 200, check=positive, resume=FREE),
    Option("eval.max_new_tokens", int, 64, check=positive, resume=FREE),
    # ---- devices (llm/parallel/): where the work runs; the global batch and the math are the same on any mesh
    *(Option(f"mesh.{axis}", int, -1 if axis == "data" else 1, "-1 takes the devices the other axes leave",
             check=mesh_size, resume=FREE) for axis in MESH_AXES),
    *(Option(f"mesh.rules.{name}", str, axes, "mesh axes of a logical axis name (comma-separated; '' = replicated)",
             check=mesh_axes, resume=FREE)
      for name, axes in (("batch", "data,fsdp"), ("length", "context"), ("embed", "fsdp"), ("vocab", "tensor"),
                         ("heads", "tensor"), ("kv_heads", "tensor"), ("kv", ""), ("mlp", "tensor"), ("layers", ""))),
    Option("mesh.context_strategy", str, "ring", "how attention sees keys on other devices: ring or all_gather "
           "(llm/parallel/context/attention.py)", check=choice(*CONTEXT_STRATEGIES), resume=FREE),
    Option("mesh.context_balance", bool, True, "under mesh.context > 1, each device holds two mirrored chunks of "
           "a sequence, so causal attention's work is even (needs attention-only models without short_conv)",
           resume=FREE),
    Option("distributed.enabled", bool, False, "JAX's distributed runtime (llm/parallel/distributed.py)", resume=FREE),
    Option("distributed.coordinator_address", str, None, "host:port of process 0", nullable=True, resume=FREE),
    Option("distributed.num_processes", int, None, nullable=True, resume=FREE),
    Option("distributed.process_id", int, None, nullable=True, resume=FREE),
    Option("distributed.local_device_ids", str, None, "e.g. '0,1': the devices this process uses", check=device_ids,
           nullable=True, resume=FREE),
    # ---- samples printed after training (SamplingParams' rules, as `llm sample`)
    Option("sample.prompt", str, "\n", resume=FREE),
    Option("sample.num_samples", int, 2, "0: no samples after training", check=at_least(0, " (0: no samples)"),
           resume=FREE),
    Option("sample.max_new_tokens", int, 300, check=sampling("max_new_tokens"), resume=FREE),
    Option("sample.temperature", float, SamplingParams.temperature, "0 is greedy", check=sampling("temperature"),
           resume=FREE),
    Option("sample.top_k", int, None, "None or 0: off", check=sampling("top_k"), nullable=True, resume=FREE),
    Option("sample.top_p", float, None, "None or 1: off", check=sampling("top_p"), nullable=True, resume=FREE),
    Option("sample.seed", int, 0, check=sampling("seed"), resume=FREE),
]

OPTIONS: dict[str, Option] = {o.key: o for o in _OPTIONS}
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def model_fields(column: str, value: str) -> tuple[str, ...]:
    """The ModelConfig fields whose option has `value` in `column` ('finetune' or 'hf')."""
    return tuple(f for f in MODEL_FIELDS if getattr(OPTIONS[f"model.{f}"], column) == value)
