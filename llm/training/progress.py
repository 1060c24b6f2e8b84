"""What a training run reports as it goes: the steps' metrics averaged over each logging interval (loss, gradient
norm, learning rate, skipped updates, step time, tokens/s and MFU), a tqdm bar, and messages that do not break it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from llm.runs import MetricsLog


class StepLog:
    """Collects the compiled step's metrics (device arrays, fetched only at `flush`, so the host never waits on a
    step) and writes their means to the metrics log."""

    def __init__(self, metrics_log: MetricsLog, log: Callable[[str], None], *, tokens_per_step: int,
                 flops_per_token: float, peak_flops: float, bar: bool, start: int, total: int):
        self.metrics_log, self.log = metrics_log, log
        self.tokens_per_step, self.flops_per_token, self.peak_flops = tokens_per_step, flops_per_token, peak_flops
        self.pending: list[dict[str, Any]] = []
        self.bar = _progress_bar(start, total) if bar else None
        self.restart_clock()

    def restart_clock(self) -> None:
        """Time from now on counts as step time (evaluation, for one, does not)."""
        self.t_log = time.perf_counter()

    def add(self, metrics: dict[str, Any]) -> None:
        self.pending.append(metrics)
        if self.bar is not None:
            self.bar.update(1)

    def fetch(self) -> list[dict[str, Any]]:
        """The pending steps' metrics on the host (numpy scalars, oldest first); pending until `write`."""
        return jax.device_get(self.pending)

    def write(self, done: int, rows: list[dict[str, Any]]) -> int:
        """Log the means of `rows` (the fetched pending steps, up to step `done`) and clear them; returns how many
        of them skipped their update."""
        skipped = int(sum(r["skipped"] for r in rows))
        finite = [r for r in rows if not r["skipped"]] or rows
        host = {k: float(np.mean([r[k] for r in finite])) for k in rows[0] if k != "skipped"}
        elapsed = time.perf_counter() - self.t_log
        tokens_per_s = len(rows) * self.tokens_per_step / elapsed
        host.update(skipped_steps=skipped, step_time_ms=1000 * elapsed / len(rows), tokens_per_s=tokens_per_s,
                    mfu=tokens_per_s * self.flops_per_token / self.peak_flops)
        self.metrics_log.write(done, host)
        if skipped:
            self.say(f"step {done}: skipped {skipped} update(s) with a non-finite loss or gradient")
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{host['loss']:.3f}", ms=f"{host['step_time_ms']:.1f}")
        self.pending = []
        self.restart_clock()
        return skipped

    def say(self, message: str) -> None:
        """A message on the log, above the progress bar when there is one."""
        if self.bar is not None:
            self.bar.write(message)
        else:
            self.log(message)

    def rewind(self, to_step: int, total: int) -> None:
        """The run went back to `to_step` (a rollback): the bar follows."""
        self.pending = []
        if self.bar is not None:
            self.bar.reset(total=total)
            self.bar.update(to_step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar(start: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, leave=True)
