"""The base experiment config (every default lives here) and its validation.

An experiment file in experiments/ defines `get_config(arg=None)`, starts from `get_base_config()` and changes
what it needs; command-line overrides (`--config.model.n_layers=8`) are applied on top by ml_collections. The
base config *is* the default experiment: a small character-level model trained on the Python documentation
that ships with every CPython, so `llm train` runs on a fresh machine with no network and no files.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from ml_collections import ConfigDict, config_dict

from llm.model.config import ConfigError, ModelConfig

OPTIMIZERS = ("adamw", "sgd", "lion", "adafactor")
SCHEDULES = ("cosine", "linear", "constant")
TOKENIZERS = ("char", "byte", "bpe")
DROPOUT_RNGS = ("rbg", "threefry")


def _model_section() -> ConfigDict:
    """ModelConfig's defaults as a ConfigDict; optional fields become typed placeholders."""
    hints = typing.get_type_hints(ModelConfig)
    section = {}
    for field in dataclasses.fields(ModelConfig):
        hint = hints[field.name]
        if isinstance(hint, types.UnionType):  # `int | None` and friends
            base = next(t for t in typing.get_args(hint) if t is not type(None))
            section[field.name] = config_dict.placeholder(base) if field.default is None else field.default
        else:
            section[field.name] = field.default
    section["vocab_size"] = config_dict.placeholder(int)  # None: take the tokenizer's vocabulary size
    return ConfigDict(section)


def get_base_config() -> ConfigDict:
    """All keys an experiment may set, with their defaults (the default experiment)."""
    c = ConfigDict()
    c.seed = 0

    c.model = _model_section()
    c.model.max_len = 64
    c.model.d_model = 128
    c.model.n_layers = 4
    c.model.n_heads = 4

    c.data = ConfigDict()
    c.data.corpus = "builtin:python_docs"  # a name (builtin:python_docs, tinyshakespeare, alice, ...) or a path
    c.data.data_dir = config_dict.placeholder(str)  # where named corpora are looked up first
    c.data.val_fraction = 0.1  # the last fraction of the text's characters is the validation split
    c.data.tokenizer = "char"
    c.data.vocab_size = 1024  # for the BPE tokenizer
    c.data.cache_dir = config_dict.placeholder(str)  # tokenised corpora; default ~/.cache/llm/tokens
    # Supervised fine-tuning instead of a corpus: a JSONL file of {"prompt", "completion"} or {"messages"}
    # records (the last val_fraction held out), or a built-in task: task:num2words, task:dates, task:fields.
    c.data.sft = ""
    c.data.sft_pack = True  # several examples per row, kept apart by segment ids
    c.data.sft_train_examples = 4000  # for task:...
    c.data.sft_eval_examples = 200
    # A synthetic attention task generated on the fly instead of a corpus (llm/data/synthetic.py), e.g.
    # "mqar:pairs=16,vocab=128", "copy", "selective_copy:content=16"; its length is train.seq_len / model.max_len.
    c.data.synthetic = ""

    c.train = ConfigDict()
    c.train.steps = 2000
    c.train.batch_size = 16
    c.train.seq_len = config_dict.placeholder(int)  # None: model.max_len
    c.train.grad_accum = 1  # micro-batches per step (batch_size must divide by it)
    # Generator of the dropout keys: 'rbg' (XLA's RngBitGenerator) or 'threefry' (JAX's default, as in runs before
    # this option existed). It draws the masks themselves only with model.dropout_mask='bernoulli' (where rbg is
    # the cheaper on CPU); 'hash' masks take two words of it each.
    c.train.dropout_rng = "rbg"
    c.train.eval_every = 250
    c.train.eval_batches = 20
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2  # the latest N (>= 2: the previous one is the fallback), plus the best by val loss
    c.train.progress = True  # a tqdm progress bar on the terminal
    # Numerical faults: a step with a non-finite loss or gradient is skipped (no update); this many in a row, or a
    # loss above spike_factor x the mean of the last spike_window losses (0: off), rolls the run back to its last
    # good checkpoint with the learning rate multiplied by rollback_lr_factor; after max_rollbacks it stops.
    c.train.max_bad_steps = 10
    c.train.spike_factor = 0.0
    c.train.spike_window = 50
    c.train.max_rollbacks = 3
    c.train.rollback_lr_factor = 1.0

    c.optim = ConfigDict()
    c.optim.name = "adamw"
    c.optim.lr = 2e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 100
    c.optim.decay_steps = config_dict.placeholder(int)  # None: train.steps
    c.optim.min_lr_ratio = 0.1  # the schedule ends at lr * min_lr_ratio
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1
    c.optim.momentum = 0.9  # for sgd
    c.optim.clip_norm = 1.0  # global-norm clipping; 0 disables it
    c.optim.decay_embeddings = False  # weight decay on embedding tables (never on norms or biases)

    # Fine-tuning (llm/finetune.py): start from another run ("runs/base") or a Hugging Face model ("hf:DIR");
    # which parameters train (comma-separated regexes searched in paths like 'layers_0/attention/query/kernel')
    # and per-group learning-rate multipliers ('embed=0.1,attention=0.5'). With model.lora_rank > 0 and no
    # train_only, only the LoRA adapters train.
    c.finetune = ConfigDict()
    c.finetune.init_from = ""
    c.finetune.init_checkpoint = "latest"  # of an init_from run: latest, best or a step
    c.finetune.freeze = ""
    c.finetune.train_only = ""
    c.finetune.lr_groups = ""

    # Evaluation runs (`llm eval`, llm/evaluate.py): '' = the run's own data, or a corpus spec / task:NAME.
    c.eval = ConfigDict()
    c.eval.corpus = ""
    c.eval.split = "val"  # val | train | all
    c.eval.max_tokens = 0  # 0: the whole split
    c.eval.metrics = "exact_match,chrf,rouge_l"  # for supervised tasks (llm/metrics.py)
    c.eval.max_examples = 200
    c.eval.max_new_tokens = 64

    # Devices: a (data, fsdp, tensor) mesh; -1 takes the devices the other axes leave. The rules map the
    # model's logical axis names to mesh axes (comma-separated; '' = replicated). See llm/parallel/.
    c.mesh = ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.rules = ConfigDict({
        "batch": "data,fsdp",  # activations and token batches
        "length": "",
        "embed": "fsdp",  # parameters (and their optimizer state) are split here under FSDP
        "vocab": "tensor",
        "heads": "tensor",
        "kv_heads": "tensor",
        "kv": "",
        "mlp": "tensor",
        "layers": "",
    })

    # Several processes (hosts): JAX's distributed runtime; see llm/parallel/distributed.py.
    c.distributed = ConfigDict()
    c.distributed.enabled = False
    c.distributed.coordinator_address = config_dict.placeholder(str)  # host:port of process 0
    c.distributed.num_processes = config_dict.placeholder(int)
    c.distributed.process_id = config_dict.placeholder(int)
    c.distributed.local_device_ids = config_dict.placeholder(str)  # e.g. "0,1": the devices this process uses

    c.sample = ConfigDict()
    c.sample.prompt = "\n"
    c.sample.num_samples = 2
    c.sample.max_new_tokens = 300
    c.sample.temperature = 0.8
    c.sample.top_k = config_dict.placeholder(int)
    c.sample.top_p = config_dict.placeholder(float)
    c.sample.seed = 0
    return c


