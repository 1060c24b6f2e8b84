"""Tensors: reading and writing safetensors files (numpy only, no torch), and HF names <-> our parameter tree.

Every mapping is a reshape, a transpose, a concatenation or a split, so import and export are exact inverses:
    GPT-2 Conv1D weights are stored [in, out] (ours too); c_attn is q|k|v concatenated on the output axis.
    torch Linear weights (Llama family, lm_head) are stored [out, in]: transposed.
    Our attention kernels are [d_model, heads, head_dim] and [heads, head_dim, d_model]: HF's flat head axis
    is heads-major (h * head_dim + d), a plain reshape.
    Phi-3 is the Llama layout with q|k|v (qkv_proj) and gate|up (gate_up_proj) concatenated on the output axis:
    split into Llama's names on import, concatenated back on export.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np

from llm.hf.configs import BIAS_GROUPS, HFConversionError
from llm.model.config import ModelConfig
from llm.model.params import unstack_layers

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Non-parameter buffers some GPT-2 checkpoints hold (the causal mask): skipped.
_GPT2_BUFFERS = re.compile(r"h\.\d+\.attn\.(masked_)?bias$")


# ------------------------------------------------------------------------------------------------------------
# files


def weight_files(hf_dir: Path) -> list[Path]:
    """model.safetensors, or the shards named by model.safetensors.index.json."""
    if (hf_dir / SINGLE_FILE).exists():
        return [hf_dir / SINGLE_FILE]
    if (hf_dir / INDEX_FILE).exists():
        try:
            weight_map = json.loads((hf_dir / INDEX_FILE).read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise HFConversionError(f"{hf_dir / INDEX_FILE} is not a safetensors index ({e})") from None
        files = [hf_dir / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise HFConversionError(f"{hf_dir}: shard(s) {', '.join(missing[:3])} named by {INDEX_FILE} are missing; "
                                    "download the whole checkpoint")
        return files
    found = sorted(p.name for p in hf_dir.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".h5", ".msgpack"))
    hint = (f" (found {', '.join(found[:3])}: only safetensors weights are read; download the safetensors files, "
            "or convert with transformers' `save_pretrained(dir, safe_serialization=True)`)") if found else ""
    raise HFConversionError(f"{hf_dir} has no {SINGLE_FILE} or {INDEX_FILE}{hint}")


def read_tensors(hf_dir: Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint as numpy arrays (bfloat16 as ml_dtypes.bfloat16)."""
    from safetensors import safe_open

    tensors: dict[str, np.ndarray] = {}
    for path in weight_files(hf_dir):
        try:
            with safe_open(str(path), framework="np") as f:
                for name in f.keys():
                    tensors[name] = _get_tensor(f, path, name)
        except (OSError, ValueError, RuntimeError) as e:
            raise HFConversionError(f"{path}: cannot read as safetensors ({' '.join(str(e).split())[:200]})") from e
    return tensors


def _get_tensor(f, path: Path, name: str) -> np.ndarray:
    try:
        return f.get_tensor(name)
    except (TypeError, ValueError):  # bfloat16 in safetensors versions whose numpy API predates ml_dtypes
        from safetensors import safe_open

        with safe_open(str(path), framework="flax") as g:
            return np.asarray(g.get_tensor(name))


def write_tensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save_file

    # transformers refuses safetensors files without format metadata.
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------------------------
# HF names -> our parameters


