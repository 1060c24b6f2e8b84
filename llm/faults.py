"""Fault injection for tests of the training job's recovery paths (never set in real runs).

The training job reads these from `train(..., faults=Faults(...))`, and the `llm` command from the environment
variable LLM_FAULTS, e.g. `LLM_FAULTS="nan_steps=5,6;kill_in_save=8"`:

    nan_steps=5,6,7     the gradients of these steps (the step counter before the update) become NaN
    spike_steps=9       the reported loss of these steps is multiplied by 1000 (a loss spike)
    passes=1            how many times those steps fault (1: a transient fault, gone after a rollback)
    kill_after_step=4   SIGKILL the process once this many steps are done and earlier saves are committed
    kill_in_save=8      SIGKILL the process while the checkpoint of this step is being written
    sleep_ms=20         sleep this long after every step (slow steps, so a test can signal a run mid-way)
    start_delay_ms=900  sleep this long before looking at the workdir (a process of a multi-process run that
                        starts late, after another may have begun writing the run)
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

ENV_VAR = "LLM_FAULTS"


@dataclasses.dataclass(frozen=True)
class Faults:
    nan_steps: tuple[int, ...] = ()
    spike_steps: tuple[int, ...] = ()
    passes: int = 1
    kill_after_step: int | None = None
    kill_in_save: int | None = None
    sleep_ms: int = 0
    start_delay_ms: int = 0

    @property
    def active(self) -> bool:
        return self != Faults()

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """`key=value;key=value` (values: an int or comma-separated ints)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for item in filter(None, (s.strip() for s in spec.split(";"))):
            key, _, value = item.partition("=")
            if key not in fields:
                raise ValueError(f"{ENV_VAR}: unknown fault {key!r}; known: {', '.join(fields)}")
            ints = tuple(int(v) for v in value.split(",") if v.strip())
            kwargs[key] = ints if key.endswith("_steps") else ints[0]
        return cls(**kwargs)

    @classmethod
    def from_env(cls) -> Faults:
        return cls.parse(os.environ.get(ENV_VAR, ""))


def kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_when_save_starts(checkpoint_dir: Path, step: int) -> threading.Thread:
    """A watcher that SIGKILLs this process as soon as the temporary directory of `step`'s save appears, so the
    process dies with the save half written (Orbax renames the directory only when everything is written)."""

    def watch():
        while True:
            if checkpoint_dir.is_dir() and any(p.name.startswith(f"{step}.orbax-checkpoint-tmp")
                                               for p in checkpoint_dir.iterdir()):
                kill_now()
            time.sleep(0.0002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


NO_FAULTS = Faults()
