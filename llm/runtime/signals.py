"""Handling signals for the length of a block: the handler is installed on entry and the previous handlers are put
back on exit, however the block ends."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator


@contextlib.contextmanager
def handling(signals: Iterable[signal.Signals], handler: Callable) -> Iterator[bool]:
    """Within the block, `handler(signum, frame)` handles each of `signals`; yields whether it was installed.
    Python lets only the main thread set handlers, so elsewhere nothing changes (and it yields False)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield True
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
