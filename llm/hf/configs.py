"""Hugging Face `config.json` <-> ModelConfig, for GPT-2 and the Llama family (Llama, Mistral, Qwen2, Qwen3, Phi-3).

Every HF option either maps exactly onto a ModelConfig field or is rejected with an HFConversionError that names
the field; nothing is silently approximated. Conventions checked against transformers' modeling code:

  GELU   our MLP's 'gelu' is flax's `nn.gelu`, the tanh approximation, i.e. HF 'gelu_new' (= 'gelu_pytorch_tanh',
         'gelu_fast'). HF 'gelu' is the exact erf form, which the model does not have: rejected.
  RoPE   our `apply_rope` rotates the pairs (i, i + D/2), HF's `rotate_half` layout, with the same frequencies
         base^(-2i/D): q/k projections are copied as they are (no column permutation). The scaled types (linear,
         dynamic, yarn, llama3, longrope) are llm/model/rope.py's, from either spelling of config.json.
  norms  HF LlamaRMSNorm = our RMSNorm (float32, weight * x / sqrt(mean(x^2) + eps)); GPT-2's LayerNorm = flax's.
  Phi-3  Llama with fused projections (llm/hf/weights.py), RoPE on the first int(head_dim * partial_rotary_factor)
         channels (our rotary_fraction), plain or longrope only, and Mistral's sliding window on every layer.
"""

from __future__ import annotations

import math
from typing import Any

from llm.config.options import RUNTIME, UNSUPPORTED, model_fields
from llm.errors import ConfigError
from llm.model.config import ModelConfig


class HFConversionError(ConfigError):
    """A Hugging Face checkpoint or config that cannot be converted; a one-line message naming the field."""


LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3", "phi3")
ARCHS = ("gpt2", *LLAMA_FAMILY)
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "phi3": "Phi3ForCausalLM"}
# HF activation names that are exactly (up to float rounding) one of ours.
GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "relu": "relu",
                    "silu": "silu", "swish": "silu"}
# Which bias groups each Llama-family architecture has: 'qkv' (q/k/v projections), 'o' (output projection),
# 'mlp' (gate/up/down). Values: 'never', 'always', or the config.json flag that switches the group on.
BIAS_GROUPS = {
    "llama": {"qkv": "attention_bias", "o": "attention_bias", "mlp": "mlp_bias"},
    "mistral": {"qkv": "never", "o": "never", "mlp": "never"},
    "qwen2": {"qkv": "always", "o": "never", "mlp": "never"},
    "qwen3": {"qkv": "attention_bias", "o": "attention_bias", "mlp": "never"},
    "phi3": {"qkv": "never", "o": "never", "mlp": "never"},
}
# Phi3Config's own RoPE rules (transformers' models/phi3/configuration_phi3.py): plain or longrope only, the
# legacy names 'su' and 'yarn' read as longrope; its top-level original_max_position_embeddings always exists
# (default 4096) and wins over rope_parameters'.
PHI3_ROPE_TYPES = {"default": "default", "longrope": "longrope", "su": "longrope", "yarn": "longrope"}
PHI3_ORIGINAL_MAX_LEN = 4096
# ModelConfig fields a caller may set on import: how the math runs (the option table's RUNTIME column), and the
# context (shorter than max_position_embeddings: a smaller KV cache).
OVERRIDABLE = ("max_len", *model_fields("hf", RUNTIME))


def _unsupported(field: str, value: Any, why: str) -> HFConversionError:
    return HFConversionError(f"config.json: {field}={value!r} is not supported: {why}")


def _required(hf: dict, key: str) -> Any:
    if hf.get(key) is None:
        raise HFConversionError(f"config.json has no {key!r}; is it a complete Hugging Face model config?")
    return hf[key]


def arch_of(hf: dict) -> str:
    """The architecture key ('gpt2', 'llama', ...) of an HF config dict."""
    model_type = hf.get("model_type")
    if model_type in ARCHS:
        return model_type
    archs = hf.get("architectures") or []
    raise HFConversionError(
        f"config.json: model_type={model_type!r} ({', '.join(archs) or 'no architectures'}) is not supported; "
        f"supported: {', '.join(f'{a} ({ARCHITECTURES[a]})' for a in ARCHS)}")