def get_config(arg: str | None = None) -> ConfigDict:
    """The default experiment (this module doubles as the experiment file `llm train` uses by default)."""
    if arg:
        raise ConfigError(f"the default config has no presets (got {arg!r})")
    return get_base_config()


# ----------------------------------------------------------------------------------------------------------
# validation


def validate_config(config: ConfigDict) -> None:
    """Raise ConfigError (one line) for unknown keys, wrong types and inconsistent values."""
    _check_against(config, get_base_config(), "")
    model = model_config(config, vocab_size=config.model.vocab_size or 1)
    t, o, d = config.train, config.optim, config.data

    def choice(name, value, options):
        if value not in options:
            raise ConfigError(f"{name}={value!r} is not one of: {', '.join(options)}")

    def positive(name, value):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")

    choice("optim.name", o.name, OPTIMIZERS)
    choice("optim.schedule", o.schedule, SCHEDULES)
    choice("data.tokenizer", d.tokenizer, TOKENIZERS)
    choice("train.dropout_rng", t.dropout_rng, DROPOUT_RNGS)
    for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "eval_batches", "log_every",
                 "checkpoint_every", "keep_checkpoints", "max_bad_steps", "spike_window"):
        positive(f"train.{name}", t[name])
    for name in ("lr", "decay_steps", "eps"):
        positive(f"optim.{name}", o[name])
    positive("data.vocab_size", d.vocab_size)
    positive("sample.max_new_tokens", config.sample.max_new_tokens)
    if config.sample.num_samples < 0:
        raise ConfigError(f"sample.num_samples must be >= 0 (0: no samples after training), got "
                          f"{config.sample.num_samples}")
    positive("sample.top_k", config.sample.top_k)
    for name, seed in (("seed", config.seed), ("sample.seed", config.sample.seed)):
        if not 0 <= seed < 2**63:
            raise ConfigError(f"{name} must be in [0, 2**63), got {seed}")
    if config.sample.num_samples and not config.sample.prompt:
        raise ConfigError("sample.prompt is empty; the samples after training need at least one character to "
                          "continue from (e.g. '\\n'), or set sample.num_samples=0")
    ids = config.distributed.local_device_ids
    if ids is not None and not all(x.strip().isdigit() for x in ids.split(",")):
        raise ConfigError(f"distributed.local_device_ids={ids!r} must be comma-separated device numbers, e.g. '0,1'")
    _check_finetune(config.finetune)
    choice("eval.split", config.eval.split, ("val", "train", "all"))
    from llm.metrics import METRICS

    unknown = [m for m in config.eval.metrics.split(",") if m.strip() and m.strip() not in METRICS]
    if unknown:
        raise ConfigError(f"eval.metrics: unknown {', '.join(unknown)}; choose among {', '.join(METRICS)}")
    positive("eval.max_examples", config.eval.max_examples)
    positive("eval.max_new_tokens", config.eval.max_new_tokens)
    positive("data.sft_train_examples", d.sft_train_examples)
    positive("data.sft_eval_examples", d.sft_eval_examples)
    if t.keep_checkpoints < 2:
        raise ConfigError(f"train.keep_checkpoints must be >= 2 (the previous checkpoint is the fallback when the "
                          f"latest one is damaged), got {t.keep_checkpoints}")
    if t.spike_factor != 0 and t.spike_factor <= 1:
        raise ConfigError(f"train.spike_factor must be > 1 (a loss this many times the recent mean is a spike) or 0 "
                          f"(off), got {t.spike_factor}")
    if t.max_rollbacks < 0:
        raise ConfigError(f"train.max_rollbacks must be >= 0, got {t.max_rollbacks}")
    if not 0.0 < t.rollback_lr_factor <= 1.0:
        raise ConfigError(f"train.rollback_lr_factor must be in (0, 1] (1: no learning-rate cut), got "
                          f"{t.rollback_lr_factor}")
    if not 0.0 < d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    if (t.seq_len or model.max_len) > model.max_len:
        raise ConfigError(f"train.seq_len={t.seq_len} is longer than the context model.max_len={model.max_len}")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
    if o.warmup_steps < 0 or not 0.0 <= o.min_lr_ratio <= 1.0 or o.weight_decay < 0 or o.clip_norm < 0:
        raise ConfigError("optim.warmup_steps, weight_decay and clip_norm must be >= 0 and optim.min_lr_ratio "
                          "in [0, 1]")
    for axis in ("data", "fsdp", "tensor"):
        if config.mesh[axis] == 0 or config.mesh[axis] < -1:
            raise ConfigError(f"mesh.{axis} must be a positive device count or -1 (fill), got {config.mesh[axis]}")
    from llm.parallel.sharding import logical_rules

    logical_rules(config.mesh.rules)
    if config.sample.temperature < 0:
        raise ConfigError(f"sample.temperature must be >= 0 (0 is greedy), got {config.sample.temperature}")
    if config.sample.top_p is not None and not 0.0 < config.sample.top_p <= 1.0:
        raise ConfigError(f"sample.top_p must be in (0, 1], got {config.sample.top_p}")