class _Source:
    """The checkpoint's tensors, handed out once each so that leftovers can be reported."""

    def __init__(self, tensors: dict[str, np.ndarray], prefix: str):
        self.tensors = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in tensors.items()}

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.tensors:
            raise HFConversionError(f"the checkpoint has no tensor {name!r} (has {len(self.tensors)} others); is "
                                    "it a complete *ForCausalLM checkpoint of the architecture config.json names?")
        x = self.tensors.pop(name)
        if tuple(x.shape) != shape:
            raise HFConversionError(f"tensor {name!r} has shape {tuple(x.shape)}, but config.json implies {shape}")
        return x

    def bias(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """An optional bias: zeros when the checkpoint has none (exactly the same function)."""
        return self.take(name, shape) if name in self.tensors else np.zeros(shape, np.float32)

    def check_used(self, ignore: re.Pattern | None = None) -> None:
        left = sorted(k for k in self.tensors if ignore is None or not ignore.search(k))
        if left:
            raise HFConversionError(f"the checkpoint has {len(left)} tensor(s) this conversion does not use "
                                    f"({', '.join(left[:4])}{', ...' if len(left) > 4 else ''}); its layout is not "
                                    "the one config.json's model_type implies")


def params_from_hf(tensors: dict[str, np.ndarray], cfg: ModelConfig, arch: str) -> dict:
    """Our (per-layer) parameter tree, as numpy arrays of cfg.param_dtype."""
    src = _Source(tensors, "transformer." if arch == "gpt2" else "model.")
    e, v = cfg.d_model, cfg.vocab_size
    if arch == "phi3":
        _unfuse(src, cfg)
    params = _gpt2_params(src, cfg) if arch == "gpt2" else _llama_params(src, cfg)
    if cfg.tie_embeddings:
        src.tensors.pop("lm_head.weight", None)  # a saved copy of the tied embedding
    else:
        params["unembed"] = {"kernel": src.take("lm_head.weight", (v, e)).T}
    src.check_used(_GPT2_BUFFERS if arch == "gpt2" else None)
    dtype = jax.numpy.dtype(cfg.param_dtype)
    return jax.tree_util.tree_map(lambda x: np.ascontiguousarray(x, dtype=dtype), params)


def _gpt2_params(src: _Source, cfg: ModelConfig) -> dict:
    e, h, d, f = cfg.d_model, cfg.n_heads, cfg.dim_per_head, cfg.hidden_ff

    def norm(name):
        return {"scale": src.take(f"{name}.weight", (e,)), "bias": src.take(f"{name}.bias", (e,))}

    params = {"embed": {"embedding": src.take("wte.weight", (cfg.vocab_size, e))},
              "positions": {"embedding": src.take("wpe.weight", (cfg.max_len, e))}}
    for i in range(cfg.n_layers):
        pre = f"h.{i}."
        qkv_w = np.split(src.take(pre + "attn.c_attn.weight", (e, 3 * h * d)), 3, axis=1)
        qkv_b = np.split(src.take(pre + "attn.c_attn.bias", (3 * h * d,)), 3)
        attention = {name: {"kernel": w.reshape(e, h, d), "bias": b.reshape(h, d)}
                     for name, w, b in zip(("query", "key", "value"), qkv_w, qkv_b)}
        attention["out"] = {"kernel": src.take(pre + "attn.c_proj.weight", (h * d, e)).reshape(h, d, e),
                            "bias": src.take(pre + "attn.c_proj.bias", (e,))}
        ffn = {"up": {"kernel": src.take(pre + "mlp.c_fc.weight", (e, f)),
                      "bias": src.take(pre + "mlp.c_fc.bias", (f,))},
               "down": {"kernel": src.take(pre + "mlp.c_proj.weight", (f, e)),
                        "bias": src.take(pre + "mlp.c_proj.bias", (e,))}}
        params[f"layers_{i}"] = {"attention_norm": norm(pre + "ln_1"), "attention": attention,
                                 "ffn_norm": norm(pre + "ln_2"), "feed_forward": ffn}
    params["final_norm"] = norm("ln_f")
    return params


def _fused_projections(cfg: ModelConfig) -> dict[str, tuple[tuple[str, int], ...]]:
    """Phi-3's fused projections -> the Llama projections they hold (name, rows), in row order."""
    h, k, d, f = cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.hidden_ff
    return {"self_attn.qkv_proj": (("self_attn.q_proj", h * d), ("self_attn.k_proj", k * d),
                                   ("self_attn.v_proj", k * d)),
            "mlp.gate_up_proj": (("mlp.gate_proj", f), ("mlp.up_proj", f))}


def _unfuse(src: _Source, cfg: ModelConfig) -> None:
    """Split Phi-3's fused projection weights in `src` into the Llama names that `_llama_params` reads."""
    for i in range(cfg.n_layers):
        for fused, parts in _fused_projections(cfg).items():
            rows = [n for _, n in parts]
            weight = src.take(f"layers.{i}.{fused}.weight", (sum(rows), cfg.d_model))
            for (name, _), w in zip(parts, np.split(weight, np.cumsum(rows)[:-1]), strict=True):
                if f"layers.{i}.{name}.weight" in src.tensors:
                    raise HFConversionError(f"the checkpoint has both layers.{i}.{fused}.weight and "
                                            f"layers.{i}.{name}.weight; a Phi-3 checkpoint holds the fused one only")
                src.tensors[f"layers.{i}.{name}.weight"] = w


def _fuse(t: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """`t` (Llama names) with the projections Phi-3 fuses concatenated into its names: `_unfuse`'s inverse."""
    for i in range(cfg.n_layers):
        pre = f"model.layers.{i}."
        for fused, parts in _fused_projections(cfg).items():
            t[f"{pre}{fused}.weight"] = np.concatenate([t.pop(f"{pre}{name}.weight") for name, _ in parts])
    return t


def _llama_params(src: _Source, cfg: ModelConfig) -> dict:
    e, h, k, d, f = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.hidden_ff
    params = {"embed": {"embedding": src.take("embed_tokens.weight", (cfg.vocab_size, e))}}
    for i in range(cfg.n_layers):
        pre = f"layers.{i}."
        attention = {}
        for ours, theirs, heads in (("query", "q_proj", h), ("key", "k_proj", k), ("value", "v_proj", k)):
            w = src.take(f"{pre}self_attn.{theirs}.weight", (heads * d, e))
            attention[ours] = {"kernel": w.T.reshape(e, heads, d)}
            if cfg.use_bias:
                attention[ours]["bias"] = src.bias(f"{pre}self_attn.{theirs}.bias", (heads * d,)).reshape(heads, d)
        attention["out"] = {"kernel": src.take(pre + "self_attn.o_proj.weight", (e, h * d)).T.reshape(h, d, e)}
        if cfg.use_bias:
            attention["out"]["bias"] = src.bias(pre + "self_attn.o_proj.bias", (e,))
        if cfg.qk_norm:
            attention["query_norm"] = {"scale": src.take(pre + "self_attn.q_norm.weight", (d,))}
            attention["key_norm"] = {"scale": src.take(pre + "self_attn.k_norm.weight", (d,))}
        ffn = {}
        for name, shape in (("gate", (f, e)), ("up", (f, e)), ("down", (e, f))):
            ffn[name] = {"kernel": src.take(f"{pre}mlp.{name}_proj.weight", shape).T}
            if cfg.use_bias:
                ffn[name]["bias"] = src.bias(f"{pre}mlp.{name}_proj.bias", shape[:1])
        params[f"layers_{i}"] = {
            "attention_norm": {"scale": src.take(pre + "input_layernorm.weight", (e,))}, "attention": attention,
            "ffn_norm": {"scale": src.take(pre + "post_attention_layernorm.weight", (e,))}, "feed_forward": ffn}
    params["final_norm"] = {"scale": src.take("norm.weight", (e,))}
    return params


# ------------------------------------------------------------------------------------------------------------
# our parameters -> HF names


def hf_tensors(params: dict, cfg: ModelConfig, arch: str) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    """(HF tensors by name, the Llama-family bias flags for config.json) of a parameter tree."""
    params = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), unstack_layers(dict(params)))
    if arch == "gpt2":
        tensors, flags = _gpt2_tensors(params, cfg), {}
    else:
        tensors, flags = _llama_tensors(params, cfg, arch)
    if arch == "phi3":
        tensors = _fuse(tensors, cfg)
    if not cfg.tie_embeddings:
        tensors["lm_head.weight"] = params["unembed"]["kernel"].T
    return tensors, flags