def model_config_from_hf(hf: dict, **overrides: Any) -> tuple[str, ModelConfig]:
    """(arch, ModelConfig) for an HF config dict; `overrides` may set the OVERRIDABLE fields."""
    bad = sorted(set(overrides) - set(OVERRIDABLE))
    if bad:
        raise HFConversionError(f"cannot override {', '.join(bad)} on import (they are fixed by the checkpoint); "
                                f"these may be set: {', '.join(OVERRIDABLE)}")
    arch = arch_of(hf)
    if hf.get("quantization_config"):
        raise _unsupported("quantization_config", hf["quantization_config"].get("quant_method", "?"),
                           "quantized checkpoints cannot be converted; use the unquantized weights")
    fields = _gpt2_fields(hf) if arch == "gpt2" else _llama_fields(hf, arch)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if "max_len" in overrides and overrides["max_len"] is not None and fields["position"] == "learned":
        if overrides["max_len"] != hf.get("n_positions", 1024):
            raise HFConversionError("max_len cannot be changed for GPT-2: its learned position table has "
                                    f"n_positions={hf.get('n_positions', 1024)} rows")
    window = fields.get("window")
    if window is not None and window >= fields["max_len"]:
        fields["window"] = None  # a window as long as the context has no effect
    return arch, ModelConfig.from_dict(fields)


def _gpt2_fields(hf: dict) -> dict[str, Any]:
    act = hf.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise _unsupported("activation_function", act,
                           "the model's MLP has gelu with the tanh approximation (HF 'gelu_new'), relu and silu; "
                           "HF 'gelu' is the exact erf GELU")
    if not hf.get("scale_attn_weights", True):
        raise _unsupported("scale_attn_weights", False, "attention logits are always scaled by 1/sqrt(head_dim)")
    for flag, why in (("scale_attn_by_inverse_layer_idx", "no per-layer attention scaling"),
                      ("add_cross_attention", "decoder-only models have no cross-attention")):
        if hf.get(flag):
            raise _unsupported(flag, hf[flag], why)
    d_model = _required(hf, "n_embd")
    return dict(vocab_size=_required(hf, "vocab_size"), max_len=hf.get("n_positions", 1024), d_model=d_model,
                n_layers=_required(hf, "n_layer"), n_heads=_required(hf, "n_head"),
                d_ff=hf.get("n_inner") or 4 * d_model, ffn="mlp", activation=GPT2_ACTIVATIONS[act],
                norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), norm_position="pre",
                position="learned", use_bias=True, tie_embeddings=hf.get("tie_word_embeddings", True),
                init_std=hf.get("initializer_range", 0.02))


# transformers' rope_type -> model.rope_scaling; and each type's rope_parameters keys -> the ModelConfig fields.
ROPE_TYPES = {"default": "none", "linear": "linear", "dynamic": "dynamic", "yarn": "yarn", "llama3": "llama3",
              "longrope": "longrope"}
ROPE_KEYS = {
    "none": {},
    "linear": {"factor": "rope_factor"},
    "dynamic": {"factor": "rope_factor"},  # its original context: max_position_embeddings
    "yarn": {"factor": "rope_factor", "original_max_position_embeddings": "rope_original_max_len",
             "beta_fast": "rope_beta_fast", "beta_slow": "rope_beta_slow", "truncate": "rope_truncate",
             "attention_factor": "rope_attention_factor"},
    "llama3": {"factor": "rope_factor", "original_max_position_embeddings": "rope_original_max_len",
               "low_freq_factor": "rope_low_freq_factor", "high_freq_factor": "rope_high_freq_factor"},
    "longrope": {"factor": "rope_factor", "original_max_position_embeddings": "rope_original_max_len",
                 "short_factor": "rope_short_factor", "long_factor": "rope_long_factor",
                 "attention_factor": "rope_attention_factor"},
}

# The keys transformers cannot do without (the others have defaults, or are derived).
ROPE_REQUIRED = {"linear": ("factor",), "dynamic": ("factor",), "yarn": (),
                 "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
                 "longrope": ("short_factor", "long_factor")}


