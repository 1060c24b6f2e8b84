"""The default experiment: a 0.8M-parameter character model on the Python documentation (no files needed).

    llm train --config experiments/default.py --workdir runs/default
"""

from llm.config import get_base_config


def get_config(arg=None):
    del arg  # no presets
    return get_base_config()
