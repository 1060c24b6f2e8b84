"""Transformer language-model modules (Flax linen). The names below import on first use (llm/lazy.py): the
model's config (`llm.model.config`) loads without Flax."""

from llm.lazy import exports

_NAMES = {"ModelConfig": "llm.model.config", "Block": "llm.model.transformer",
          "Transformer": "llm.model.transformer",
          **dict.fromkeys(("count_params", "param_count_formula", "stack_layers", "unstack_layers"),
                          "llm.model.params")}
__all__ = sorted(_NAMES)
__getattr__ = exports(__name__, _NAMES)