def _rope_dict(hf: dict) -> tuple[str, dict]:
    """The RoPE parameters and the key they came from: transformers v4's `rope_scaling` or v5's `rope_parameters`
    (v5 reads rope_scaling when it is set), with rope_theta filled in from the top level."""
    scaling, params = hf.get("rope_scaling"), hf.get("rope_parameters")
    for name, d in (("rope_scaling", scaling), ("rope_parameters", params)):
        if d is not None and (not isinstance(d, dict) or any(isinstance(v, dict) for v in d.values())):
            raise _unsupported(name, d, "RoPE parameters per layer type are not implemented")
    if scaling and params and _rope_type(scaling) != _rope_type(params):
        raise HFConversionError(f"config.json: rope_scaling (rope_type {_rope_type(scaling)!r}) and rope_parameters "
                                f"(rope_type {_rope_type(params)!r}) disagree; keep one of them")
    name, d = ("rope_scaling", scaling) if scaling else ("rope_parameters", params or {})
    theta = d.get("rope_theta", hf.get("rope_theta", (params or {}).get("rope_theta", 10000.0)))
    return name, {**d, "rope_theta": theta}


def _rope_type(d: dict) -> str:
    return d.get("rope_type", d.get("type", "default"))


def _rope_fields(hf: dict, arch: str) -> dict[str, Any]:
    """ModelConfig's RoPE fields (rope_base, rope_scaling, rope_*, rotary_fraction) of an HF config, resolved as
    transformers' `modeling_rope_utils.py` (and, for Phi-3, Phi3Config) does."""
    name, d = _rope_dict(hf)
    kind = _rope_type(d)
    if arch == "phi3":
        if kind not in PHI3_ROPE_TYPES:
            raise _unsupported(name, d, f"Phi3Config takes rope_type 'default' or 'longrope' only, not {kind!r}")
        kind = PHI3_ROPE_TYPES[kind]
    if kind not in ROPE_TYPES:
        raise _unsupported(name, d, f"rope_type {kind!r} is not implemented; these are: {', '.join(ROPE_TYPES)}")
    ours = ROPE_TYPES[kind]
    fraction = _rotary_fraction(hf, d, arch)
    d = _resolved(ours, d, hf, name, arch)
    fields = {field: d[key] for key, field in ROPE_KEYS[ours].items() if d.get(key) is not None}
    for field in ("rope_short_factor", "rope_long_factor"):
        if field in fields:
            fields[field] = ",".join(repr(float(x)) for x in fields[field])
    if ours == "dynamic":
        fields["rope_original_max_len"] = hf.get("max_position_embeddings", 2048)
    return dict(fields, rope_base=float(d["rope_theta"]), rope_scaling=ours, rotary_fraction=fraction)


def _rotary_fraction(hf: dict, d: dict, arch: str) -> float:
    """model.rotary_fraction: Phi-3's partial_rotary_factor (from the RoPE parameters, else the top level)."""
    partial = d.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial is None or partial == 1:
        return 1.0
    if arch != "phi3":
        raise _unsupported("partial_rotary_factor", partial, "transformers' Llama, Mistral and Qwen models rotate "
                           "every channel of a head (rope_type 'default' ignores the factor, the scaled types fail)")
    return partial


def _resolved(kind: str, d: dict, hf: dict, name: str, arch: str) -> dict:
    """`d` with the values transformers derives when they are left out."""
    max_pos = hf.get("max_position_embeddings", 2048)
    if kind == "none":
        return d
    if kind in ("yarn", "llama3", "longrope"):
        # A top-level original_max_position_embeddings (Phi-3's spelling) wins over rope_parameters'.
        fallback = PHI3_ORIGINAL_MAX_LEN if arch == "phi3" else d.get("original_max_position_embeddings", max_pos)
        original = hf.get("original_max_position_embeddings", fallback)
        d = dict(d, original_max_position_embeddings=original)
    missing = [key for key in ROPE_REQUIRED[kind] if d.get(key) is None]
    if missing:
        raise HFConversionError(f"config.json: {name} of rope_type {kind!r} has no {missing[0]!r}")
    if kind in ("yarn", "longrope") and d.get("factor") is None:
        d = dict(d, factor=max_pos / d["original_max_position_embeddings"])
    if kind == "yarn":
        d = dict(d, beta_fast=d.get("beta_fast") or 32.0, beta_slow=d.get("beta_slow") or 1.0,
                 truncate=d.get("truncate", True))
        if d.get("attention_factor") is None and d.get("mscale") and d.get("mscale_all_dim"):
            d = dict(d, attention_factor=_mscale(d["factor"], d["mscale"]) / _mscale(d["factor"], d["mscale_all_dim"]))
    return d


