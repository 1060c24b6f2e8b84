"""`import_hf` and `export_hf`: a Hugging Face model directory <-> (ModelConfig, params, tokenizer)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm.dtypes import parse_dtype
from llm.files import write_json
from llm.hf.configs import HFConversionError, check_exportable, hf_config, model_config_from_hf
from llm.hf.weights import SINGLE_FILE, hf_tensors, params_from_hf, read_tensors, write_tensors
from llm.model import ModelConfig, Transformer
from llm.model.lora import merge_lora
from llm.model.params import stack_layers, unstack_layers
from llm.tokenizers import BPETokenizer, Tokenizer, from_hf_file

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def read_hf_config(hf_dir: str | os.PathLike) -> dict[str, Any]:
    """An HF model directory's config.json as a dict."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise HFConversionError(f"{hf_dir} is not a directory; pass the folder of a Hugging Face model "
                                "(config.json, model.safetensors, tokenizer.json)")
    path = hf_dir / CONFIG_FILE
    try:
        hf = json.loads(path.read_text())
    except OSError as e:
        raise HFConversionError(f"{path}: cannot read ({e.strerror}); is {hf_dir} a Hugging Face model folder?"
                                ) from None
    except ValueError as e:
        raise HFConversionError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise HFConversionError(f"{path} must hold a JSON object")
    return hf


def import_hf(hf_dir: str | os.PathLike, *, dtype: str = "float32",
              **overrides: Any) -> tuple[ModelConfig, dict, BPETokenizer | None]:
    """Read a Hugging Face GPT-2 / Llama / Mistral / Qwen2 / Qwen3 / Phi-3 causal-LM folder.

    Returns (ModelConfig, params, tokenizer): params is our parameter tree of numpy arrays (use it as
    `Transformer(cfg).apply({"params": params}, tokens)`), tokenizer the folder's tokenizer.json wrapped as a
    BPETokenizer (None when the folder has none). dtype: the parameter and compute dtype ('float32',
    'bfloat16', 'float16'); overrides: ModelConfig fields that do not change the weights (configs.OVERRIDABLE),
    e.g. max_len=2048 to shorten a long context (and the KV cache of sampling). Torch is not needed.
    Anything the model cannot reproduce exactly raises HFConversionError (a ValueError) naming the field.
    """
    hf_dir = Path(hf_dir)
    hf = read_hf_config(hf_dir)
    overrides.setdefault("dtype", dtype)
    overrides.setdefault("param_dtype", dtype)
    arch, cfg = model_config_from_hf(hf, **overrides)
    params = params_from_hf(read_tensors(hf_dir), cfg, arch)
    if cfg.scan_layers:
        params = jax.tree_util.tree_map(np.asarray, stack_layers(params))
    return cfg, params, load_hf_tokenizer(hf_dir, hf)


def load_hf_tokenizer(hf_dir: Path, hf: dict | None = None) -> BPETokenizer | None:
    """The folder's tokenizer.json (None if absent), its end-of-text token taken from tokenizer_config.json's
    eos_token, else config.json's eos_token_id, else the usual spellings (see `llm.tokenizers.from_hf_file`)."""
    path = hf_dir / TOKENIZER_FILE
    if not path.exists():
        return None
    tok = from_hf_file(path)
    eos = None
    try:
        eos = json.loads((hf_dir / TOKENIZER_CONFIG_FILE).read_text()).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
    except (OSError, ValueError, AttributeError):
        pass
    if not isinstance(eos, str) or tok.hf.token_to_id(eos) is None:
        eos_id = (hf or {}).get("eos_token_id")
        eos_id = eos_id[0] if isinstance(eos_id, list) and eos_id else eos_id
        eos = tok.hf.id_to_token(eos_id) if isinstance(eos_id, int) else None
    if eos is None or eos == tok.eos_token:
        return tok
    return BPETokenizer(tok.hf, eos_token=eos)