def _check_finetune(f: ConfigDict) -> None:
    import re

    for name in ("freeze", "train_only"):
        for pattern in filter(None, (p.strip() for p in f[name].split(","))):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"finetune.{name}: {pattern!r} is not a regular expression ({e})") from None
    for item in filter(None, (x.strip() for x in f.lr_groups.split(","))):
        pattern, eq, mult = item.rpartition("=")
        try:
            re.compile(pattern)
            ok = bool(eq and pattern) and float(mult) >= 0
        except (re.error, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"finetune.lr_groups: {item!r} is not 'regex=multiplier' (a number >= 0), e.g. "
                              "'embed=0.1,attention=0.5'")
    c = f.init_checkpoint
    if c not in ("latest", "best") and not c.isdigit():
        raise ConfigError(f"finetune.init_checkpoint={c!r}: use latest, best or a step number")


def model_config(config: ConfigDict, *, vocab_size: int | None = None) -> ModelConfig:
    """The ModelConfig of an experiment; `vocab_size` fills in model.vocab_size when that is None."""
    d = config.model.to_dict()
    if d.get("vocab_size") is None:
        if vocab_size is None:
            raise ConfigError("model.vocab_size is None and no tokenizer gave one")
        d["vocab_size"] = vocab_size
    return ModelConfig.from_dict(d)


def _check_against(config: Any, base: Any, prefix: str) -> None:
    """Same keys as the base config, and values of the base's types (ints may stand for floats)."""
    unknown = sorted(set(config.keys()) - set(base.keys()))
    if unknown:
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)} in {where}; "
                          f"valid keys: {', '.join(sorted(base.keys()))}")
    missing = sorted(set(base.keys()) - set(config.keys()))
    if missing:
        raise ConfigError(f"config is missing {', '.join(prefix + k for k in missing)}; start experiment files "
                          "from llm.config.get_base_config()")
    for key in base.keys():
        value, default = config[key], base[key]
        if isinstance(default, ConfigDict):
            if not isinstance(value, ConfigDict):
                raise ConfigError(f"{prefix}{key} must be a section (ConfigDict), got {value!r}")
            _check_against(value, default, f"{prefix}{key}.")
            continue
        expected = base.get_type(key) if hasattr(base, "get_type") else type(default)
        if value is None or expected is type(None):
            continue
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        ok = ok or (expected is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{prefix}{key} must be {expected.__name__}, got {type(value).__name__} {value!r}")
