"""Fault injection for the tests of the training job's recovery paths: a `TrainHooks` (llm/training/hooks.py)
that poisons, spikes, slows or kills a run at chosen steps. In process: `train(config, workdir, hooks=FaultHooks(
nan_steps=(5,)))`. As a real `llm` process: `python tests/faults.py "nan_steps=5,6;kill_in_save=8" train ...`.

    nan_steps=5,6,7     the gradients of these steps (the step counter before the update) become NaN
    spike_steps=9       the loss the fault monitor sees at these steps is multiplied by 1000 (a loss spike)
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
import sys
import threading
import time
from pathlib import Path

import numpy as np

from llm.training.hooks import TrainHooks


@dataclasses.dataclass
class FaultHooks(TrainHooks):
    nan_steps: tuple[int, ...] = ()
    spike_steps: tuple[int, ...] = ()
    passes: int = 1
    kill_after_step: int | None = None
    kill_in_save: int | None = None
    sleep_ms: int = 0
    start_delay_ms: int = 0

    @classmethod
    def parse(cls, spec: str) -> FaultHooks:
        """`key=value;key=value` (values: an int or comma-separated ints)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for item in filter(None, (s.strip() for s in spec.split(";"))):
            key, _, value = item.partition("=")
            if key not in fields:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(sorted(fields))}")
            ints = tuple(int(v) for v in value.split(",") if v.strip())
            kwargs[key] = ints if key.endswith("_steps") else ints[0]
        return cls(**kwargs)

    def before_workdir_check(self) -> None:
        time.sleep(self.start_delay_ms / 1000)

    def batch(self, step, batch):
        if self.passes > 0 and step in self.nan_steps:  # NaN loss weights: a NaN loss and NaN gradients
            return {**batch, "weights": np.full(batch["targets"].shape, np.nan, np.float32)}
        return batch

    def loss(self, step, loss):
        return 1000 * float(loss) if self.passes > 0 and step in self.spike_steps else loss

    def after_step(self, done, wait_for_saves):
        if self.sleep_ms:
            time.sleep(self.sleep_ms / 1000)
        if self.kill_after_step == done:
            wait_for_saves()
            kill_now()

    def before_save(self, step, directory):
        if self.kill_in_save == step:
            kill_when_save_starts(directory, step)

    def after_rollback(self):
        if self.nan_steps or self.spike_steps:
            self.passes -= 1  # at 0: a transient fault, gone after the rollback


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


if __name__ == "__main__":  # python tests/faults.py SPEC COMMAND [FLAGS...]: `llm COMMAND ...` with these faults
    from llm.cli import main

    sys.exit(main(sys.argv[2:], train_hooks=FaultHooks.parse(sys.argv[1])))
