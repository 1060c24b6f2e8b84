"""Running a sweep: each run a normal `llm train` subprocess in SWEEP/<name>/ (its overrides passed as
--config.a.b=value flags), `parallel` at a time. Finished runs are skipped, interrupted ones resumed; a failing run
is recorded in SWEEP/sweep.json (with the tail of its log, SWEEP/logs/<name>.log) and does not stop the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm.config import resolve
from llm.config.experiments import apply_overrides, call, describe, load_experiment, load_module
from llm.errors import ConfigError, DataError, ExitCode, one_line
from llm.files import write_text
from llm.runs import CHECKPOINT_DIR, METRICS_FILE, read_metrics
from llm.runtime.signals import handling
from llm.sweep.spec import LOG_DIR, NAME_KEY, SWEEP_FILE, override_flags, run_names

STDERR_TAIL_LINES = 20
REPO = Path(__file__).resolve().parents[2]  # put on the runs' PYTHONPATH, so they import this checkout


@dataclasses.dataclass
class Run:
    index: int
    name: str
    overrides: dict[str, Any]
    config: Any = None  # the ConfigDict with the overrides applied; None when they do not apply
    error: str | None = None  # why the overrides do not apply


def load_sweep(spec: str) -> tuple[Any, list[Run]]:
    """`FILE[:arg]` -> (the experiment's config, its runs). ConfigError for a file without get_sweep()."""
    module, path, arg = load_module(spec)  # the file runs once, for get_config and get_sweep
    base = load_experiment(spec, module)
    if not callable(getattr(module, "get_sweep", None)):
        raise ConfigError(f"{path}: has no get_sweep(); a sweep's experiment file defines get_sweep(arg=None) "
                          "returning a list of override dicts, e.g. llm.sweep.product(**{'seed': [0, 1]})")
    overrides = call(module, "get_sweep", arg, spec)
    if not isinstance(overrides, list | tuple) or not all(isinstance(o, dict) for o in overrides):
        raise ConfigError(f"{spec}: get_sweep() must return a list of override dicts, got {type(overrides).__name__}")
    if not overrides:
        raise ConfigError(f"{spec}: get_sweep() returned no runs")
    # An optional NAME_KEY entry names a run itself (instead of a name made from all its overrides).
    names = run_names([{NAME_KEY: o[NAME_KEY]} if NAME_KEY in o else o for o in overrides])
    overrides = [{k: v for k, v in o.items() if k != NAME_KEY} for o in overrides]
    runs = []
    for i, (name, o) in enumerate(zip(names, overrides, strict=True)):
        run = Run(i, name, dict(o))
        try:
            run.config = resolve(apply_overrides(base, o)).config  # its data spec too, before any run starts
        except (ConfigError, DataError) as e:
            run.error = one_line(e)
        runs.append(run)
    return base, runs


def finished_step(run_dir: Path) -> int | None:
    """The last step a run saved: its newest finished checkpoint (Orbax names them by step; unfinished writes carry
    a tmp marker), or else the last step in its metrics.jsonl; None for a run that has not started."""
    ckpt = run_dir / CHECKPOINT_DIR
    steps = [int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()] if ckpt.is_dir() else []
    if steps:
        return max(steps)
    rows = read_metrics(run_dir / METRICS_FILE)
    return rows[-1]["step"] if rows else None


def is_finished(step: int | None, steps: int) -> bool:
    """Whether a run whose `finished_step` is `step` has trained all its `steps`."""
    return step is not None and step >= steps


@contextlib.contextmanager
def _locked(sweep_dir: Path):
    """An exclusive lock for read-modify-write of sweep.json (Slurm array tasks write it concurrently)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep_dir / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_records(sweep_dir: Path) -> dict[str, dict]:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return {r["name"]: r for r in data.get("runs", []) if isinstance(r, dict) and "name" in r}


def write_record(sweep_dir: Path, spec: str, runs: list[Run], record: dict) -> None:
    """Merge one run's record into sweep.json (runs listed in sweep order)."""
    with _locked(sweep_dir):
        records = read_records(sweep_dir)
        records[record["name"]] = record
        order = {r.name: r.index for r in runs}
        ordered = sorted(records.values(), key=lambda r: order.get(r["name"], len(order)))
        write_text(sweep_dir / SWEEP_FILE, json.dumps({"experiment": spec, "runs": ordered}, indent=2, default=str))


def _record(run: Run, status: str, exit_code: int | None, wall_time: float | None, stderr_tail: str = "") -> dict:
    return {"name": run.name, "index": run.index, "overrides": run.overrides, "status": status,
            "exit_code": exit_code, "wall_time": None if wall_time is None else round(wall_time, 2),
            "stderr_tail": stderr_tail}


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def select(runs: list[Run], *, only: list[str] | None = None, index: int | None = None) -> list[Run]:
    if index is not None:
        if not 0 <= index < len(runs):
            raise ConfigError(f"--index {index}: the sweep has runs 0..{len(runs) - 1}")
        return [runs[index]]
    if only:
        names = {r.name for r in runs}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(f"--only {', '.join(unknown)}: no such run; runs: {', '.join(r.name for r in runs)}")
        return [r for r in runs if r.name in only]
    return runs


def dry_run(spec: str, *, only: list[str] | None = None, index: int | None = None,
            log: Callable[[str], None] = print) -> int:
    _, runs = load_sweep(spec)
    selected = select(runs, only=only, index=index)
    for run in selected:
        note = f"   (invalid: {run.error})" if run.error else ""
        log(f"{run.index:3d}  {run.name}  {describe(run.overrides)}{note}")
    log(f"{len(selected)} run(s)")
    return 0


def train_command(spec: str, run_dir: Path, overrides: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "llm.cli", "train", "--config", spec, "--workdir", str(run_dir),
            *override_flags(overrides)]


def run_sweep(spec: str, workdir: str | Path, *, parallel: int = 1, only: list[str] | None = None,
              index: int | None = None, log: Callable[[str], None] = print) -> int:
    """Run (or resume) the sweep; 0 when every selected run is done or skipped, ExitCode.PREEMPTED when stopped by
    a signal, else 1."""
    sweep_dir = Path(workdir)
    if parallel < 1:  # before anything is written
        raise ConfigError(f"--parallel must be >= 1, got {parallel}")
    _, runs = load_sweep(spec)
    selected = select(runs, only=only, index=index)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / LOG_DIR).mkdir(exist_ok=True)
    todo, failed = _triage(spec, sweep_dir, runs, selected, log)
    pool = _Pool(spec, sweep_dir, runs, parallel, log)
    failed = pool.run(todo) or failed
    if pool.stopped_by is not None:
        log(f"stopped by signal {pool.stopped_by}; run the same command to resume")
        return ExitCode.PREEMPTED
    return 1 if failed else 0


