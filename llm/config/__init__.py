"""Experiment configs: every option defined once (options.py), the base config built from them (base.py), its
validation (validation.py), experiment files, overrides and saved configs (experiments.py), and the run an
experiment resolves to (resolved.py), which every job reads.

    from llm.config import get_base_config
    config = get_base_config()                  # the default experiment: every key an experiment may set
    config.model.n_layers = 8
    validate_config(config)                     # ConfigError (one line) for anything wrong
"""

from llm.config.base import get_base_config, get_config
from llm.config.experiments import DEFAULT_EXPERIMENT, apply_overrides, load_experiment
from llm.config.options import OPTIONS, Option
from llm.config.resolved import MeshSpec, ResolvedRun, resolve
from llm.config.validation import model_config, validate_config

__all__ = ["DEFAULT_EXPERIMENT", "OPTIONS", "MeshSpec", "Option", "ResolvedRun", "apply_overrides", "get_base_config",
           "get_config", "load_experiment", "model_config", "resolve", "validate_config"]
