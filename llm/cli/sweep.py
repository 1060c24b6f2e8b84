"""`llm sweep experiments/X.py[:arg] --workdir DIR [--parallel N] [--dry-run] [--emit slurm] [--only NAME]
[--index I]`: run the runs of an experiment file's get_sweep() (llm/sweep/)."""

from __future__ import annotations

from llm.cli.parsing import Parser


def main(argv: list[str]) -> int:
    p = Parser(prog="llm sweep", description="Run the runs of an experiment file's get_sweep() (see llm/sweep/); "
                                             "exit code 0 when all succeeded, 1 otherwise.")
    p.add_argument("experiment", help="experiments/X.py[:arg], defining get_config and get_sweep")
    p.add_argument("--workdir", required=True, help="the sweep's directory; run NAME goes to WORKDIR/NAME/")
    p.add_argument("--parallel", type=int, default=1,
                   help="runs at once, each an `llm train` subprocess (sharing a GPU: no memory preallocation)")
    p.add_argument("--dry-run", "--dry_run", action="store_true", help="list the runs (name, overrides); run nothing")
    p.add_argument("--emit", choices=("slurm",), help="write WORKDIR/sweep.slurm, a job array (task i runs run i)")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this run (repeatable)")
    p.add_argument("--index", type=int, help="run only run number INDEX (0-based; for job arrays)")
    a = p.parse(argv)
    if a is None:
        return 0
    from llm.sweep.runner import dry_run, run_sweep
    from llm.sweep.slurm import emit_slurm

    if a.dry_run:
        return dry_run(a.experiment, only=a.only, index=a.index)
    if a.emit == "slurm":
        emit_slurm(a.experiment, a.workdir)
        return 0
    return run_sweep(a.experiment, a.workdir, parallel=a.parallel, only=a.only, index=a.index)