def _triage(spec: str, sweep_dir: Path, runs: list[Run], selected: list[Run], log) -> tuple[list[Run], bool]:
    """(the runs still to train, whether any failed already): runs whose overrides do not apply fail, finished
    ones are skipped; both are recorded."""
    previous = read_records(sweep_dir)
    todo, failed = [], False
    for run in selected:
        if run.error is not None:
            log(f"[{run.name}] failed: {run.error}")
            write_record(sweep_dir, spec, runs, _record(run, "failed", 2, 0.0, run.error))
            failed = True
        elif is_finished(step := finished_step(sweep_dir / run.name), run.config.train.steps):
            log(f"[{run.name}] skipped: finished (step {step})")
            wall = previous.get(run.name, {}).get("wall_time")
            write_record(sweep_dir, spec, runs, _record(run, "skipped", 0, wall))
        else:
            todo.append(run)
    return todo, failed


def run_env(parallel: int) -> dict[str, str]:
    """The environment of the runs: this one, with this checkout on PYTHONPATH; with several runs at a time, JAX
    not preallocating accelerator memory (runs sharing one GPU would each take 75% of it at start)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if parallel > 1:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


class _Pool:
    """At most `parallel` training subprocesses at a time; SIGTERM / SIGINT are passed on to them (they checkpoint
    and exit with ExitCode.PREEMPTED) and no new run starts."""

    def __init__(self, spec: str, sweep_dir: Path, runs: list[Run], parallel: int, log):
        self.spec, self.sweep_dir, self.runs, self.parallel, self.log = spec, sweep_dir, runs, parallel, log
        self.running: dict[int, tuple[Run, subprocess.Popen, float, Path]] = {}
        self.stopped_by: int | None = None
        self.env = run_env(parallel)

    def run(self, todo: list[Run]) -> bool:
        """Train every run of `todo` (until a signal); returns whether any failed."""
        failed = False
        with handling((signal.SIGTERM, signal.SIGINT), self._on_signal):
            queue = list(todo)
            while queue or self.running:
                while queue and len(self.running) < self.parallel and self.stopped_by is None:
                    self._start(queue.pop(0))
                if self.stopped_by is not None:
                    queue.clear()
                finished = [pid for pid, (_, proc, _, _) in self.running.items() if proc.poll() is not None]
                if not finished:
                    time.sleep(0.2)
                for pid in finished:
                    failed = self._finish(pid) or failed
        return failed

    def _on_signal(self, signum, _frame) -> None:
        self.stopped_by = signum
        for _, proc, _, _ in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def _start(self, run: Run) -> None:
        run_dir = self.sweep_dir / run.name
        log_path = self.sweep_dir / LOG_DIR / f"{run.name}.log"
        self.log(f"[{run.name}] {'resuming' if run_dir.exists() else 'starting'}: {describe(run.overrides)}")
        with log_path.open("w") as out:
            proc = subprocess.Popen(train_command(self.spec, run_dir, run.overrides), stdout=out,
                                    stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.running[proc.pid] = (run, proc, time.time(), log_path)

    def _finish(self, pid: int) -> bool:
        """Record a run whose process ended; returns whether it failed (or was preempted)."""
        run, proc, t0, log_path = self.running.pop(pid)
        code = proc.returncode
        status = "done" if code == 0 else "preempted" if code == ExitCode.PREEMPTED else "failed"
        tail = "" if code == 0 else _tail(log_path)
        self.log(f"[{run.name}] {status} (exit code {code}, {time.time() - t0:.0f} s)"
                 + ("" if code == 0 else f": {tail.splitlines()[-1] if tail else ''}"))
        write_record(self.sweep_dir, self.spec, self.runs, _record(run, status, code, time.time() - t0, tail))
        return code != 0
