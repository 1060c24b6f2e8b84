"""Peak FLOP/s of the devices this code runs on, for MFU estimates.

Accelerators: dense bf16 peaks from the vendors' data sheets. CPUs have no honest data-sheet number for
JAX's matmuls, so the peak is *measured*: the best of a few float32 matmuls (cached for the process).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# device_kind substring -> dense bf16 FLOP/s per device (data sheets; H100/H200 SXM without sparsity).
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6": 918e12,
}


def peak_flops(device: jax.Device | None = None) -> float:
    """Peak FLOP/s of one device: the table above, or a measured matmul peak on a CPU."""
    device = device or jax.devices()[0]
    for kind, flops in PEAK_FLOPS.items():
        if kind.lower() in device.device_kind.lower():
            return flops
    if device.platform == "cpu":
        return measured_cpu_matmul_flops()
    return float("nan")


@functools.cache
def measured_cpu_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """Best float32 FLOP/s of an n x n x n matmul on the default CPU device (all its threads)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
