"""2-D matmuls with low-precision operands and float32 accumulation (`model.matmul_dtype`).

`matmul(x, w, operand_dtype)` multiplies x [M, K] by w [K, N] with both operands cast to `operand_dtype`
(bfloat16: the CPU's AMX units, the GPU's tensor cores) and accumulates in float32; the result, and the gradients,
come back in the inputs' own dtypes, so parameters, activations and the optimizer stay in float32.

The backward pass is written out: dy is rounded to the operand dtype too (as autocast does), so the gradient
matmuls are low-precision products as well. Those multiply by a transposed operand (dx = dy w^T, dw = x^T dy),
and XLA:CPU folds such a transpose into the dot's dimension numbers, after which a bfloat16 dot runs on a slow
generic path: 150-280 GFLOP/s where the same dot with row-major operands runs at 650-1,070 on this
machine (the 2-core development VM, benchmarks/results/perf_before_after.md). So the transposes are made real
row-major copies first (`_row_major_transpose`) and all three matmuls are plain [M, K] x [K, N] products. Other
backends take the transposes as they are (their matmul libraries read either layout at full speed); 32-bit
operands are an ordinary dot.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def matmul(x: Array, w: Array, operand_dtype: jnp.dtype | None = None) -> Array:
    """x [M, K] . w [K, N] -> [M, N] in x's dtype; with a 16-bit `operand_dtype`, those operands and float32 sums
    (the backward pass too: dy is rounded to it, dx and dw are summed in float32)."""
    if operand_dtype is None:
        return jnp.dot(x, w)
    operand_dtype = jnp.dtype(operand_dtype)
    if operand_dtype.itemsize > 2:
        return jnp.dot(x.astype(operand_dtype), w.astype(operand_dtype),
                       preferred_element_type=jnp.float32).astype(x.dtype)
    return _low_precision_matmul(x, w, operand_dtype, jax.default_backend() == "cpu", x.dtype, w.dtype)


def _row_major_transpose(a: Array) -> Array:
    """a.T as a new row-major array. XLA drops a plain transpose into the consuming dot; flattening it behind an
    optimization barrier forces the copy (measured: the bfloat16 dot then runs 2-4x faster)."""
    return jax.lax.optimization_barrier(a.T.reshape(-1)).reshape(a.shape[::-1])


def _dot(a: Array, b: Array, cpu: bool) -> Array:
    y = jnp.dot(a, b, preferred_element_type=jnp.float32)
    # On the CPU the barrier keeps a transposing consumer out of the dot's output layout, which would move the
    # dot off the fast path (and, for bfloat16 x bfloat16 = float32, onto one that XLA:CPU does not implement).
    return jax.lax.optimization_barrier(y) if cpu else y


# The inputs' dtypes are static arguments too: the gradients come back in them.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _low_precision_matmul(x: Array, w: Array, operand_dtype: jnp.dtype, cpu: bool, x_dtype: jnp.dtype,
                          w_dtype: jnp.dtype) -> Array:
    return _dot(x.astype(operand_dtype), w.astype(operand_dtype), cpu).astype(x_dtype)


def _fwd(x, w, operand_dtype, cpu, x_dtype, w_dtype):
    x_low, w_low = x.astype(operand_dtype), w.astype(operand_dtype)
    # The residuals are the low-precision operands: half the memory of float32 ones.
    return _dot(x_low, w_low, cpu).astype(x_dtype), (x_low, w_low)


def _bwd(operand_dtype, cpu, x_dtype, w_dtype, res, dy):
    x_low, w_low = res
    dy_low = dy.astype(operand_dtype)
    transpose = _row_major_transpose if cpu else jnp.transpose
    dx = _dot(dy_low, transpose(w_low), cpu)  # [M, N] x [N, K]
    dw = _dot(transpose(x_low), dy_low, cpu)  # [K, M] x [M, N]
    return dx.astype(x_dtype), dw.astype(w_dtype)


_low_precision_matmul.defvjp(_fwd, _bwd)
