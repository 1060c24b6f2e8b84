"""Sweeps: many `llm train` runs of one experiment file, each with a few config overrides.

An experiment file defines, besides `get_config(arg=None)`, a `get_sweep(arg=None)` returning the runs as data,
a list of override dicts (big_vision style), built with the helpers here:

    from llm import sweep

    def get_sweep(arg=None):
        return sweep.product(**{"model.position": ["rope", "alibi"], "seed": [0, 1, 2]})

    llm sweep experiments/X.py[:arg] --workdir runs/SWEEP [--parallel N] [--dry-run] [--only NAME] [--index I]
    llm sweep experiments/X.py[:arg] --workdir runs/SWEEP --emit slurm     # writes runs/SWEEP/sweep.slurm

Each run is a normal `llm train` subprocess in runs/SWEEP/<name>/ (its overrides passed as --config.a.b=value
flags). Finished runs are skipped, interrupted ones resumed; a failing run is recorded in runs/SWEEP/sweep.json
and does not stop the others. Its output goes to runs/SWEEP/logs/<name>.log.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SWEEP_FILE = "sweep.json"
SLURM_FILE = "sweep.slurm"
LOG_DIR = "logs"
RESERVED_NAMES = {LOG_DIR, SWEEP_FILE, SLURM_FILE, "report.md", "report.csv", "curves.png", "variants.png"}
EXIT_PREEMPTED = 75
STDERR_TAIL_LINES = 20
MAX_NAME_CHARS = 100


# ----------------------------------------------------------------------------------------------------------
# building sweeps (data only)


def product(**axes: list) -> list[dict[str, Any]]:
    """The cartesian product of the axes, the first axis varying slowest:
    product(**{"model.position": ["rope", "alibi"], "seed": [0, 1]}) -> 4 override dicts."""
    for key, values in axes.items():
        _check_axis(key, values)
    keys = list(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(axes[k] for k in keys))]


def zip_(**axes: list) -> list[dict[str, Any]]:
    """The axes side by side (all of one length): zip_(**{"optim.lr": [1e-3, 3e-4], "train.steps": [100, 200]})."""
    for key, values in axes.items():
        _check_axis(key, values)
    lengths = {k: len(v) for k, v in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zip_: the axes differ in length ({', '.join(f'{k}: {n}' for k, n in lengths.items())})")
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in zip(*(axes[k] for k in keys), strict=True)]


def chain(*lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of several sweeps, one after the other."""
    out = []
    for runs in lists:
        if not isinstance(runs, list | tuple):
            raise ValueError(f"chain: expected lists of override dicts, got {type(runs).__name__}")
        out.extend(dict(r) for r in runs)
    return out


def _check_axis(key: str, values: Any) -> None:
    if not isinstance(values, list | tuple):
        raise ValueError(f"axis {key!r}: expected a list of values, got {type(values).__name__} {values!r}")


# ----------------------------------------------------------------------------------------------------------
# names


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


NAME_KEY = "_name"  # in an override dict: the run's name (not a config key)


def run_name(overrides: dict[str, Any]) -> str:
    """A short, stable, readable file name for a run: 'position=rope,seed=0' (each key's last component; the full
    key when two keys share it). Characters other than letters, digits and . _ - = , become '-'."""
    if not overrides:
        return "base"
    if NAME_KEY in overrides:
        return re.sub(r"[^A-Za-z0-9._=,-]+", "-", str(overrides[NAME_KEY])).strip(".-") or "run"
    last = [k.split(".")[-1] for k in overrides]
    parts = []
    for key, short in zip(overrides, last, strict=True):
        label = short if last.count(short) == 1 else key
        parts.append(f"{label}={_format_value(overrides[key])}")
    name = re.sub(r"[^A-Za-z0-9._=,-]+", "-", ",".join(parts)).strip(".-") or "run"
    if len(name) > MAX_NAME_CHARS:  # long values: keep it a valid file name, and unique by a hash of the overrides
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME_CHARS - 9]}-{digest}"
    return name


def run_names(runs: list[dict[str, Any]]) -> list[str]:
    """run_name of each run, made unique within the sweep by a suffix (-2, -3, ...) where names collide."""
    names, seen = [], set()
    for overrides in runs:
        base = run_name(overrides)
        name, i = base, 1
        while name in seen or name in RESERVED_NAMES:
            i += 1
            name = f"{base}-{i}"
        seen.add(name)
        names.append(name)
    return names


# ----------------------------------------------------------------------------------------------------------
# overrides