def _mscale(factor: float, mscale: float) -> float:
    """YaRN's attention scale for `factor` (transformers' get_mscale)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _window(hf: dict, arch: str, n_layers: int) -> int | None:
    """The sliding window (one for every layer) or None; windows on some layers only are rejected."""
    if arch == "llama":
        return None
    window = hf.get("sliding_window")
    if arch in ("qwen2", "qwen3"):
        if not hf.get("use_sliding_window"):
            return None
        first = hf.get("max_window_layers", 28)  # layers >= max_window_layers use the window
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
    else:  # mistral, phi3: every layer (a window or none)
        types = ["sliding_attention" if window is not None else "full_attention"] * n_layers
    types = hf.get("layer_types") or types
    if window is None or set(types) == {"full_attention"}:
        return None
    if set(types) != {"sliding_attention"}:
        raise _unsupported("layer_types", types, "a sliding window on some layers only is not implemented")
    return int(window)


def _llama_fields(hf: dict, arch: str) -> dict[str, Any]:
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise _unsupported("hidden_act", act, "the Llama-family MLP is SwiGLU (hidden_act 'silu')")
    d_model, n_heads = _required(hf, "hidden_size"), _required(hf, "num_attention_heads")
    n_layers = _required(hf, "num_hidden_layers")
    head_dim = hf.get("head_dim") or d_model // n_heads
    return dict(vocab_size=_required(hf, "vocab_size"), max_len=hf.get("max_position_embeddings", 2048),
                d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                n_kv_heads=hf.get("num_key_value_heads") or n_heads,
                head_dim=None if head_dim * n_heads == d_model else head_dim,
                d_ff=_required(hf, "intermediate_size"), ffn="swiglu", norm="rmsnorm",
                norm_eps=hf.get("rms_norm_eps", 1e-6), norm_position="pre", position="rope",
                window=_window(hf, arch, n_layers), qk_norm=arch == "qwen3",
                use_bias=any(hf.get(flag, False) if flag not in ("never", "always") else flag == "always"
                             for flag in BIAS_GROUPS[arch].values()),
                tie_embeddings=hf.get("tie_word_embeddings", False), init_std=hf.get("initializer_range", 0.02),
                **_rope_fields(hf, arch))


# ------------------------------------------------------------------------------------------------------------
# export


def _rope_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json's RoPE keys in both spellings: transformers v4 reads rope_theta and rope_scaling, v5
    rope_parameters."""
    kind = next(hf for hf, ours in ROPE_TYPES.items() if ours == cfg.rope_scaling)
    params = {"rope_type": kind}
    if cfg.rotary_fraction != 1.0:  # Phi-3 only (check_exportable)
        params["partial_rotary_factor"] = cfg.rotary_fraction
    for key, field in ROPE_KEYS[cfg.rope_scaling].items():
        value = list(getattr(cfg.rope, key)) if key in ("short_factor", "long_factor") else getattr(cfg, field)
        if value is not None and not (key == "truncate" and value):
            params[key] = value
    out = {"rope_theta": cfg.rope_base, "rope_parameters": {**params, "rope_theta": cfg.rope_base}}
    if cfg.rope_scaling != "none":
        out["rope_scaling"] = params
    if cfg.rope_scaling == "dynamic":
        # transformers' dynamic scaling starts beyond max_position_embeddings, which then is the original context.
        out["max_position_embeddings"] = cfg.rope_original_max_len
    return out


