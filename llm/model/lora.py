"""LoRA (Hu et al. 2021): low-rank adapters beside a projection's kernel, and folding them back into it.

A projection whose parameter path (e.g. 'layers_0/attention/query') matches one of the comma-separated regular
expressions in `model.lora_targets` gets lora_a [*in, rank] (small random) and lora_b [rank, *out] (zeros), and
computes y = x W + (alpha / rank) * drop(x) A B: with B at zero the adapted model starts as the base model. The
adapters are parameters of the projection itself (no submodule), so their paths are '.../query/lora_a'.
`merge_lora` folds every pair into its kernel, giving a plain model with the same function (for export, or to
fine-tune from).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm.model.config import ModelConfig
from llm.model.dropout import Dropout
from llm.model.matmuls import matmul_2d


def lora_applies(cfg: ModelConfig, path: str) -> bool:
    """Whether a projection at `path` ('layers_0/attention/query') gets LoRA adapters under `cfg`."""
    return cfg.lora_rank > 0 and any(re.search(p, path) for p in cfg.lora_targets.split(",") if p)


def lora_delta(module: nn.Module, x, cfg: ModelConfig, in_names: Sequence[str], out_names: Sequence[str],
               out_shape: Sequence[int], *, dtype, param_dtype, deterministic: bool):
    """(alpha / rank) * drop(x) A B for `module` (a projection contracting x's last len(in_names) axes), creating
    lora_a and lora_b as its parameters; call it from the module's compact __call__."""
    n_in = len(in_names)
    in_shape = x.shape[x.ndim - n_in:]
    a_init = nn.initializers.normal(1 / math.prod(in_shape) ** 0.5)
    a = module.param("lora_a", nn.with_logical_partitioning(a_init, (*in_names, None)),
                     (*in_shape, cfg.lora_rank), param_dtype)
    b = module.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, (None, *out_names)),
                     (cfg.lora_rank, *out_shape), param_dtype)
    x_drop = Dropout(cfg.lora_dropout, deterministic=deterministic, mask=cfg.dropout_mask)(x)
    low_rank = matmul_2d(matmul_2d(x_drop, a, n_in, dtype=dtype), b, 1, dtype=dtype)
    return (cfg.lora_alpha / cfg.lora_rank) * low_rank


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
                delta = jax.vmap(lambda a, b: _product(a, b, a.ndim - 1))(a, b)
            else:
                delta = _product(a, b, a.ndim - 1)
            out["kernel"] = (kernel + scale * delta).astype(kernel.dtype)
        return out

    return fold(params, False), dataclasses.replace(cfg, lora_rank=0)


def _product(a, b, n_in):
    """A [*in, r] B [r, *out] -> [*in, *out], in float32."""
    in_shape, out_shape = a.shape[:n_in], b.shape[1:]
    prod = jnp.asarray(a, jnp.float32).reshape(-1, a.shape[-1]) @ jnp.asarray(b, jnp.float32).reshape(b.shape[0], -1)
    return prod.reshape(*in_shape, *out_shape)