def apply_overrides(config, overrides: dict[str, Any]):
    """A copy of `config` with the dotted keys set ({"model.position": "rope"}); ConfigError (one line) for an
    unknown key, a value of the wrong type, or a config that does not validate (llm.config.validate_config)."""
    from ml_collections import ConfigDict

    from llm.config import validate_config
    from llm.model.config import ConfigError

    config = copy.deepcopy(config)
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"override key {key!r}: expected a dotted config key like 'model.position'")
        path = key.split(".")
        node = config
        for depth, name in enumerate(path):
            if not isinstance(node, ConfigDict) or name not in node:
                where = ".".join(path[:depth]) or "the config"
                valid = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else "none (not a section)"
                raise ConfigError(f"override {key}: unknown config key; keys in {where}: {valid}")
            if depth < len(path) - 1:
                node = node[name]
        name = path[-1]
        if isinstance(node[name], ConfigDict):
            raise ConfigError(f"override {key}: is a section, not a value; set its keys ({key}.KEY) instead")
        expected = node.get_type(name)
        if isinstance(value, bool) and expected is not bool and node[name] is not None:
            raise ConfigError(f"override {key}={value!r}: must be {expected.__name__}, got bool")
        try:
            node[name] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"override {key}={value!r}: must be {expected.__name__}, got {type(value).__name__}"
                              f" ({' '.join(str(e).split())[:200]})") from None
    try:
        validate_config(config)
    except ConfigError as e:
        raise ConfigError(f"overrides {_describe(overrides)}: {e}") from None
    return config


