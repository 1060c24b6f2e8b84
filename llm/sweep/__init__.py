"""Sweeps: many `llm train` runs of one experiment file, each with a few config overrides, and their report.

    from llm import sweep

    def get_sweep(arg=None):                   # in an experiment file, beside get_config
        return sweep.product(**{"model.position": ["rope", "alibi"], "seed": [0, 1, 2]})

    llm sweep experiments/X.py[:arg] --workdir runs/SWEEP [--parallel N] [--dry-run] [--only NAME] [--index I]
    llm sweep experiments/X.py[:arg] --workdir runs/SWEEP --emit slurm     # writes runs/SWEEP/sweep.slurm
    llm report runs/SWEEP

spec.py: the runs as data (product / zip_ / chain) and their names; runner.py: running them as subprocesses,
resumably, with sweep.json; slurm.py: a job array; report.py: the table and plots. Importing this package loads
no JAX: experiment files import it for the builders.
"""

from llm.sweep.spec import NAME_KEY, chain, product, run_name, run_names, zip_

__all__ = ["NAME_KEY", "chain", "product", "run_name", "run_names", "zip_"]
