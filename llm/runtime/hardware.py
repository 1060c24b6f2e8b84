"""The hardware this code runs on: peak FLOP/s of its devices, for MFU estimates, and its CPU's model and features.

Accelerators: dense bf16 peaks from the vendors' data sheets. CPUs have no honest data-sheet number for
JAX's matmuls, so the peak is *measured*: the best of a few matmuls (cached for the process) with the operand
dtype the model's matmuls use (float32, or bfloat16 with float32 sums: `model.matmul_dtype`).

CPU timings depend on the processor's vector and matrix units, so `cpu_processor` names them (a benchmark records
it with its numbers): AVX2 or AVX-512 width, and whether bfloat16 products are native (AVX512_BF16's dot
products, AMX's tile matmuls) or converted to float32 first, which makes bfloat16 matmuls slower than float32 ones.
"""

from __future__ import annotations

import functools
import platform
import time
from pathlib import Path
from typing import Any

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


# The CPU flags (Linux /proc/cpuinfo names) that decide how fast XLA:CPU's matmuls run, widest last.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
NATIVE_BF16_FEATURES = ("avx512_bf16", "amx_bf16")


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The first processor of a /proc/cpuinfo text: {"model": its model name, "features": those of CPU_FEATURES
    it has, in CPU_FEATURES' order}."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough: the others repeat it
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", ""), "features": [f for f in CPU_FEATURES if f in flags]}


@functools.cache
def cpu_processor() -> dict[str, Any]:
    """This machine's CPU: {"model", "features"} as `parse_cpuinfo` gives them (where there is no /proc/cpuinfo,
    the model from `platform.processor()` and the features unknown: None)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return {"model": platform.processor() or platform.machine(), "features": None}


def describe_processor(processor: dict[str, Any] | None = None) -> str:
    """One line naming a processor (default: this one) and which of CPU_FEATURES it has and lacks, e.g.
    'AMD EPYC (avx2, fma; no avx512f, avx512_bf16, amx_tile, amx_bf16)'."""
    p = processor or cpu_processor()
    if p["features"] is None:
        return f"{p['model']} (features unknown)"
    lacks = [f for f in CPU_FEATURES if f not in p["features"]]
    parts = [", ".join(p["features"])] if p["features"] else []
    parts += [f"no {', '.join(lacks)}"] if lacks else []
    return f"{p['model']} ({'; '.join(parts)})"


def native_bf16(processor: dict[str, Any] | None = None) -> bool:
    """Whether a processor (default: this one) multiplies bfloat16 natively (AVX512_BF16 or AMX); without it
    XLA:CPU converts bfloat16 operands to float32, and bfloat16 matmuls run slower than float32 ones."""
    p = processor or cpu_processor()
    return any(f in (p["features"] or ()) for f in NATIVE_BF16_FEATURES)


def slow_matmul_note(matmul_dtype: str | None, platform: str, processor: dict[str, Any] | None = None) -> str | None:
    """A line for the log when `matmul_dtype` runs slower than float32 here (bfloat16 operands on a CPU without
    native bfloat16; `processor` default this one), else None."""
    if matmul_dtype != "bfloat16" or platform != "cpu" or native_bf16(processor):
        return None
    return (f"note: model.matmul_dtype=bfloat16 is slower than float32 matmuls on this CPU, "
            f"{describe_processor(processor)}: without AVX512_BF16 or AMX its bfloat16 products are converted to "
            "float32 first")


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
