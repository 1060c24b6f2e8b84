"""The model's hyper-parameters: one frozen dataclass, its defaults, and its validation.

The experiment config's `model` section (an ml_collections ConfigDict) is built from these defaults and
converted back with `ModelConfig.from_dict`, which rejects unknown keys, wrong types and inconsistent values.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

from llm.dtypes import DTYPES
from llm.errors import ConfigError
from llm.model.mixer_table import DEFAULT_MIXER, MIXER_TABLE, MIXERS, lacking, with_feature
from llm.ops.attention.capabilities import FEATURES, IMPLEMENTATIONS, missing
from llm.ops.attention.spec import AttentionSpec

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
ROPE_SCALINGS = ("none", "linear", "dynamic", "yarn", "llama3", "longrope")  # llm/model/rope.py's FREQUENCIES
FFNS = ("mlp", "swiglu", "geglu")
ACTIVATIONS = ("gelu", "relu", "silu")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DROPOUT_MASKS = ("hash", "bernoulli")  # llm/model/dropout.py
# A layer's sequence mixer (MIXERS): softmax attention, or one of llm/model/mixers.py's sub-quadratic ones; what
# each supports is llm/model/mixer_table.py's MIXER_TABLE.
FEATURE_MAPS = ("identity", "elu", "taylor")
# How the chunked mixers run in training: the chunked jnp form, or the Pallas kernel (MIXER_TABLE's `pallas`).
MIXER_IMPLS = ("chunked", "pallas")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """A scaling and its parameters (ModelConfig's rope_* fields); defaults as transformers'."""

    kind: str = "none"
    factor: float = 1.0
    original_max_len: int | None = None  # the pretraining context ('dynamic': where scaling starts)
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    truncate: bool = True  # yarn: round the ramp's ends to whole frequencies
    attention_factor: float | None = None  # yarn, longrope; None: the type's default from `factor`
    short_factor: tuple[float, ...] = ()  # longrope: one divisor per frequency within the original context
    long_factor: tuple[float, ...] = ()  # longrope: beyond it


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer; see llm/model/transformer.py for how each field is used."""

    vocab_size: int = 256
    max_len: int = 256  # context length: the longest sequence the model is trained or sampled on
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: = n_heads (multi-head); 1: multi-query; else grouped-query
    head_dim: int | None = None  # None: d_model // n_heads
    d_ff: int | None = None  # None: 4 * d_model for 'mlp', 8/3 * d_model rounded up to ff_multiple_of if gated
    ff_multiple_of: int = 64
    ffn: str = "mlp"
    activation: str = "gelu"  # for ffn='mlp'; the gated ffns fix theirs (swiglu: silu, geglu: gelu)
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_position: str = "pre"
    position: str = "learned"
    rope_base: float = 10000.0
    # RoPE scaling for a context beyond the pretraining one, as transformers computes each (llm/model/rope.py):
    # 'none', 'linear', 'dynamic' (NTK-aware), 'yarn', 'llama3' (Llama 3.1), 'longrope' (Phi-3). The rope_* fields
    # below are transformers' rope_parameters of the same names; each type reads its own.
    rope_scaling: str = "none"
    rope_factor: float = 1.0  # every type: the context extension factor
    rope_original_max_len: int | None = None  # the pretraining context (every type but linear; dynamic: its start)
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_beta_fast: float = 32.0  # yarn
    rope_beta_slow: float = 1.0  # yarn
    rope_truncate: bool = True  # yarn
    rope_attention_factor: float | None = None  # yarn, longrope: scales cos and sin; None: the type's default
    # longrope: comma-separated divisors, one per rotated frequency (rotary_dim / 2), within the original context
    # (short) and beyond it (long)
    rope_short_factor: str = ""
    rope_long_factor: str = ""
    rotary_fraction: float = 1.0  # RoPE rotates the first int(head_dim * rotary_fraction) channels of each head
    # llm/ops/attention.py; "dense" measured fastest on CPU (benchmarks/results/perf_before_after.md), on GPU
    # choose "cudnn" or "flash" (benchmarks/train.py --preset gpu)
    attention_impl: str = "dense"
    window: int | None = None  # sliding-window attention: each token sees at most this many tokens
    qk_norm: bool = False
    # Kernel size of a causal depthwise convolution over the sequence applied to the queries, keys and values
    # after their projections (llm/model/conv.py; H3 / Based / Zoology's short convolutions); 0: none.
    short_conv: int = 0
    attn_softcap: float | None = None
    # Every layer's sequence mixer (MIXERS), or with mixer_pattern (comma-separated mixers, e.g.
    # "gla,gla,gla,attention") the layers' mixers in turn, the pattern repeated over the depth (a hybrid).
    mixer: str = DEFAULT_MIXER
    mixer_pattern: str = ""
    feature_map: str = "identity"  # the 'linear' mixer's feature map of queries and keys (FEATURE_MAPS)
    feature_dim: int = 16  # the Taylor map's input size per head ('based', feature_map='taylor')
    mixer_chunk: int = 64  # tokens per chunk of the mixers' chunked form (and of the Pallas kernel)
    mixer_impl: str = "chunked"  # MIXER_IMPLS
    dropout: float = 0.0
    dropout_mask: str = "hash"  # how masks are drawn: "hash" (fast) or "bernoulli" (llm/model/dropout.py)
    use_bias: bool = True
    tie_embeddings: bool = True
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    # Operand dtype of the projections' matmuls (None: `dtype`); "bfloat16" with float32 accumulation, the
    # activations staying in `dtype` (llm/ops/matmul.py): AMX on CPUs that have it, tensor cores on GPUs.
    matmul_dtype: str | None = None
    init_std: float = 0.02
    scan_layers: bool = False
    remat: str = "none"
    # LoRA adapters (Hu et al. 2021) on the projections whose parameter path (e.g. 'layers_0/attention/query')
    # matches one of the comma-separated regular expressions in lora_targets: y = xW + (alpha / rank) * drop(x)AB,
    # B starting at zero so the adapted model starts as the base model. lora_rank 0: none.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "(attention|mixer)/(query|value)"

    # ---- derived values -------------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def dim_per_head(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def rotary_dim(self) -> int:
        """Channels of each head that RoPE rotates, int(head_dim * rotary_fraction) as transformers rounds."""
        return int(self.dim_per_head * self.rotary_fraction)

    @property
    def rope(self) -> RopeScaling:
        """The RoPE scaling of the rope_* fields (llm/model/rope.py)."""
        return RopeScaling(
            kind=self.rope_scaling, factor=self.rope_factor, original_max_len=self.rope_original_max_len,
            low_freq_factor=self.rope_low_freq_factor, high_freq_factor=self.rope_high_freq_factor,
            beta_fast=self.rope_beta_fast, beta_slow=self.rope_beta_slow, truncate=self.rope_truncate,
            attention_factor=self.rope_attention_factor, short_factor=_floats(self.rope_short_factor),
            long_factor=_floats(self.rope_long_factor))

    @property
    def layer_mixers(self) -> tuple[str, ...]:
        """The mixer of each layer."""
        pattern = tuple(m.strip() for m in self.mixer_pattern.split(",")) if self.mixer_pattern else (self.mixer,)
        return tuple(pattern[i % len(pattern)] for i in range(self.n_layers))

    @property
    def mixer_group(self) -> int:
        """Layers per repeated group (the pattern's length; 1 without one): scan_layers scans over groups."""
        return len(self.mixer_pattern.split(",")) if self.mixer_pattern else 1

    @property
    def gated(self) -> bool:
        return self.ffn in ("swiglu", "geglu")

    @property
    def hidden_ff(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if not self.gated:
            return 4 * self.d_model
        m = self.ff_multiple_of
        return -(-int(8 * self.d_model / 3) // m) * m

    @property
    def attention_spec(self) -> AttentionSpec:
        """The static options of this model's attention (causal, its implementation, window and soft-cap)."""
        return AttentionSpec(impl=self.attention_impl, causal=True, window=self.window, softcap=self.attn_softcap)

    @property
    def attention_features(self) -> dict[str, bool]:
        """What the attention op must support for this model (llm/ops/attention/capabilities.py)."""
        return self.attention_spec.features(alibi=self.position == "alibi")

    # ---- construction and validation ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict (e.g. `config.model.to_dict()`), checking names, types and consistency."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ConfigError(f"unknown model config key(s) {unknown}; valid keys: {', '.join(fields)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in d.items():
            kwargs[name] = _coerce(f"model.{name}", value, hints[name])
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def choice(name, options):
            value = getattr(self, name)
            if value not in options:
                raise ConfigError(f"model.{name}={value!r} is not one of: {', '.join(options)}")

        def positive(name):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"model.{name} must be positive, got {value}")

        for name, options in [("position", POSITIONS), ("ffn", FFNS), ("activation", ACTIVATIONS),
                              ("norm", NORMS), ("norm_position", NORM_POSITIONS), ("dtype", DTYPES),
                              ("param_dtype", DTYPES), ("remat", REMAT_POLICIES),
                              ("attention_impl", IMPLEMENTATIONS), ("dropout_mask", DROPOUT_MASKS),
                              ("mixer", MIXERS), ("feature_map", FEATURE_MAPS),
                              ("mixer_impl", MIXER_IMPLS), ("rope_scaling", ROPE_SCALINGS)]:
            choice(name, options)
        if self.matmul_dtype is not None:
            choice("matmul_dtype", DTYPES)
        for name in ("vocab_size", "max_len", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                     "d_ff", "ff_multiple_of", "norm_eps", "rope_base", "window", "attn_softcap", "init_std",
                     "feature_dim", "mixer_chunk", "rope_factor", "rope_original_max_len", "rope_low_freq_factor",
                     "rope_high_freq_factor", "rope_beta_fast", "rope_beta_slow", "rope_attention_factor"):
            positive(name)
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                              "change one of them or set model.head_dim")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads="
                              f"{self.n_kv_heads}; pick n_kv_heads among the divisors of n_heads")
        if self.window is not None and self.window > self.max_len:
            raise ConfigError(f"model.window={self.window} is larger than the context model.max_len="
                              f"{self.max_len}; shrink the window or drop it (None)")
        self._validate_rope()
        self._validate_mixers()
        if self.short_conv < 0:
            raise ConfigError(f"model.short_conv is a kernel size >= 0 (0: no convolution), got {self.short_conv}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.lora_rank < 0 or not 0.0 <= self.lora_dropout < 1.0 or self.lora_alpha <= 0:
            raise ConfigError(f"model.lora_rank must be >= 0 (0: no LoRA), model.lora_dropout in [0, 1) and "
                              f"model.lora_alpha > 0; got {self.lora_rank}, {self.lora_dropout}, {self.lora_alpha}")
        try:
            [re.compile(p) for p in self.lora_targets.split(",")]
        except re.error as e:
            raise ConfigError(f"model.lora_targets={self.lora_targets!r} is not a list of regular expressions ({e})"
                              ) from None
        lacks = missing(self.attention_impl, **self.attention_features)
        if lacks:
            have = [impl for impl in IMPLEMENTATIONS if not missing(impl, **self.attention_features)]
            raise ConfigError(f"model.attention_impl={self.attention_impl!r} has no {FEATURES[lacks[0]]}; use "
                              f"{', '.join(map(repr, have))} with this model")

    def _validate_rope(self) -> None:
        if self.position != "rope":
            if self.rope_scaling != "none" or self.rotary_fraction != 1.0:
                raise ConfigError(f"model.rope_scaling={self.rope_scaling!r} and model.rotary_fraction="
                                  f"{self.rotary_fraction} apply to position='rope' only (model.position="
                                  f"{self.position!r}); set 'none' and 1.0, or use RoPE")
            return
        if not 0.0 < self.rotary_fraction <= 1.0:
            raise ConfigError(f"model.rotary_fraction must be in (0, 1], got {self.rotary_fraction}")
        if self.rotary_dim % 2 or self.rotary_dim == 0:
            if self.rotary_fraction == 1.0:
                raise ConfigError(f"RoPE needs an even head_dim, got {self.dim_per_head}")
            raise ConfigError(f"RoPE rotates int(head_dim * model.rotary_fraction) = int({self.dim_per_head} * "
                              f"{self.rotary_fraction}) = {self.rotary_dim} channels, which must be even and > 0; "
                              "change model.rotary_fraction")
        kind = self.rope_scaling
        if kind in ("dynamic", "yarn", "llama3", "longrope") and self.rope_original_max_len is None:
            raise ConfigError(f"model.rope_scaling={kind!r} needs model.rope_original_max_len, the context length "
                              "the model was pretrained with (HF original_max_position_embeddings)")
        if kind == "dynamic" and self.rotary_dim < 4:
            raise ConfigError(f"model.rope_scaling='dynamic' needs at least 4 rotated channels per head, got "
                              f"{self.rotary_dim}")
        if kind == "llama3" and self.rope_low_freq_factor >= self.rope_high_freq_factor:
            raise ConfigError(f"model.rope_low_freq_factor={self.rope_low_freq_factor} must be below "
                              f"model.rope_high_freq_factor={self.rope_high_freq_factor} (Llama 3.1: 1 and 4)")
        if kind == "longrope":
            for name in ("rope_short_factor", "rope_long_factor"):
                self._check_longrope_factors(name)

    def _check_longrope_factors(self, name: str) -> None:
        value, want = getattr(self, name), self.rotary_dim // 2
        try:
            factors = _floats(value)
        except ValueError:
            factors = None
        if factors is None or len(factors) != want or min(factors) <= 0:
            raise ConfigError(f"model.{name}={value!r} must be {want} comma-separated positive numbers (one per "
                              f"rotated frequency: rotary_dim / 2 = {self.rotary_dim} / 2) for "
                              "model.rope_scaling='longrope'")

    def _validate_mixers(self) -> None:
        if self.mixer_pattern:
            unknown = [m for m in self.mixer_pattern.split(",") if m.strip() not in MIXERS]
            if unknown:
                raise ConfigError(f"model.mixer_pattern={self.mixer_pattern!r}: {unknown[0]!r} is not one of: "
                                  f"{', '.join(MIXERS)}")
            if self.n_layers % self.mixer_group:
                raise ConfigError(f"model.mixer_pattern has {self.mixer_group} layers, which do not divide "
                                  f"model.n_layers={self.n_layers}; the pattern repeats over the depth")
        windowed = sorted({m for m in self.layer_mixers if MIXER_TABLE[m].window})
        if windowed and self.window is None:
            raise ConfigError(f"the {windowed[0]!r} mixer adds a sliding-window attention: set model.window (e.g. 64)")
        chunked = [m for m in self.layer_mixers if MIXER_TABLE[m].chunked]
        if self.mixer_impl == "pallas" and lacking("pallas", chunked):
            raise ConfigError(f"model.mixer_impl='pallas' covers {', '.join(with_feature('pallas'))}, not "
                              f"{lacking('pallas', chunked)[0]!r}; use model.mixer_impl='chunked'")


def _floats(value: str) -> tuple[float, ...]:
    """'1.0,2.5' -> (1.0, 2.5); '' -> ()."""
    return tuple(float(x) for x in value.split(",")) if value.strip() else ()


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check `value` against a field's type hint (int | None, float, bool, str); ints pass as floats."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name} may not be None")
    for t in args:
        if t is type(None):
            continue
        if t is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (bool, str) and isinstance(value, t):
            return value
    expected = " or ".join(getattr(t, "__name__", str(t)) for t in args)
    raise ConfigError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
