"""The linear-attention family's three forms (recurrent, parallel, chunked) against naive per-token recurrences
written here, token by token in Python loops: outputs, final states and gradients, with packed documents."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.ops import mixers
from llm.ops.mixers import delta, gla

TOL = dict(rtol=2e-5, atol=2e-5)

# Each form and reference compiled whole: run op by op, every jnp call would compile a program of its own.
chunked = partial(jax.jit, static_argnames=("chunk",))
gla_recurrent, gla_parallel, gla_mixing = map(jax.jit, (gla.gla_recurrent, gla.gla_parallel, gla.gla_mixing))
delta_recurrent, delta_parallel, delta_mixing = map(
    jax.jit, (delta.delta_recurrent, delta.delta_parallel, delta.delta_mixing))
gla_chunked, delta_chunked, gla_pallas = map(chunked, (gla.gla_chunked, delta.delta_chunked, mixers.gla_pallas))
unit_lower_inverse = jax.jit(delta.unit_lower_inverse)


def restarts(segment_ids, i):
    """[B, 1, 1, 1]: 0 where token i starts a new document (the state is dropped), else 1."""
    if segment_ids is None or i == 0:
        return 1.0
    return (segment_ids[:, i] == segment_ids[:, i - 1]).astype(jnp.float32)[:, None, None, None]


@jax.jit
def naive_gla(q, k, v, g, segment_ids=None, state=None):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T; o_t = S_t^T q_t."""
    s = jnp.zeros(q.shape[:1] + q.shape[2:] + v.shape[-1:]) if state is None else state
    g = jnp.broadcast_to(g, k.shape)
    outs = []
    for i in range(q.shape[1]):
        s = restarts(segment_ids, i) * jnp.exp(g[:, i])[..., None] * s + k[:, i, ..., None] * v[:, i, :, None, :]
        outs.append(jnp.einsum("bhk,bhkv->bhv", q[:, i], s))
    return jnp.stack(outs, 1), s


@jax.jit
def naive_delta(q, k, v, b, g, segment_ids=None, state=None):
    """S_t = exp(g_t) (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T; o_t = S_t^T q_t."""
    s = jnp.zeros(q.shape[:1] + q.shape[2:] + v.shape[-1:]) if state is None else state
    eye = jnp.eye(k.shape[-1])
    outs = []
    for i in range(q.shape[1]):
        k_t, b_t = k[:, i], b[:, i, :, None, None]
        decay = restarts(segment_ids, i) * jnp.exp(g[:, i])[..., None, None]
        s = decay * (eye - b_t * k_t[..., :, None] * k_t[..., None, :]) @ s + b_t * k_t[..., :, None] * v[:, i, :, None]
        outs.append(jnp.einsum("bhk,bhkv->bhv", q[:, i], s))
    return jnp.stack(outs, 1), s


def inputs(seed=0, b=2, t=19, h=2, dk=4, dv=3, per_key=True):
    rng = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    q, k, v = f(b, t, h, dk), f(b, t, h, dk), f(b, t, h, dv)
    g = jnp.asarray(np.log(rng.uniform(0.6, 1.0, size=(b, t, h, dk if per_key else 1))), jnp.float32)
    seg = jnp.asarray(np.sort(rng.integers(0, 3, size=(b, t)), axis=1))
    beta = jnp.asarray(rng.uniform(0.1, 1.0, size=(b, t, h)), jnp.float32)
    return q, k, v, g, seg, beta


def unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("per_key", [True, False])
@pytest.mark.parametrize("segments", [False, True])
def test_gla_forms_equal_the_naive_recurrence(per_key, segments):
    q, k, v, g, seg, _ = inputs(per_key=per_key)
    seg = seg if segments else None
    want, want_state = naive_gla(q, k, v, g, seg)
    out, state = gla_recurrent(q, k, v, g, segment_ids=seg)
    np.testing.assert_allclose(out, want, **TOL)
    np.testing.assert_allclose(state, want_state, **TOL)
    np.testing.assert_allclose(gla_parallel(q, k, v, g, segment_ids=seg), want, **TOL)
    for chunk in (1, 4, 8, 32):
        out, state = gla_chunked(q, k, v, g, chunk=chunk, segment_ids=seg)
        np.testing.assert_allclose(out, want, **TOL, err_msg=f"chunk {chunk}")
        np.testing.assert_allclose(state, want_state, **TOL, err_msg=f"chunk {chunk}")


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("segments", [False, True])
def test_delta_forms_equal_the_naive_recurrence(gated, segments):
    q, k, v, g, seg, beta = inputs(seed=1)
    k, g = unit(k), (g[..., 0] if gated else jnp.zeros(beta.shape))
    seg = seg if segments else None
    want, want_state = naive_delta(q, k, v, beta, g, seg)
    out, state = delta_recurrent(q, k, v, beta, g, segment_ids=seg)
    np.testing.assert_allclose(out, want, **TOL)
    np.testing.assert_allclose(state, want_state, **TOL)
    np.testing.assert_allclose(delta_parallel(q, k, v, beta, g, segment_ids=seg), want, **TOL)
    for chunk in (1, 4, 8, 32):
        out, state = delta_chunked(q, k, v, beta, g, chunk=chunk, segment_ids=seg)
        np.testing.assert_allclose(out, want, **TOL, err_msg=f"chunk {chunk}")
        np.testing.assert_allclose(state, want_state, **TOL, err_msg=f"chunk {chunk}")


