"""Stopping a run cleanly: SIGTERM (a scheduler's preemption notice) and SIGINT (Ctrl-C) become a request that
the training loop honours between steps, by saving a checkpoint and exiting with ExitCode.PREEMPTED.

A second Ctrl-C interrupts at once (the last committed checkpoint is still there). In multi-process runs SIGTERM
is left to JAX's preemption service, which makes every process agree on the step to stop at
(`multihost_utils.reached_preemption_sync_point`, called through Orbax's `reached_preemption`).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable

from llm.errors import ExitCode
from llm.runtime.signals import handling


class StopSignals:
    """A context manager that turns SIGTERM / SIGINT into `requested` (the signal's name)."""

    def __init__(self, log: Callable[[str], None] = print, *, sigterm: bool = True):
        self.log = log
        self.requested: str | None = None
        self._signals = [signal.SIGINT] + ([signal.SIGTERM] if sigterm else [])
        self._installed = contextlib.ExitStack()

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = name
        self.log(f"received {name}: finishing this step, saving a checkpoint and stopping "
                 f"(exit code {int(ExitCode.PREEMPTED)}; run the same command again to resume)"
                 + ("; press Ctrl-C again to quit at once" if signum == signal.SIGINT else ""))

    def __enter__(self) -> StopSignals:
        self._installed.enter_context(handling(self._signals, self._handle))
        return self

    def __exit__(self, *exc) -> None:
        self._installed.close()
