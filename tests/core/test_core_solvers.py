"""CG, Neumann and LiSSA against dense oracles in float64; matvec counts; jit/vmap; bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from respax.core import conjugate_gradient, lissa, neumann_series


def _spd(seed, n, cond, dtype=jnp.float64):
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(seed), (n, n), dtype))
    eigs = jnp.logspace(0, jnp.log10(cond), n, dtype=dtype)
    return (q * eigs) @ q.T


def _krylov_oracle(a, b, k):
    """The CG iterate after k steps: the A-norm-optimal point of the k-dim Krylov subspace."""
    a, b = np.asarray(a), np.asarray(b)
    cols = [b]
    for _ in range(k - 1):
        cols.append(a @ cols[-1])
    v, _ = np.linalg.qr(np.stack(cols, 1))
    return v @ np.linalg.solve(v.T @ a @ v, v.T @ b)


class _Counter:
    def __init__(self):
        self.count = 0

    def __call__(self, *_):
        self.count += 1


def _counting(matrix, counter):
    def matvec(v):
        jax.debug.callback(counter)
        return matrix @ v

    return matvec


@pytest.mark.float64
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 10),
    k=st.integers(1, 10),
    cond=st.floats(1.0, 1e3),
)
@settings(max_examples=12)
def test_cg_iterate_is_the_krylov_minimizer(seed, n, k, cond):
    k = min(k, n)
    a = _spd(seed, n, cond)
    b = jax.random.normal(jax.random.key(seed + 1), (n,), jnp.float64)
    x, info = conjugate_gradient(lambda v: a @ v, b, max_iterations=k)
    oracle = _krylov_oracle(a, b, k)  # the power basis is ill-conditioned: compare in norm
    assert np.linalg.norm(x - oracle) <= 1e-6 * np.linalg.norm(oracle)
    assert int(info.matvecs) == int(info.iterations) <= k
    np.testing.assert_allclose(info.residual_norm, np.linalg.norm(b - a @ x), rtol=1e-5, atol=1e-10)


@pytest.mark.float64
def test_cg_solves_dense_system_to_tolerance_and_counts_matvecs():
    a = _spd(0, 30, 100.0)
    b = jnp.arange(30.0)
    counter = _Counter()
    x, info = jax.jit(
        lambda b: conjugate_gradient(_counting(a, counter), b, max_iterations=200, tol=1e-12)
    )(b)
    jax.effects_barrier()
    np.testing.assert_allclose(x, jnp.linalg.solve(a, b), rtol=1e-10)
    assert bool(info.converged)
    assert counter.count == int(info.matvecs) == int(info.iterations)
    assert int(info.iterations) <= 60


@pytest.mark.float64
def test_cg_exact_budget_spends_exactly_k_matvecs():
    a = _spd(1, 20, 1e4)
    counter = _Counter()
    _, info = conjugate_gradient(_counting(a, counter), jnp.ones(20), max_iterations=7)
    jax.effects_barrier()
    assert counter.count == 7 == int(info.matvecs)
    assert not bool(info.converged)


@pytest.mark.float64
def test_cg_min_norm_on_singular_psd_system():
    u = jax.random.normal(jax.random.key(3), (10, 4), jnp.float64)
    a = u @ u.T  # rank 4
    b = a @ jax.random.normal(jax.random.key(4), (10,), jnp.float64)  # in the range of a
    x, _ = conjugate_gradient(lambda v: a @ v, b, max_iterations=10, tol=1e-14)
    np.testing.assert_allclose(x, np.linalg.pinv(np.asarray(a)) @ b, rtol=1e-8, atol=1e-10)


@pytest.mark.float64
def test_cg_damping_pytree_and_lineax_operator():
    a = _spd(5, 6, 10.0)
    op = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
    b = jnp.ones(6)
    x, _ = conjugate_gradient(op, b, max_iterations=6, damping=0.5)
    np.testing.assert_allclose(x, jnp.linalg.solve(a + 0.5 * jnp.eye(6), b), rtol=1e-10)
    # pytree right-hand side: block-diagonal operator over a dict
    tree_b = {"u": jnp.ones(6), "v": jnp.arange(3.0)}
    c = _spd(6, 3, 5.0)
    x, _ = conjugate_gradient(
        lambda t: {"u": a @ t["u"], "v": c @ t["v"]}, tree_b, max_iterations=9, tol=1e-13
    )
    np.testing.assert_allclose(x["u"], jnp.linalg.solve(a, tree_b["u"]), rtol=1e-9)
    np.testing.assert_allclose(x["v"], jnp.linalg.solve(c, tree_b["v"]), rtol=1e-9)


def test_cg_rejects_indefinite_system():
    a = jnp.diag(jnp.array([1.0, -2.0, 3.0]))
    with pytest.raises(eqx.EquinoxRuntimeError, match="not positive definite"):
        jax.block_until_ready(conjugate_gradient(lambda v: a @ v, jnp.ones(3), max_iterations=3))
    _, info = conjugate_gradient(lambda v: a @ v, jnp.ones(3), max_iterations=3, throw=False)
    assert bool(info.indefinite)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_iterations": 0}, "max_iterations"),
        ({"max_iterations": 2.5}, "max_iterations"),
        ({"max_iterations": 3, "tol": -1.0}, "tol"),
        ({"max_iterations": 3, "damping": float("nan")}, "damping"),
    ],
)
def test_cg_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        conjugate_gradient(lambda v: v, jnp.ones(2), **kwargs)
    with pytest.raises(TypeError, match="operator"):
        conjugate_gradient("not an operator", jnp.ones(2), max_iterations=2)


def test_cg_vmap_jit_float32():
    a = _spd(7, 8, 10.0, jnp.float32)
    bs = jax.random.normal(jax.random.key(8), (5, 8))
    cg = lambda b: conjugate_gradient(lambda v: a @ v, b, max_iterations=30, tol=1e-6)[0]
    solve = jax.jit(jax.vmap(cg))
    xs = solve(bs)
    assert xs.dtype == jnp.float32
    np.testing.assert_allclose(xs @ a.T, bs, rtol=1e-4, atol=1e-4)


@pytest.mark.float64
@given(seed=st.integers(0, 10_000), k=st.integers(1, 40), alpha=st.floats(0.01, 0.9))
@settings(max_examples=15)
def test_neumann_equals_its_truncated_series(seed, k, alpha):
    n = 6
    a = _spd(seed, n, 10.0) / 10.0  # eigenvalues in [0.1, 1]
    b = jax.random.normal(jax.random.key(seed + 1), (n,), jnp.float64)
    x, info = neumann_series(lambda v: a @ v, b, num_iterations=k, alpha=alpha)
    m = np.eye(n) - alpha * np.asarray(a)
    series = alpha * sum(np.linalg.matrix_power(m, j) @ np.asarray(b) for j in range(k))
    np.testing.assert_allclose(x, series, rtol=1e-10, atol=1e-12)
    residual = np.linalg.matrix_power(m, k) @ np.asarray(b)
    np.testing.assert_allclose(info.residual_norm, np.linalg.norm(residual), rtol=1e-8, atol=1e-14)
    assert int(info.matvecs) == k


@pytest.mark.float64
def test_neumann_converges_and_counts_matvecs():
    a = _spd(2, 10, 20.0)
    counter = _Counter()
    x, info = jax.jit(
        lambda b: neumann_series(
            _counting(a, counter), b, num_iterations=600, alpha=0.09, damping=0.1
        )
    )(jnp.ones(10))
    jax.effects_barrier()
    assert counter.count == 600 == int(info.matvecs)
    np.testing.assert_allclose(x, jnp.linalg.solve(a + 0.1 * jnp.eye(10), jnp.ones(10)), rtol=1e-8)


def test_neumann_bad_arguments():
    with pytest.raises(ValueError, match="num_iterations"):
        neumann_series(lambda v: v, jnp.ones(2), num_iterations=0, alpha=0.1)
    with pytest.raises(ValueError, match="alpha"):
        neumann_series(lambda v: v, jnp.ones(2), num_iterations=3, alpha=0.0)


@pytest.mark.float64
def test_lissa_with_a_fixed_batch_is_a_neumann_series():
    a = _spd(9, 5, 10.0)
    b = jnp.arange(1.0, 6.0)
    x, info = lissa(
        lambda batch, v: batch @ v,
        b,
        lambda key: a,
        jax.random.key(0),
        num_iterations=12,
        scale=20.0,
        damping=0.3,
    )
    expected, _ = neumann_series(lambda v: a @ v, b, num_iterations=13, alpha=1 / 20.0, damping=0.3)
    np.testing.assert_allclose(x, expected, rtol=1e-10)
    assert int(info.matvecs) == 12


@pytest.mark.float64
def test_lissa_stochastic_minibatches_converge_in_expectation():
    """H = mean of per-example rank-one terms; LiSSA samples single examples."""
    feats = jax.random.normal(jax.random.key(1), (64, 4), jnp.float64)
    h = feats.T @ feats / 64
    b = jnp.ones(4)
    sample = lambda key: feats[jax.random.randint(key, (8,), 0, 64)]
    hvp = lambda batch, v: batch.T @ (batch @ v) / batch.shape[0]
    run = jax.jit(
        jax.vmap(
            lambda key: lissa(hvp, b, sample, key, num_iterations=400, scale=10.0, damping=0.5)[0]
        )
    )
    estimates = run(jax.random.split(jax.random.key(2), 200))
    np.testing.assert_allclose(
        estimates.mean(0), jnp.linalg.solve(h + 0.5 * jnp.eye(4), b), rtol=0.05
    )
