"""Watching the training loss for numerical faults: runs of non-finite steps and loss spikes.

The compiled step already refuses non-finite updates (it keeps the old parameters and counts the step as
skipped); this host-side monitor sees each step's loss and skip flag and says when a run of faults calls for a
rollback to the last good checkpoint.
"""

from __future__ import annotations

import collections
import math


class LossMonitor:
    """Counts consecutive skipped (non-finite) steps and flags a loss above `spike_factor` x the mean of the
    last `window` good losses (after at least `window // 2` of them; spike_factor 0 turns this off)."""

    def __init__(self, max_bad_steps: int, spike_factor: float, window: int):
        self.max_bad_steps = max_bad_steps
        self.spike_factor = spike_factor
        self.window = window
        self.reset()

    def reset(self) -> None:
        self.consecutive_bad = 0
        self.recent: collections.deque[float] = collections.deque(maxlen=self.window)

    def rolled_back(self) -> None:
        """After a rollback the run of bad steps is over; the recent good losses still tell what is normal."""
        self.consecutive_bad = 0

    def observe(self, step: int, loss: float, skipped: bool) -> str | None:
        """Record one step; returns why the run should roll back, or None."""
        if skipped or not math.isfinite(loss):
            self.consecutive_bad += 1
            if self.consecutive_bad >= self.max_bad_steps:
                return f"{self.consecutive_bad} consecutive steps with non-finite loss or gradients (to step {step})"
            return None
        self.consecutive_bad = 0
        if self.spike_factor and len(self.recent) >= max(self.window // 2, 1):
            mean = sum(self.recent) / len(self.recent)
            if loss > self.spike_factor * mean:
                return (f"loss spike at step {step}: {loss:.4g} > {self.spike_factor:g} x the recent mean "
                        f"{mean:.4g}")
        self.recent.append(loss)
        return None
