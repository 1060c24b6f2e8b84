"""llm.runtime.signals.handling: a handler for the length of a block, the previous handlers back afterwards."""

import os
import signal
import threading

import pytest

from llm.runtime.signals import handling


def test_the_handler_runs_within_the_block_and_the_old_one_comes_back():
    seen = []
    before = signal.getsignal(signal.SIGUSR1)
    with handling([signal.SIGUSR1], lambda signum, frame: seen.append(signum)) as installed:
        os.kill(os.getpid(), signal.SIGUSR1)  # delivered to the main thread before kill returns to Python code
        assert installed and seen == [signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) is before


def test_the_old_handler_comes_back_when_the_block_raises():
    before = signal.getsignal(signal.SIGUSR2)
    with pytest.raises(KeyError), handling([signal.SIGUSR2], lambda *_: None):
        assert signal.getsignal(signal.SIGUSR2) is not before
        raise KeyError("boom")
    assert signal.getsignal(signal.SIGUSR2) is before


def test_outside_the_main_thread_nothing_is_installed():
    result = []

    def worker():
        with handling([signal.SIGUSR1], lambda *_: None) as installed:
            result.append((installed, signal.getsignal(signal.SIGUSR1)))

    before = signal.getsignal(signal.SIGUSR1)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert result == [(False, before)]
