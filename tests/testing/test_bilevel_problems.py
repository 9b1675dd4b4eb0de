"""`quadratic_bilevel_problem`: its closed forms (inner solution, reduced outer loss, min-norm outer
solution) against JAX derivatives and a brute-force least-squares check, for any sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from respax.testing import QuadraticBilevelProblem, quadratic_bilevel_problem

sizes = st.tuples(st.integers(1, 6), st.integers(1, 8), st.integers(1, 4))


@pytest.mark.float64
@settings(max_examples=10)
@given(dims=sizes, seed=st.integers(0, 2**16))
def test_closed_forms_match_jax_derivatives(dims, seed):
    d, p, m = dims
    problem = quadratic_bilevel_problem(d, p, m, seed=seed)
    assert isinstance(problem, QuadraticBilevelProblem)
    np.testing.assert_allclose(problem.a, problem.a.T, atol=1e-14)
    np.testing.assert_allclose(np.linalg.eigvalsh(problem.a), np.linspace(1, 4, d), rtol=1e-12)
    inner, outer = problem.functions(jnp.float64)
    u = np.random.default_rng(seed + 1).normal(size=p)
    w_star = problem.inner_solution(u)
    # w*(u) is the inner minimizer: the gradient vanishes and the Hessian is A.
    np.testing.assert_allclose(jax.grad(inner, 1)(u, w_star), 0.0, atol=1e-11)
    np.testing.assert_allclose(jax.hessian(inner, 1)(u, w_star), problem.a, rtol=1e-12)
    # The reduced outer loss is 1/2 |M u - t|^2, and M is the total derivative of C w*(u).
    jac = problem.jacobian()
    np.testing.assert_allclose(
        outer(u, w_star), 0.5 * np.sum((jac @ u - problem.target) ** 2), rtol=1e-10
    )
    np.testing.assert_allclose(
        jax.jacobian(lambda v: problem.c @ jnp.linalg.solve(problem.a, problem.b @ v))(u),
        jac,
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.float64
@settings(max_examples=20)
@given(dims=sizes, seed=st.integers(0, 2**16))
def test_min_norm_solution_is_the_least_norm_least_squares_solution(dims, seed):
    d, p, m = dims
    problem = quadratic_bilevel_problem(d, p, m, seed=seed)
    jac, t = problem.jacobian(), problem.target
    u_dagger = problem.min_norm_solution()
    # A least-squares solution: the normal equations hold.
    np.testing.assert_allclose(jac.T @ (jac @ u_dagger - t), 0.0, atol=1e-9)
    # In the row space of M (orthogonal to its null space), so adding any null vector grows it.
    null = np.linalg.svd(jac)[2][np.linalg.matrix_rank(jac) :]
    if null.size:
        np.testing.assert_allclose(null @ u_dagger, 0.0, atol=1e-9)
        other = u_dagger + null.T @ np.random.default_rng(seed).normal(size=null.shape[0])
        assert np.linalg.norm(other) > np.linalg.norm(u_dagger)
        np.testing.assert_allclose(jac @ other, jac @ u_dagger, atol=1e-9)


def test_same_seed_same_problem_and_dtypes():
    first, second = (quadratic_bilevel_problem(4, 6, 2, seed=3) for _ in range(2))
    for name in ("a", "b", "c", "target"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
        assert getattr(first, name).dtype == np.float64
    other = quadratic_bilevel_problem(4, 6, 2, seed=4)
    assert not np.array_equal(first.b, other.b)
    inner, outer = first.functions(jnp.float32)
    u, w = jnp.ones(6, jnp.float32), jnp.ones(4, jnp.float32)
    assert inner(u, w).dtype == jnp.float32 and outer(u, w).dtype == jnp.float32
    np.testing.assert_allclose(
        inner(u, w),
        0.5 * np.ones(4) @ first.a @ np.ones(4) - np.ones(4) @ first.b @ np.ones(6),
        rtol=1e-5,
    )


@pytest.mark.parametrize("args, match", [((0, 3, 2), "inner_dim"), ((3, -1, 2), "outer_dim")])
def test_bad_sizes_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        quadratic_bilevel_problem(*args)
    with pytest.raises(TypeError, match="outputs"):
        quadratic_bilevel_problem(3, 3, 1.5)