def check_exportable(cfg: ModelConfig, arch: str) -> None:
    """Raise HFConversionError naming the first ModelConfig field that `arch` cannot express."""
    if arch not in ARCHS:
        raise HFConversionError(f"arch={arch!r} is not one of: {', '.join(ARCHS)}")
    gpt2 = arch == "gpt2"
    wanted: dict[str, tuple] = {
        "position": ("learned",) if gpt2 else ("rope",),
        "norm": ("layernorm",) if gpt2 else ("rmsnorm",),
        "ffn": ("mlp",) if gpt2 else ("swiglu",),
        "norm_position": ("pre",),
        **{name: (getattr(ModelConfig, name),) for name in model_fields("hf", UNSUPPORTED)},  # the defaults
        "qk_norm": (arch == "qwen3",),
        "window": (cfg.window,) if arch in ("mistral", "phi3") else (None,),
        "rotary_fraction": (cfg.rotary_fraction,) if arch == "phi3" else (1.0,),
    }
    if arch == "phi3":
        wanted["rope_scaling"] = ("none", "longrope")
    if gpt2:
        wanted.update({"activation": ("gelu", "relu", "silu"), "use_bias": (True,), "n_kv_heads": (None, cfg.n_heads),
                       "head_dim": (None, cfg.d_model // cfg.n_heads)})
    for name, options in wanted.items():
        value = getattr(cfg, name)
        if value not in options:
            shown = " or ".join(repr(o) for o in options)
            raise HFConversionError(f"model.{name}={value!r} cannot be exported as {ARCHITECTURES[arch]} "
                                    f"(it needs {shown}){_hint(name, arch)}")
    if gpt2 and cfg.d_model % cfg.n_heads:
        raise HFConversionError(f"model.d_model={cfg.d_model} is not divisible by model.n_heads={cfg.n_heads}, "
                                "which GPT-2 needs")


def _hint(name: str, arch: str) -> str:
    if name == "window" and arch != "mistral":
        return "; export with arch='mistral' or arch='phi3' for a sliding window"
    if name == "qk_norm" and arch != "qwen3":
        return "; export with arch='qwen3' for QK-norm"
    if name == "rotary_fraction":
        return "; transformers' Llama, Mistral and Qwen models rotate every channel of a head: export with arch='phi3'"
    if name == "rope_scaling" and arch == "phi3":
        return "; Phi-3 has plain RoPE and longrope only: export with arch='llama'"
    if name in ("position", "norm", "ffn") and arch == "gpt2":
        return "; a RoPE/RMSNorm/SwiGLU model exports as arch='llama'"
    return ""


def hf_config(cfg: ModelConfig, arch: str, *, biases: dict[str, bool] | None = None, dtype: str = "float32",
              bos_id: int | None = None, eos_id: int | None = None) -> dict[str, Any]:
    """The config.json of `cfg` as `arch` (after `check_exportable`); `biases`: Llama-family bias flags."""
    common = {"architectures": [ARCHITECTURES[arch]], "model_type": arch, "vocab_size": cfg.vocab_size,
              "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std,
              "bos_token_id": bos_id, "eos_token_id": eos_id, "use_cache": True,
              "dtype": dtype, "torch_dtype": dtype}  # transformers v5 reads 'dtype', v4 'torch_dtype'
    if arch == "gpt2":
        act = {"gelu": "gelu_new", "relu": "relu", "silu": "silu"}[cfg.activation]
        return {**common, "n_positions": cfg.max_len, "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
                "n_head": cfg.n_heads, "n_inner": cfg.hidden_ff, "activation_function": act,
                "layer_norm_epsilon": cfg.norm_eps, "embd_pdrop": cfg.dropout, "resid_pdrop": cfg.dropout,
                "attn_pdrop": 0.0, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "add_cross_attention": False}
    out = {**common, "hidden_size": cfg.d_model, "intermediate_size": cfg.hidden_ff,
           "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
           "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.dim_per_head, "hidden_act": "silu",
           "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps, "attention_dropout": 0.0,
           **_rope_config(cfg)}
    biases = biases or {}
    if arch == "llama":
        out.update(attention_bias=biases.get("attention_bias", False), mlp_bias=biases.get("mlp_bias", False),
                   pretraining_tp=1)
    elif arch == "mistral":
        out.update(sliding_window=cfg.window)
    elif arch == "phi3":
        # pad_token_id: Phi3Config's default (32000) is outside a smaller vocabulary, which torch's Embedding refuses.
        out.update(sliding_window=cfg.window, original_max_position_embeddings=cfg.rope_original_max_len or cfg.max_len,
                   partial_rotary_factor=cfg.rotary_fraction, resid_pdrop=0.0, embd_pdrop=0.0, pad_token_id=None)
    else:  # qwen2, qwen3
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
        if arch == "qwen3":
            out.update(attention_bias=biases.get("attention_bias", False))
    return out
