"""The default experiment: a 0.8M-parameter character model on the Python documentation (no files needed).

    llm train --config experiments/default.py --workdir runs/default
"""

import llm.config


def get_config(arg=None):
    return llm.config.get_config(arg)  # no presets: an argument is an error