def _describe(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "(none)"


def flag_value(value: Any) -> str:
    """A value as ml_collections parses it from --config.a.b=VALUE."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def override_flags(overrides: dict[str, Any]) -> list[str]:
    return [f"--config.{k}={flag_value(v)}" for k, v in overrides.items()]


# ----------------------------------------------------------------------------------------------------------
# loading a sweep


@dataclasses.dataclass
class Run:
    index: int
    name: str
    overrides: dict[str, Any]
    config: Any = None  # the ConfigDict with the overrides applied; None when they do not apply
    error: str | None = None  # why the overrides do not apply


def load_sweep(spec: str) -> tuple[Any, list[Run]]:
    """`FILE[:arg]` -> (the experiment's config, its runs). UserError for a file without get_sweep()."""
    from llm.cli import UserError, _load_experiment, _load_experiment_module, _one_line, call_experiment
    from llm.model.config import ConfigError

    module, path, arg = _load_experiment_module(spec)  # the file runs once, for get_config and get_sweep
    base = _load_experiment(spec, module)
    if not callable(getattr(module, "get_sweep", None)):
        raise UserError(f"{path}: has no get_sweep(); a sweep's experiment file defines get_sweep(arg=None) returning "
                        "a list of override dicts, e.g. llm.sweep.product(**{'seed': [0, 1]})")
    overrides = call_experiment(module, "get_sweep", arg, spec)
    if not isinstance(overrides, list | tuple) or not all(isinstance(o, dict) for o in overrides):
        raise UserError(f"{spec}: get_sweep() must return a list of override dicts, got {type(overrides).__name__}")
    if not overrides:
        raise UserError(f"{spec}: get_sweep() returned no runs")
    # An optional NAME_KEY entry names a run itself (instead of a name made from all its overrides).
    names = run_names([{NAME_KEY: o[NAME_KEY]} if NAME_KEY in o else o for o in overrides])
    overrides = [{k: v for k, v in o.items() if k != NAME_KEY} for o in overrides]
    runs = []
    for i, (name, o) in enumerate(zip(names, overrides, strict=True)):
        run = Run(i, name, dict(o))
        try:
            run.config = apply_overrides(base, o)
        except ConfigError as e:
            run.error = _one_line(e)
        runs.append(run)
    return base, runs


# ----------------------------------------------------------------------------------------------------------
# state of a run's workdir


def finished_step(run_dir: Path) -> int | None:
    """The last step a run saved: its newest finished checkpoint (Orbax names them by step; unfinished writes carry
    a tmp marker), or else the last step in its metrics.jsonl; None for a run that has not started."""
    ckpt = run_dir / "checkpoints"
    steps = [int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()] if ckpt.is_dir() else []
    if steps:
        return max(steps)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    last = None
    for line in metrics.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError, TypeError, KeyError):
            last = int(json.loads(line)["step"])
    return last


def is_finished(step: int | None, steps: int) -> bool:
    """Whether a run whose `finished_step` is `step` has trained all its `steps`."""
    return step is not None and step >= steps


# ----------------------------------------------------------------------------------------------------------
# sweep.json


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
        text = json.dumps({"experiment": spec, "runs": ordered}, indent=2, default=str)
        tmp = sweep_dir / f".{SWEEP_FILE}.tmp-{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, sweep_dir / SWEEP_FILE)


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


# ----------------------------------------------------------------------------------------------------------
# running


def train_command(spec: str, run_dir: Path, overrides: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "llm.cli", "train", "--config", spec, "--workdir", str(run_dir),
            *override_flags(overrides)]


def run_sweep(spec: str, workdir: str | Path, *, parallel: int = 1, only: list[str] | None = None,
              index: int | None = None, log: Callable[[str], None] = print) -> int:
    """Run (or resume) the sweep; 0 when every selected run is done or skipped, 75 when stopped by a signal, else 1."""
    from llm.cli import UserError

    sweep_dir = Path(workdir)
    if parallel < 1:  # before anything is written
        raise UserError(f"--parallel must be >= 1, got {parallel}")
    _, runs = load_sweep(spec)
    selected = select(runs, only=only, index=index)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / LOG_DIR).mkdir(exist_ok=True)
    previous = read_records(sweep_dir)
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    failed = False
    todo: list[Run] = []
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

    running: dict[int, tuple[Run, subprocess.Popen, float, Path]] = {}
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum
        for _, proc, _, _ in running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        queue = list(todo)
        while queue or running:
            while queue and len(running) < parallel and stop["signal"] is None:
                run = queue.pop(0)
                run_dir = sweep_dir / run.name
                log_path = sweep_dir / LOG_DIR / f"{run.name}.log"
                state = "resuming" if run_dir.exists() else "starting"
                log(f"[{run.name}] {state}: {_describe(run.overrides)}")
                with log_path.open("w") as out:
                    proc = subprocess.Popen(train_command(spec, run_dir, run.overrides), stdout=out,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
                running[proc.pid] = (run, proc, time.time(), log_path)
            if stop["signal"] is not None and queue:
                queue.clear()
            finished = [pid for pid, (_, proc, _, _) in running.items() if proc.poll() is not None]
            if not finished:
                time.sleep(0.2)
                continue
            for pid in finished:
                run, proc, t0, log_path = running.pop(pid)
                code = proc.returncode
                status = "done" if code == 0 else "preempted" if code == EXIT_PREEMPTED else "failed"
                failed = failed or code != 0
                tail = "" if code == 0 else _tail(log_path)
                log(f"[{run.name}] {status} (exit code {code}, {time.time() - t0:.0f} s)"
                    + ("" if code == 0 else f": {tail.splitlines()[-1] if tail else ''}"))
                write_record(sweep_dir, spec, runs, _record(run, status, code, time.time() - t0, tail))
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if stop["signal"] is not None:
        log(f"stopped by signal {stop['signal']}; run the same command to resume")
        return EXIT_PREEMPTED
    return 1 if failed else 0


def select(runs: list[Run], *, only: list[str] | None = None, index: int | None = None) -> list[Run]:
    from llm.cli import UserError

    if index is not None:
        if not 0 <= index < len(runs):
            raise UserError(f"--index {index}: the sweep has runs 0..{len(runs) - 1}")
        return [runs[index]]
    if only:
        names = {r.name for r in runs}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise UserError(f"--only {', '.join(unknown)}: no such run; runs: {', '.join(r.name for r in runs)}")
        return [r for r in runs if r.name in only]
    return runs


def dry_run(spec: str, *, only: list[str] | None = None, index: int | None = None,
            log: Callable[[str], None] = print) -> int:
    _, runs = load_sweep(spec)
    selected = select(runs, only=only, index=index)
    for run in selected:
        note = f"   (invalid: {run.error})" if run.error else ""
        log(f"{run.index:3d}  {run.name}  {_describe(run.overrides)}{note}")
    log(f"{len(selected)} run(s)")
    return 0


def emit_slurm(spec: str, workdir: str | Path, *, log: Callable[[str], None] = print) -> Path:
    """Write WORKDIR/sweep.slurm: a job array whose task i runs run i of the sweep (`llm sweep --index i`)."""
    _, runs = load_sweep(spec)
    sweep_dir = Path(workdir).absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / LOG_DIR).mkdir(exist_ok=True)
    path, _, arg = spec.partition(":")
    abs_spec = str(Path(path).absolute()) + (f":{arg}" if arg else "")
    repo = Path(__file__).resolve().parents[1]
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
if [ "$rc" -eq {EXIT_PREEMPTED} ] && command -v scontrol >/dev/null 2>&1 && [ -n "${{SLURM_JOB_ID:-}}" ]; then
  scontrol requeue "${{SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
fi
exit "$rc"
"""
    out = sweep_dir / SLURM_FILE
    out.write_text(script)
    out.chmod(0o755)
    log(f"wrote {out} ({len(runs)} array tasks); submit with: sbatch {out}")
    return out
