"""A run's workdir (layout.py): judging whether a run may start in it, locking it, and its config and manifest.

Nothing in an existing run is overwritten unless asked: a workdir holding a run with another config is refused
(`--resume_anyway` continues it with the new config, the old config kept as config.json.<time>.bak;
`--overwrite` deletes the run's files and starts again).
"""

from __future__ import annotations

import datetime
import fcntl
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from llm.config import validate_config
from llm.config.experiments import from_saved, resume_differences, to_json
from llm.errors import ConfigError
from llm.files import write_json, write_text
from llm.runs.layout import CONFIG_FILE, LOCK_FILE, MANIFEST_FILE, RUN_FILES

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml-collections", "numpy", "tokenizers",
            "safetensors")


def check_workdir(config: ConfigDict, workdir: Path, *, resume_anyway: bool = False,
                  overwrite: bool = False) -> str:
    """What starting `config` in `workdir` means: 'new', 'resume' or 'overwrite'; raises ConfigError (and
    changes nothing) when it would touch something it should not."""
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file, not a directory; choose another --workdir")
    if not workdir.exists():
        _check_creatable(workdir)
        return "new"
    if overwrite:
        return "overwrite"
    if (workdir / CONFIG_FILE).exists():
        try:
            diff = resume_differences(json.loads((workdir / CONFIG_FILE).read_text()), config)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ConfigError(f"{workdir / CONFIG_FILE} is damaged ({e}); move the run aside, or pass --overwrite "
                              "to delete it and start again") from None
        if diff and not resume_anyway:
            shown = "; ".join(diff[:6]) + ("; ..." if len(diff) > 6 else "")
            raise ConfigError(f"{workdir} holds a run with a different config ({shown}); use another --workdir "
                              "for a new run, --resume_anyway to continue this one with the new config, or "
                              "--overwrite to delete it and start again")
        return "resume"
    strangers = sorted(p.name for p in workdir.iterdir()
                       if p.name not in RUN_FILES and not p.match(f"{CONFIG_FILE}.*.bak"))
    if strangers:
        raise ConfigError(f"--workdir {workdir} is not empty and holds no run (found {', '.join(strangers[:3])}"
                          f"{', ...' if len(strangers) > 3 else ''}); choose a new or empty directory")
    return "new"


def _check_creatable(workdir: Path) -> None:
    """ConfigError unless the nearest existing ancestor of `workdir` is a directory this process may write in."""
    parent = workdir.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir} cannot be created: {parent} is not a directory this process may "
                          "write in; choose another --workdir")


def create_workdir(workdir: Path) -> None:
    """mkdir -p, as a one-line ConfigError when the system refuses (a read-only or special file system)."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--workdir {workdir} cannot be created ({e.strerror or e}); choose another --workdir"
                          ) from None


def clear_run(workdir: Path) -> None:
    """Delete the files a run wrote into `workdir` (for --overwrite); anything else there is left alone."""
    for path in [workdir / name for name in RUN_FILES] + list(workdir.glob(f"{CONFIG_FILE}.*.bak")):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class WorkdirLock:
    """An exclusive flock on workdir/.lock for the life of a training process (released by the OS on exit,
    even after SIGKILL), so two `llm train` processes never write one run."""

    def __init__(self, workdir: Path):
        self.path = workdir / LOCK_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise ConfigError(f"another `llm train` (pid {holder}) is running in {workdir}; wait for it, stop it, "
                              "or use another --workdir") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def save_config(config: ConfigDict, workdir: Path) -> None:
    """Write config.json; an existing one with other contents is kept as config.json.<time>.bak."""
    path = workdir / CONFIG_FILE
    text = to_json(config)
    if path.exists() and path.read_text() != text:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        os.replace(path, workdir / f"{CONFIG_FILE}.{stamp}.bak")
    write_text(path, text)


def load_config(workdir: str | Path) -> ConfigDict:
    """The config a run was started with, validated against today's base config; ConfigError naming the file
    when it is missing or damaged."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{path} not found: is {workdir} the workdir of a `llm train` run?")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); the run's config file is damaged") from None
    try:
        config = from_saved(saved)
        validate_config(config)
    except ConfigError as e:
        if str(path) in str(e):
            raise
        raise ConfigError(f"{path}: {e}; the run's config file is damaged or was edited, restore it") from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # valid JSON of the wrong shape or types
        raise ConfigError(f"{path} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:200]}); restore the "
                          "run's config file") from None
    return config


def write_manifest(workdir: Path, config: ConfigDict, tokenizer, data: dict[str, Any] | None = None,
                   **extra: Any) -> None:
    """manifest.json: where and with what the run was made, enough to reproduce it or explain a difference.
    `data`: the dataset's manifest entries (its corpus and token counts); `extra`: more entries."""
    manifest = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "jax_backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
        "process_count": jax.process_count(),
        "git_commit": _git_commit(),
        **(data or {}),
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                      "fingerprint": tokenizer.fingerprint()},
        "config_seed": config.seed,
        **extra,
    }
    write_json(workdir / MANIFEST_FILE, manifest, indent=2)


def read_manifest(workdir: str | Path) -> dict[str, Any] | None:
    """The run's manifest.json, or None when it is absent or unreadable."""
    try:
        manifest = json.loads((Path(workdir) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
