"""The training loop's test seam: named points where a `TrainHooks` object is called. Production runs use the
no-op base class; the tests pass subclasses that inject faults (NaN steps, loss spikes, kills mid-save, slow
steps) to exercise the recovery paths (tests/faults.py). Nothing here reads the environment.

Clean steps never go through a hook's changes: a hook that alters a batch gets its own compiled program, so the
program every clean step runs is the one a run without hooks runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class TrainHooks:
    """Called by the training job at these points (all no-ops here)."""

    def before_workdir_check(self) -> None:
        """Before the job looks at the workdir (a late-starting process of a multi-process run)."""

    def batch(self, step: int, batch: dict[str, Any]) -> dict[str, Any]:
        """The host batch of `step` (the step counter before the update), possibly changed."""
        return batch

    def loss(self, step: int, loss: float) -> float:
        """The loss of `step` as the numerical-fault monitor sees it."""
        return loss

    def after_step(self, done: int, wait_for_saves: Callable[[], None]) -> None:
        """After `done` steps (`wait_for_saves` blocks until pending checkpoint writes are committed)."""

    def before_save(self, step: int, directory: Path) -> None:
        """Just before the checkpoint of `step` starts to be written into `directory`."""

    def after_rollback(self) -> None:
        """After the run rolled back to a good checkpoint."""


NO_HOOKS = TrainHooks()
