"""Peak FLOP/s of the devices this code runs on, for MFU estimates.

Accelerators: dense bf16 peaks from the vendors' data sheets. CPUs have no honest data-sheet number for
JAX's matmuls, so the peak is *measured*: the best of a few matmuls (cached for the process) with the operand
dtype the model's matmuls use (float32, or bfloat16 with float32 sums: `model.matmul_dtype`).
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


def peak_flops(device: jax.Device | None = None, matmul_dtype: str | None = None) -> float:
    """Peak FLOP/s of one device: the table above, or a measured matmul peak on a CPU (float32 operands, or
    `matmul_dtype`'s)."""
    device = device or jax.devices()[0]
    for kind, flops in PEAK_FLOPS.items():
        if kind.lower() in device.device_kind.lower():
            return flops
    if device.platform == "cpu":
        return measured_cpu_matmul_flops(dtype=matmul_dtype or "float32")
    return float("nan")


@functools.cache
def measured_cpu_matmul_flops(n: int = 1024, repeats: int = 5, dtype: str = "float32") -> float:
    """Best FLOP/s of an n x n x n matmul with `dtype` operands and float32 sums on the default CPU device (all
    its threads)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32))
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
