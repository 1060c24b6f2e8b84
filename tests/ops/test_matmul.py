"""Low-precision matmul operands (llm/ops/matmul.py): values and gradients against float32 products of the
rounded operands, dtypes, and the transposed-weight case (tied embeddings) that XLA:CPU cannot run naively."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.ops.matmul import matmul

HIGHEST = jax.lax.Precision.HIGHEST


def rounded(a, dtype):
    """a's values as `dtype` holds them, back in float32 (rounded by NumPy and ml_dtypes, not XLA)."""
    return np.asarray(a, np.float32).astype(jnp.dtype(dtype)).astype(np.float32)


def data(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(m, k)), jnp.float32), jnp.asarray(rng.normal(size=(k, n)), jnp.float32),
            jnp.asarray(rng.normal(size=(m, n)), jnp.float32))


@pytest.mark.parametrize("operand_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("transposed_w", [False, True], ids=["w", "tied_w_T"])
def test_values_and_gradients_are_float32_sums_of_rounded_operands(operand_dtype, transposed_w):
    x, w, dy = data(48, 40, 24)
    e = w.T  # a tied embedding table [N, K], used as e.T

    def f(x, p):
        return matmul(x, p.T if transposed_w else p, operand_dtype)

    p = e if transposed_w else w
    y, vjp = jax.jit(lambda x, p: jax.vjp(f, x, p))(x, p)
    dx, dp = vjp(dy)
    xr, wr, dyr = rounded(x, operand_dtype), rounded(w, operand_dtype), rounded(dy, operand_dtype)
    np.testing.assert_allclose(y, np.dot(xr, wr), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, np.dot(dyr, wr.T), rtol=1e-5, atol=1e-5)
    dw = np.dot(xr.T, dyr)
    np.testing.assert_allclose(dp, dw.T if transposed_w else dw, rtol=1e-5, atol=1e-5)
    # And they differ from the float32 product by about the operands' rounding, no more.
    exact = np.dot(np.asarray(x), np.asarray(w))
    err = np.abs(np.asarray(y) - exact).max() / np.abs(exact).max()
    assert 1e-5 < err < 3e-2, err


def test_results_and_gradients_keep_the_inputs_dtypes():
    x, w, _ = data(16, 8, 12)
    for x_dtype in (jnp.float32, jnp.bfloat16):
        xs = x.astype(x_dtype)
        y = matmul(xs, w, jnp.bfloat16)
        assert y.dtype == x_dtype
        dx, dw = jax.grad(lambda a, b: matmul(a, b, jnp.bfloat16).astype(jnp.float32).sum(), argnums=(0, 1))(xs, w)
        assert dx.dtype == x_dtype and dw.dtype == jnp.float32


def test_without_operand_dtype_it_is_the_plain_product():
    x, w, _ = data(16, 8, 12)
    np.testing.assert_array_equal(matmul(x, w), jnp.dot(x, w))
    np.testing.assert_allclose(matmul(x, w, "float32"), jnp.dot(x, w, precision=HIGHEST), rtol=1e-6)


def test_consumers_that_transpose_the_result_compile_and_differentiate():
    """A transposing consumer of a dot's bfloat16 x bfloat16 = float32 result once moved it onto an XLA:CPU
    path that is not implemented ('Unsupported element type for DotThunk')."""
    x, w, dy = data(32, 16, 8)

    def loss(x_T, w):
        y = matmul(x_T.T, w, jnp.bfloat16)
        return jnp.sum(y.T * dy.T)

    dx_T, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x.T, w)
    xr, wr, dyr = rounded(x, jnp.bfloat16), rounded(w, jnp.bfloat16), rounded(dy, jnp.bfloat16)
    np.testing.assert_allclose(dw, np.dot(xr.T, dyr), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx_T, np.dot(dyr, wr.T).T, rtol=1e-5, atol=1e-5)