def export_hf(model_cfg: ModelConfig, params: Any, out_dir: str | os.PathLike, tokenizer: Tokenizer | None = None,
              arch: str = "gpt2", *, dtype: str | None = None, bos_id: int | None = None, eos_id: int | None = None,
              overwrite: bool = False) -> Path:
    """Write `params` as a Hugging Face `arch` checkpoint that transformers' `from_pretrained` loads.

    arch: 'gpt2' (learned positions, LayerNorm, GELU MLP, biases) or a Llama-family one (RoPE, RMSNorm, SwiGLU):
    'llama' (biases via attention_bias / mlp_bias), 'mistral' (sliding window), 'qwen2', 'qwen3' (QK-norm),
    'phi3' (fused projections; sliding window, partial rotary, plain RoPE or longrope).
    Writes config.json, model.safetensors (in `dtype`, default the params' own) and, for a BPE tokenizer,
    tokenizer.json + tokenizer_config.json. LoRA adapters (model.lora_rank > 0) are folded into the kernels
    first (llm.model.lora.merge_lora). eos_id defaults to the tokenizer's, bos_id (GPT-2 only) to eos_id.
    A model the architecture cannot express raises HFConversionError naming the field. Returns out_dir.
    """
    if model_cfg.lora_rank:  # adapters have no HF form: fold them into the kernels
        params, model_cfg = merge_lora(params, model_cfg)
    check_exportable(model_cfg, arch)
    if tokenizer is not None and not isinstance(tokenizer, BPETokenizer):
        raise HFConversionError(f"a {tokenizer.kind} tokenizer has no Hugging Face tokenizer.json form; only BPE "
                                "tokenizers are exported (pass tokenizer=None to write the model alone)")
    _check_params(model_cfg, params)
    out = Path(out_dir)
    taken = [name for name in (CONFIG_FILE, SINGLE_FILE, TOKENIZER_FILE) if (out / name).exists()]
    if taken and not overwrite:
        raise HFConversionError(f"{out} already holds {', '.join(taken)}; choose another folder or pass "
                                "overwrite=True")
    tensors, bias_flags = hf_tensors(params, model_cfg, arch)
    dtype = parse_dtype(dtype or tensors[next(iter(tensors))].dtype, "dtype", HFConversionError).name
    tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    if eos_id is None and tokenizer is not None:
        eos_id = tokenizer.eos_id
    if bos_id is None and arch == "gpt2":
        bos_id = eos_id
    config = hf_config(model_cfg, arch, biases=bias_flags, dtype=dtype, bos_id=bos_id, eos_id=eos_id)
    out.mkdir(parents=True, exist_ok=True)
    write_tensors(tensors, out / SINGLE_FILE)
    write_json(out / CONFIG_FILE, config, indent=2, sort_keys=True)
    if tokenizer is not None:
        tokenizer.hf.save(str(out / TOKENIZER_FILE))
        tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_cfg.max_len,
                      "clean_up_tokenization_spaces": False}
        for key, token_id in (("eos_token", eos_id), ("bos_token", bos_id)):
            if token_id is not None and tokenizer.hf.id_to_token(token_id) is not None:
                tok_config[key] = tokenizer.hf.id_to_token(token_id)
        write_json(out / TOKENIZER_CONFIG_FILE, tok_config, indent=2)
    return out


def _check_params(cfg: ModelConfig, params: Any) -> None:
    """The params must be the tree `Transformer(cfg)` makes (names and shapes), per-layer or scanned."""
    per_layer = dataclasses.replace(cfg, scan_layers=False)
    abstract = jax.eval_shape(lambda: nn.unbox(Transformer(per_layer).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]))

    def shapes(tree):
        return {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}

    want, have = shapes(abstract), shapes(unstack_layers(dict(params)))
    bad = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if bad:
        k = bad[0]
        raise HFConversionError(f"the params do not fit the model config ({len(bad)} difference(s), first {k}: "
                                f"shape {have.get(k, 'missing')} in the params, {want.get(k, 'none')} by the config)")
