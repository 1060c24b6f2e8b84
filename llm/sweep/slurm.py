"""A sweep as a SLURM job array: task i runs run i (`llm sweep --index i`) and requeues itself when preempted."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from llm.errors import ExitCode
from llm.files import write_text
from llm.sweep.runner import REPO, load_sweep
from llm.sweep.spec import LOG_DIR, SLURM_FILE


def emit_slurm(spec: str, workdir: str | Path, *, log: Callable[[str], None] = print) -> Path:
    """Write WORKDIR/sweep.slurm: a job array whose task i runs run i of the sweep (`llm sweep --index i`)."""
    _, runs = load_sweep(spec)
    sweep_dir = Path(workdir).absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / LOG_DIR).mkdir(exist_ok=True)
    path, _, arg = spec.partition(":")
    abs_spec = str(Path(path).absolute()) + (f":{arg}" if arg else "")
    repo = REPO
    command = [sys.executable, "-m", "llm.cli", "sweep", abs_spec, "--workdir", str(sweep_dir),
               "--index", "${SLURM_ARRAY_TASK_ID:?set SLURM_ARRAY_TASK_ID to the run index}"]
    quoted = " ".join(shlex.quote(c) for c in command[:-1]) + f' "{command[-1]}"'
    names = "\n".join(f"#   {r.index}: {r.name}" for r in runs)
    script = f"""#!/bin/bash
# llm sweep {abs_spec}: {len(runs)} run(s), task i runs run i in {sweep_dir}/<name>/
{names}
#SBATCH --job-name=llm-sweep
#SBATCH --array=0-{len(runs) - 1}
#SBATCH --output={sweep_dir}/{LOG_DIR}/slurm-%A_%a.out
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
# SIGTERM (120 s before the time limit, or on preemption) reaches this script (B:), which passes it on; the run
# checkpoints and exits 75, and the task is requeued to resume where it stopped.
set -u
export PYTHONPATH={shlex.quote(str(repo))}${{PYTHONPATH:+:$PYTHONPATH}}
cd {shlex.quote(str(Path.cwd()))}
{quoted} &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
wait "$child"
rc=$?
if [ "$rc" -gt 128 ]; then wait "$child"; rc=$?; fi  # the trap interrupted the wait: wait for the run's exit
if [ "$rc" -eq {int(ExitCode.PREEMPTED)} ] && command -v scontrol >/dev/null 2>&1 && [ -n "${{SLURM_JOB_ID:-}}" ]; then
  scontrol requeue "${{SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
fi
exit "$rc"
"""
    out = sweep_dir / SLURM_FILE
    write_text(out, script)
    out.chmod(0o755)
    log(f"wrote {out} ({len(runs)} array tasks); submit with: sbatch {out}")
    return out
