"""Transformer language-model modules (Flax linen)."""

from llm.model.config import ConfigError, ModelConfig
from llm.model.params import count_params, param_count_formula, stack_layers, unstack_layers
from llm.model.transformer import Block, Transformer

__all__ = ["Block", "ConfigError", "ModelConfig", "Transformer", "count_params", "param_count_formula",
           "stack_layers", "unstack_layers"]
