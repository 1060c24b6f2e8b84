"""Batches made ahead on a background thread, so a training step never waits for its data.

    batches = Prefetcher(lambda step: dataset.batch(seed, step, batch_size), depth=2)
    batch = batches.get(step)      # batch(step); steps step+1 .. step+depth are started behind it
    batches.close()

A batch is a pure function of its step, so reading ahead changes nothing: `get` returns exactly `make(step)`,
and a jump (a rollback, a resume) just starts again from the step asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class Prefetcher:
    def __init__(self, make: Callable[[int], Any], depth: int = 2):
        self._make, self._depth = make, depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches")
        self._pending: dict[int, Future] = {}

    def get(self, step: int) -> Any:
        future = self._pending.pop(step, None)
        if future is None:  # the first step, or a jump: what was read ahead is for other steps
            self._drop()
            batch = self._make(step)
        else:
            batch = future.result()
        for ahead in range(step + 1, step + 1 + self._depth):
            if ahead not in self._pending:
                self._pending[ahead] = self._pool.submit(self._make, ahead)
        return batch

    def _drop(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()

    def close(self) -> None:
        self._drop()
        self._pool.shutdown(wait=True, cancel_futures=True)