def _gpt2_tensors(p: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    e, hd = cfg.d_model, cfg.n_heads * cfg.dim_per_head
    t = {"transformer.wte.weight": p["embed"]["embedding"], "transformer.wpe.weight": p["positions"]["embedding"]}

    def norm(name, q):
        t[f"transformer.{name}.weight"], t[f"transformer.{name}.bias"] = q["scale"], q["bias"]

    for i in range(cfg.n_layers):
        layer, pre = p[f"layers_{i}"], f"transformer.h.{i}."
        a, ffn = layer["attention"], layer["feed_forward"]
        norm(f"h.{i}.ln_1", layer["attention_norm"])
        qkv = ("query", "key", "value")
        t[pre + "attn.c_attn.weight"] = np.concatenate([a[n]["kernel"].reshape(e, hd) for n in qkv], axis=1)
        t[pre + "attn.c_attn.bias"] = np.concatenate([a[n]["bias"].reshape(hd) for n in qkv])
        t[pre + "attn.c_proj.weight"] = a["out"]["kernel"].reshape(hd, e)
        t[pre + "attn.c_proj.bias"] = a["out"]["bias"]
        norm(f"h.{i}.ln_2", layer["ffn_norm"])
        t[pre + "mlp.c_fc.weight"], t[pre + "mlp.c_fc.bias"] = ffn["up"]["kernel"], ffn["up"]["bias"]
        t[pre + "mlp.c_proj.weight"], t[pre + "mlp.c_proj.bias"] = ffn["down"]["kernel"], ffn["down"]["bias"]
    norm("ln_f", p["final_norm"])
    return t


def _bias_plan(p: dict, cfg: ModelConfig, arch: str) -> tuple[dict[str, bool], dict[str, bool]]:
    """Which bias groups ('qkv', 'o', 'mlp') to write, and the config.json flags: with model.use_bias, every group
    the architecture can hold (so an import gives the same params back); a group it cannot hold must be all zeros
    (then leaving it out is the same function)."""
    layers = [p[f"layers_{i}"] for i in range(cfg.n_layers)]
    parts = {"qkv": [("attention", n) for n in ("query", "key", "value")], "o": [("attention", "out")],
             "mlp": [("feed_forward", n) for n in ("gate", "up", "down")]}
    write, flags = {}, {}
    for group, rule in BIAS_GROUPS[arch].items():
        if rule == "never" and cfg.use_bias and any(np.any(layer[a][n]["bias"] != 0) for layer in layers
                                                    for a, n in parts[group]):
            raise HFConversionError(f"the model has nonzero {group} biases, which {arch} cannot hold; export with "
                                    "arch='llama' (attention_bias / mlp_bias)")
        write[group] = rule == "always" or (rule != "never" and cfg.use_bias)
        if rule not in ("never", "always"):
            flags[rule] = cfg.use_bias
    return write, flags


def _llama_tensors(p: dict, cfg: ModelConfig, arch: str) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    e, h, k, d = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
    write, flags = _bias_plan(p, cfg, arch)
    t = {"model.embed_tokens.weight": p["embed"]["embedding"]}

    def bias(q, shape):
        return q["bias"].reshape(shape) if cfg.use_bias else np.zeros(shape, q["kernel"].dtype)

    for i in range(cfg.n_layers):
        layer, pre = p[f"layers_{i}"], f"model.layers.{i}."
        a, ffn = layer["attention"], layer["feed_forward"]
        t[pre + "input_layernorm.weight"] = layer["attention_norm"]["scale"]
        for ours, theirs, heads in (("query", "q_proj", h), ("key", "k_proj", k), ("value", "v_proj", k)):
            t[f"{pre}self_attn.{theirs}.weight"] = a[ours]["kernel"].reshape(e, heads * d).T
            if write["qkv"]:
                t[f"{pre}self_attn.{theirs}.bias"] = bias(a[ours], (heads * d,))
        t[pre + "self_attn.o_proj.weight"] = a["out"]["kernel"].reshape(h * d, e).T
        if write["o"]:
            t[pre + "self_attn.o_proj.bias"] = bias(a["out"], (e,))
        if cfg.qk_norm:
            t[pre + "self_attn.q_norm.weight"] = a["query_norm"]["scale"]
            t[pre + "self_attn.k_norm.weight"] = a["key_norm"]["scale"]
        t[pre + "post_attention_layernorm.weight"] = layer["ffn_norm"]["scale"]
        for name in ("gate", "up", "down"):
            t[f"{pre}mlp.{name}_proj.weight"] = ffn[name]["kernel"].T
            if write["mlp"]:
                t[f"{pre}mlp.{name}_proj.bias"] = bias(ffn[name], (ffn[name]["kernel"].shape[1],))
    t["model.norm.weight"] = p["final_norm"]["scale"]
    return t, flags