def test_every_form_continues_from_a_state():
    q, k, v, g, _, beta = inputs(t=12)
    k, gs = unit(k), g[..., 0]
    want_gla, _ = naive_gla(q, k, v, g)
    want_delta, _ = naive_delta(q, k, v, beta, gs)
    cut = lambda xs, a, z: [x[:, a:z] for x in xs]
    for form, args, want in [(gla_recurrent, (q, k, v, g), want_gla),
                             (lambda *a, **kw: gla_chunked(*a, chunk=4, **kw), (q, k, v, g), want_gla),
                             (delta_recurrent, (q, k, v, beta, gs), want_delta),
                             (lambda *a, **kw: delta_chunked(*a, chunk=4, **kw), (q, k, v, beta, gs), want_delta)]:
        _, s = form(*cut(args, 0, 7))
        out, _ = form(*cut(args, 7, 12), state=s)
        np.testing.assert_allclose(out, want[:, 7:], **TOL)


def test_gradients_equal_the_naive_recurrences():
    q, k, v, g, seg, beta = inputs(t=11)
    k, gs = unit(k), g[..., 0]
    w = jnp.asarray(np.random.default_rng(2).normal(size=v.shape), jnp.float32)

    def grads(fn, args):
        return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * w), argnums=tuple(range(len(args)))))(*args)

    cases = [(lambda *a: naive_gla(*a, seg)[0], (q, k, v, g),
              [lambda *a: gla_recurrent(*a, segment_ids=seg)[0], lambda *a: gla_parallel(*a, segment_ids=seg),
               lambda *a: gla_chunked(*a, chunk=4, segment_ids=seg)[0]]),
             (lambda *a: naive_delta(*a, seg)[0], (q, k, v, beta, gs),
              [lambda *a: delta_recurrent(*a, segment_ids=seg)[0], lambda *a: delta_parallel(*a, segment_ids=seg),
               lambda *a: delta_chunked(*a, chunk=4, segment_ids=seg)[0]])]
    for naive, args, forms in cases:
        want = grads(naive, args)
        for form in forms:
            for x, y in zip(grads(form, args), want, strict=True):
                np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_mixing_matrices_reproduce_the_outputs():
    """What the explorer shows for a mixer layer: M with out = M v, exactly (no normalisation)."""
    q, k, v, g, seg, beta = inputs(seed=3)
    mix = lambda m: np.einsum("bhts,bshv->bthv", m, v)
    np.testing.assert_allclose(mix(gla_mixing(q, k, g, segment_ids=seg)), naive_gla(q, k, v, g, seg)[0], **TOL)
    k, gs = unit(k), g[..., 0]
    np.testing.assert_allclose(mix(delta_mixing(q, k, beta, gs, segment_ids=seg)),
                               naive_delta(q, k, v, beta, gs, seg)[0], **TOL)
    m = delta_mixing(q, k, beta, gs, segment_ids=seg)
    assert np.all(np.triu(np.asarray(m), 1) == 0)  # causal



@pytest.mark.parametrize("per_key", [True, False])
def test_pallas_kernel_equals_the_naive_recurrence_and_the_chunked_gradients(per_key):
    """The Pallas kernel (interpreted on CPU): outputs and final state against the naive recurrence, from a state,
    over a length that is not a chunk multiple; gradients of everything (state in and out included) against
    autodiff of the chunked jnp form."""
    q, k, v, g, _, _ = inputs(seed=4, t=21, per_key=per_key)
    s0 = jnp.asarray(np.random.default_rng(5).normal(size=(2, 2, 4, 3)), jnp.float32)
    want, want_state = naive_gla(q, k, v, g, state=s0)
    out, state = gla_pallas(q, k, v, g, chunk=8, state=s0)
    np.testing.assert_allclose(out, want, **TOL)
    np.testing.assert_allclose(state, want_state, **TOL)

    w = jnp.asarray(np.random.default_rng(6).normal(size=v.shape), jnp.float32)

    def grads(form):
        def loss(*args):
            out, state = form(*args[:4], chunk=8, state=args[4])
            return jnp.sum(out * w) + jnp.sum(jnp.sin(state))
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(q, k, v, g, s0)

    for name, x, y in zip("q k v g state".split(), grads(gla_pallas), grads(gla_chunked), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=name)


def test_pallas_kernel_survives_strong_decays():
    """Decays down to exp(-30) a token: every exponent the kernel forms is <= 0, so nothing overflows."""
    q, k, v, g, _, _ = inputs(seed=7, t=16)
    g = g * 100.0
    want, _ = naive_gla(q, k, v, g)
    out, _ = gla_pallas(q, k, v, g, chunk=16)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, want, **TOL)
    dq = jax.jit(jax.grad(lambda q: jnp.sum(gla_pallas(q, k, v, g, chunk=16)[0])))(q)
    assert np.all(np.isfinite(dq))


def test_the_delta_rule_solves_its_triangular_systems_without_lapack():
    """The chunks' unit lower-triangular inverses equal NumPy's inverse; training (the chunked form and its
    gradient) uses no triangular_solve, whose XLA CPU kernel deadlocked every DeltaNet run within ~10 steps."""
    n = np.tril(np.random.default_rng(0).normal(size=(3, 2, 16, 16)), -1).astype(np.float32)
    want = np.linalg.inv(np.eye(16) + n.astype(np.float64))
    np.testing.assert_allclose(unit_lower_inverse(jnp.asarray(n)), want, rtol=1e-4, atol=1e-4)

    q, k, v, g, seg, beta = inputs(seed=3)

    def loss(q, k, v, beta, g):
        return delta_chunked(q, unit(k), v, beta, g[..., 0], chunk=4, segment_ids=seg)[0].sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(q, k, v, beta, g)
    assert "triangular_solve" not in str(jaxpr)
