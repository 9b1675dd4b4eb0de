"""respax.core's matrix-free estimators against dense oracles: Hutchinson / Hutch++ (with standard
errors), Hutchinson's diagonal, Lanczos and power iteration; float64 for exactness, float32 for
realism, jit, pytree operators and bad input."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from respax.core import (
    LanczosResult,
    PowerIterationResult,
    TraceEstimate,
    hutchinson_diagonal,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_top_k,
    power_iteration,
)
from respax.testing import dense_matrix, spd_matrices


def _symmetric(seed, eigenvalues, dtype=jnp.float64):
    """`Q diag(eigenvalues) Q^T` with a random orthogonal `Q` (numpy float64, then cast)."""
    eigenvalues = np.asarray(eigenvalues, np.float64)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(eigenvalues.size,) * 2))
    a = (q * eigenvalues) @ q.T
    return jnp.asarray(0.5 * (a + a.T), dtype), q


def _random_spd(seed, n, dtype=jnp.float64):
    g = np.random.default_rng(seed).normal(size=(n, n))
    return jnp.asarray(g @ g.T / n + 0.1 * np.eye(n), dtype)


def _pytree_operator(a):
    """`a` acting on a dict pytree {"w": (2, 3), "b": (n - 6,)}, flattened in ravel order."""
    n = a.shape[0]
    like = {"b": jnp.zeros(n - 6, a.dtype), "w": jnp.zeros((2, 3), a.dtype)}

    def mv(v):
        flat = jnp.concatenate([v["b"], v["w"].ravel()])
        out = a @ flat
        return {"b": out[: n - 6], "w": out[n - 6 :].reshape(2, 3)}

    return lx.FunctionLinearOperator(mv, jax.eval_shape(lambda: like), lx.symmetric_tag), like


# ---------------------------------------------------------------------------------------------
# Hutchinson and Hutch++
# ---------------------------------------------------------------------------------------------


@pytest.mark.float64
@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
def test_hutchinson_value_and_standard_error_match_the_sample_oracle(distribution):
    a = _random_spd(0, 12)
    key, m = jax.random.key(3), 40
    est = jax.jit(
        lambda k: hutchinson_trace(
            lx.MatrixLinearOperator(a), key=k, num_samples=m, distribution=distribution
        )
    )(key)
    assert isinstance(est, TraceEstimate)
    # The documented probes: rows of rademacher/normal(key, (m, n)).
    draw = jax.random.rademacher if distribution == "rademacher" else jax.random.normal
    z = np.asarray(draw(key, (m, 12), jnp.float64))
    samples = np.einsum("mi,ij,mj->m", z, np.asarray(a), z)
    np.testing.assert_allclose(float(est.value), samples.mean(), rtol=1e-12)
    np.testing.assert_allclose(
        float(est.standard_error), samples.std(ddof=1) / np.sqrt(m), rtol=1e-10
    )


@pytest.mark.float64
def test_hutchinson_standard_error_covers_the_true_trace():
    a = _random_spd(1, 15)
    op = lx.MatrixLinearOperator(a)
    trace = float(jnp.trace(a))
    keys = jax.random.split(jax.random.key(7), 20)
    est = jax.vmap(lambda k: hutchinson_trace(op, key=k, num_samples=30))(keys)
    z = np.abs(np.asarray(est.value) - trace) / np.asarray(est.standard_error)
    assert np.sum(z < 4.0) >= 18
    # The standard errors estimate the known Rademacher variance 2 (||A||_F^2 - sum_i A_ii^2) / m.
    an = np.asarray(a)
    var = 2 * (np.sum(an**2) - np.sum(np.diag(an) ** 2)) / 30
    assert 0.6 < np.mean(np.asarray(est.standard_error) ** 2) / var < 1.4


@pytest.mark.float64
def test_hutchinson_is_exact_with_zero_error_on_a_diagonal_matrix():
    d = jnp.arange(1.0, 9.0, dtype=jnp.float64)
    mv = lambda v: d * v
    est = hutchinson_trace(mv, key=jax.random.key(5), num_samples=4, like=d)
    assert float(est.value) == pytest.approx(36.0, rel=1e-14)
    assert float(est.standard_error) <= 1e-14 * 36.0
    diag = hutchinson_diagonal(mv, key=jax.random.key(5), num_samples=2, like=d)
    np.testing.assert_allclose(diag, d, rtol=1e-14)


@pytest.mark.float64
@settings(max_examples=15)
@given(spd_matrices(st.integers(2, 6)), st.integers(0, 99), st.integers(2, 8))
def test_hutchinson_shift_by_a_diagonal_property(matrix, seed, m):
    # With Rademacher probes z^T D z = tr(D) for every probe: adding a diagonal D shifts the value
    # by tr(D) and leaves the standard error unchanged (same key, same probes).
    n = matrix.shape[0]
    d = jnp.arange(1.0, n + 1.0, dtype=matrix.dtype)
    key = jax.random.key(seed)
    base = hutchinson_trace(lx.MatrixLinearOperator(matrix), key=key, num_samples=m)
    shifted = hutchinson_trace(
        lx.MatrixLinearOperator(matrix + jnp.diag(d)), key=key, num_samples=m
    )
    scale = float(jnp.sum(jnp.abs(matrix))) + float(jnp.sum(d))
    assert float(shifted.value - base.value) == pytest.approx(float(jnp.sum(d)), abs=1e-12 * scale)
    assert float(shifted.standard_error) == pytest.approx(
        float(base.standard_error), abs=1e-12 * scale
    )


@pytest.mark.float64
def test_hutchinson_single_probe_has_undefined_error():
    d = jnp.arange(1.0, 4.0, dtype=jnp.float64)
    est = hutchinson_trace(lambda v: d * v, key=jax.random.key(0), num_samples=1, like=d)
    assert float(est.value) == pytest.approx(6.0) and np.isnan(float(est.standard_error))


@pytest.mark.float64
def test_hutchpp_standard_error_is_the_hutchinson_part_oracle():
    a = _random_spd(2, 10)
    key, budget = jax.random.key(11), 13
    est = jax.jit(lambda k: hutchpp_trace(lx.MatrixLinearOperator(a), key=k, num_matvecs=budget))(
        key
    )
    # Independent numpy reimplementation with the documented key split and probe shapes.
    k_sketch = budget // 3
    m = budget - 2 * k_sketch
    ks, kg = jax.random.split(key)
    an = np.asarray(a)
    s = np.asarray(jax.random.rademacher(ks, (k_sketch, 10), jnp.float64))
    q, _ = np.linalg.qr(an @ s.T)
    proj = np.eye(10) - q @ q.T
    g = np.asarray(jax.random.rademacher(kg, (m, 10), jnp.float64)) @ proj
    samples = np.einsum("mi,ij,mj->m", g, an, g)
    np.testing.assert_allclose(
        float(est.value), np.trace(q.T @ an @ q) + samples.mean(), rtol=1e-12
    )
    np.testing.assert_allclose(
        float(est.standard_error), samples.std(ddof=1) / np.sqrt(m), rtol=1e-9
    )
    keys = jax.random.split(jax.random.key(8), 20)
    many = jax.vmap(lambda k: hutchpp_trace(lx.MatrixLinearOperator(a), key=k, num_matvecs=15))(
        keys
    )
    z = np.abs(np.asarray(many.value) - np.trace(an)) / np.asarray(many.standard_error)
    assert np.sum(z < 4.0) >= 18


@pytest.mark.float64
def test_hutchpp_full_sketch_is_exact_on_a_pytree_operator():
    a = _random_spd(3, 9)
    op, _ = _pytree_operator(a)
    est = hutchpp_trace(op, key=jax.random.key(0), num_matvecs=3 * 9 + 3)
    assert float(est.value) == pytest.approx(float(jnp.trace(a)), rel=1e-12)
    assert float(est.standard_error) < 1e-12 * float(jnp.trace(a))


def test_hutchinson_float32_within_a_few_standard_errors():
    a = _random_spd(4, 20, jnp.float32)
    est = hutchinson_trace(lx.MatrixLinearOperator(a), key=jax.random.key(1), num_samples=200)
    assert est.value.dtype == jnp.float32 and est.standard_error.dtype == jnp.float32
    trace = float(np.trace(np.asarray(a, np.float64)))
    assert abs(float(est.value) - trace) < 4 * float(est.standard_error)


# ---------------------------------------------------------------------------------------------
# Lanczos
# ---------------------------------------------------------------------------------------------


@pytest.mark.float64
def test_lanczos_full_recovers_the_top_eigenpairs_of_a_pytree_operator():
    a = _random_spd(5, 12)
    op, like = _pytree_operator(a)
    r = jax.jit(lambda k: lanczos_top_k(op, key=k, k=4, num_iterations=12))(jax.random.key(2))
    assert isinstance(r, LanczosResult)
    evals, evecs = np.linalg.eigh(np.asarray(dense_matrix(op)))
    top = evals[::-1][:4]
    np.testing.assert_allclose(np.asarray(r.eigenvalues), top, rtol=1e-10)
    flat = np.concatenate(
        [np.asarray(r.eigenvectors["b"]), np.asarray(r.eigenvectors["w"]).reshape(4, 6)], axis=1
    )
    overlap = np.abs(np.sum(flat * evecs[:, ::-1][:, :4].T, axis=1))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-8)


@pytest.mark.float64
@settings(max_examples=5)
@given(spd_matrices(st.integers(3, 7), condition_number=st.floats(1.0, 1e3)), st.integers(0, 99))
def test_lanczos_ritz_values_interlace(matrix, seed):
    # Ritz values of a Krylov subspace lie within the spectrum; with m = n they are the spectrum.
    n = matrix.shape[0]
    evals = np.linalg.eigvalsh(np.asarray(matrix))
    op = lx.MatrixLinearOperator(matrix)
    r = lanczos_top_k(op, key=jax.random.key(seed), k=1, num_iterations=max(1, n - 1))
    assert evals[0] - 1e-9 * evals[-1] <= float(r.eigenvalues[0]) <= evals[-1] * (1 + 1e-9)
    full = lanczos_top_k(op, key=jax.random.key(seed), k=n, num_iterations=n)
    np.testing.assert_allclose(np.asarray(full.eigenvalues), evals[::-1], rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Power iteration
# ---------------------------------------------------------------------------------------------


@pytest.mark.float64
def test_power_iteration_matches_eigh_on_an_indefinite_matrix():
    a, q = _symmetric(6, [-5.0, 3.0, 2.5, 1.0, -0.5, 0.2, 0.1, 0.0])
    r = jax.jit(lambda k: power_iteration(lx.MatrixLinearOperator(a), key=k, max_steps=150))(
        jax.random.key(0)
    )
    assert isinstance(r, PowerIterationResult)
    evals, evecs = np.linalg.eigh(np.asarray(a))
    top = np.argmax(np.abs(evals))
    assert float(r.eigenvalue) == pytest.approx(evals[top], rel=1e-12)
    assert abs(float(np.dot(np.asarray(r.eigenvector), evecs[:, top]))) == pytest.approx(1.0, 1e-12)
    assert int(r.num_matvecs) == 151


@pytest.mark.float64
def test_power_iteration_equals_a_numpy_reference_loop():
    # A small spectral gap so that the value depends on the exact number of steps.
    a, _ = _symmetric(7, [4.0, 3.8, 1.0, 0.5, 0.1])
    key, steps = jax.random.key(4), 9
    r = power_iteration(lambda v: a @ v, key=key, max_steps=steps, like=jnp.zeros(5))
    v = np.asarray(jax.random.normal(key, (5,), jnp.float64))
    v = v / np.linalg.norm(v)
    an = np.asarray(a)
    for _ in range(steps):
        w = an @ v
        v = w / np.linalg.norm(w)
    assert float(r.eigenvalue) == pytest.approx(v @ an @ v, rel=1e-13)
    np.testing.assert_allclose(np.asarray(r.eigenvector), v, rtol=1e-12, atol=1e-14)


@pytest.mark.float64
def test_power_iteration_on_a_pytree_operator():
    a = _random_spd(8, 10)
    op, like = _pytree_operator(a)
    r = power_iteration(op, key=jax.random.key(1), max_steps=300)
    assert jax.tree.structure(r.eigenvector) == jax.tree.structure(like)
    assert float(r.eigenvalue) == pytest.approx(float(np.linalg.eigvalsh(np.asarray(a))[-1]), 1e-9)


@pytest.mark.float64
@settings(max_examples=15)
@given(
    spd_matrices(st.integers(2, 6), condition_number=st.floats(1.0, 100.0)),
    st.integers(0, 99),
    st.floats(0.1, 10.0),
)
def test_power_iteration_properties(matrix, seed, scale):
    # A Rayleigh quotient of a unit vector lies in the spectrum's hull, and the method commutes
    # with positive scaling of the operator.
    evals = np.linalg.eigvalsh(np.asarray(matrix))
    key = jax.random.key(seed)
    r = power_iteration(lx.MatrixLinearOperator(matrix), key=key, max_steps=5)
    rs = power_iteration(lx.MatrixLinearOperator(scale * matrix), key=key, max_steps=5)
    assert evals[0] * (1 - 1e-12) <= float(r.eigenvalue) <= evals[-1] * (1 + 1e-12)
    assert float(jnp.linalg.norm(r.eigenvector)) == pytest.approx(1.0, 1e-12)
    assert float(rs.eigenvalue) == pytest.approx(scale * float(r.eigenvalue), rel=1e-10)


def test_power_iteration_float32():
    a, _ = _symmetric(9, [10.0, 2.0, 1.0, 0.5], jnp.float32)
    r = power_iteration(lx.MatrixLinearOperator(a), key=jax.random.key(0), max_steps=40)
    assert r.eigenvalue.dtype == jnp.float32
    assert float(r.eigenvalue) == pytest.approx(10.0, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_estimators_bad_input():
    a = jnp.eye(4)
    op = lx.MatrixLinearOperator(a)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="like"):
        hutchinson_trace(lambda v: v, key=key, num_samples=2)
    with pytest.raises(TypeError, match="operator"):
        hutchinson_trace(a, key=key, num_samples=2)
    with pytest.raises(ValueError, match="num_samples"):
        hutchinson_trace(op, key=key, num_samples=0)
    # Under the tests' runtime type checking the Literal annotation answers first (a TypeError).
    with pytest.raises((ValueError, TypeError), match="distribution"):
        hutchinson_diagonal(op, key=key, num_samples=2, distribution="uniform")
    with pytest.raises(ValueError, match="num_matvecs"):
        hutchpp_trace(op, key=key, num_matvecs=2)
    with pytest.raises(ValueError, match="num_iterations"):
        lanczos_top_k(op, key=key, k=1, num_iterations=5)
    with pytest.raises(ValueError, match="`k`"):
        lanczos_top_k(op, key=key, k=3, num_iterations=2)
    with pytest.raises(ValueError, match="max_steps"):
        power_iteration(op, key=key, max_steps=0)
    # `key` is keyword-only and required.
    with pytest.raises(TypeError):
        hutchinson_trace(op, key, num_samples=2)
    with pytest.raises(TypeError):
        power_iteration(op, max_steps=3)
