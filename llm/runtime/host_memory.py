"""Keep freed host memory in the process, so XLA:CPU's per-call buffers do not page-fault at every step.

XLA:CPU allocates an executable's temporary buffers with malloc at each call and frees them afterwards. glibc
gives freed memory at the top of its heap back to the kernel once more than M_TRIM_THRESHOLD is free, and serves
large requests (above M_MMAP_THRESHOLD, 128 KiB to 32 MiB, adaptive) with fresh mmaps, so every training step
touched its temporaries as new pages: a page fault and a kernel zero-fill per 4 KiB. On the 2-core development
machine that was ~11 ms of the 42 ms shakespeare_char:baby step (benchmarks/results/perf_before_after.md).
Raising both thresholds keeps the pages for the next call. The cost: up to `threshold` bytes of freed memory stay
mapped to the process instead of going back to the system.

That covers the main heap only. JAX's CPU client runs programs on a worker thread by default, and glibc gives
worker threads arenas made of 64 MiB heaps: a block larger than that (XLA allocates a program's temporaries as
one block; 65 MB for the default experiment's step at batch 16) is mapped and unmapped at every call regardless of
the thresholds. So, when jax is imported and its CPU client not yet created, programs are run on the calling
thread instead (`jax_cpu_enable_async_dispatch=False`): the default `llm train` went from 55 to 42 ms/step.

`keep_freed_host_memory()` is called by the training job, the CLI and the benchmarks; set LLM_MALLOC_DEFAULTS=1
to leave glibc's defaults alone (e.g. to measure the difference).
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_host_memory(threshold: int = 1 << 30) -> bool:
    """Set glibc's trim and mmap thresholds to `threshold` bytes for this process; True if both are set.

    False (nothing changed) off Linux, with a C library without mallopt (musl), or with LLM_MALLOC_DEFAULTS=1.
    """
    if not sys.platform.startswith("linux") or os.environ.get("LLM_MALLOC_DEFAULTS", "") not in ("", "0"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = bool(mallopt(_M_TRIM_THRESHOLD, threshold)) and bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    if ok and "jax" in sys.modules:
        # glibc gives worker threads their own arenas, whose heaps hold at most 64 MiB: a larger block (XLA:CPU
        # allocates a program's temporaries as one) is mapped afresh at every call whatever the thresholds. Run
        # programs on the calling thread instead, which allocates from the main heap. Only read when the CPU
        # client is created, so a no-op after the first computation.
        sys.modules["jax"].config.update("jax_cpu_enable_async_dispatch", False)
    return ok
