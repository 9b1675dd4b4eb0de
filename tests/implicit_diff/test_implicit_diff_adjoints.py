"""`solve_inner(..., adjoint=...)`: `jax.grad` through the inner solve equals the hypergradient of
the same method and the closed form (Implicit), autodiff through the same steps (Unrolled,
Truncated); bad input."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import pytest

from respax.implicit_diff import (
    FullUnroll,
    Implicit,
    Truncated,
    TruncatedUnroll,
    Unrolled,
    hypergradient,
    solve_inner,
)
from respax.testing import tree_allclose
from tests.helpers import exact_linear_solvers, solver_id

D, P = 5, 3


def _quadratic(seed=0, dtype=np.float64):
    """f(u, w) = 1/2 w^T A w - w^T B u (w* = A^{-1} B u); F(u, w) = 1/2 |w - t|^2 + 1/2 |u|^2."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    a = jnp.asarray((q * np.linspace(1.0, 4.0, D)) @ q.T, dtype)
    b = jnp.asarray(rng.normal(size=(D, P)), dtype)
    t = jnp.asarray(rng.normal(size=D), dtype)
    inner = lambda u, w: 0.5 * w @ a @ w - w @ b @ u
    outer = lambda u, w: 0.5 * jnp.sum((w - t) ** 2) + 0.5 * jnp.sum(u**2)

    def closed_form(u):
        w = np.linalg.solve(a, b @ u)
        return b.T @ np.linalg.solve(a, w - t) + u

    return inner, outer, closed_form, jnp.asarray(rng.normal(size=P), dtype)


@pytest.mark.float64
@pytest.mark.parametrize("linear_solver", exact_linear_solvers(jnp.float64), ids=solver_id)
def test_implicit_adjoint_is_the_ift_hypergradient(linear_solver):
    inner, outer, closed_form, u = _quadratic()
    w0 = jnp.zeros(D)
    adjoint = Implicit(linear_solver)

    def total(u):
        w, _ = solve_inner(inner, u, w0, optax.sgd(0.25), max_steps=500, tol=1e-12, adjoint=adjoint)
        return outer(u, w)

    g = jax.jit(jax.grad(total))(u)
    np.testing.assert_allclose(g, closed_form(np.asarray(u)), rtol=1e-9)
    w_star, info = solve_inner(inner, u, w0, optax.sgd(0.25), max_steps=500, tol=1e-12)
    assert bool(info.converged)
    g_hyper, _ = hypergradient(outer, inner, u, w_star, adjoint)
    np.testing.assert_allclose(g, g_hyper, rtol=1e-9)


@pytest.mark.float64
def test_damped_implicit_adjoint():
    inner, outer, _, u = _quadratic(1)
    w0 = jnp.zeros(D)
    adjoint = Implicit(lx.Cholesky(), damping=0.5)

    def total(u):
        w, _ = solve_inner(inner, u, w0, optax.sgd(0.25), max_steps=500, tol=1e-12, adjoint=adjoint)
        return outer(u, w)

    w_star, _ = solve_inner(inner, u, w0, optax.sgd(0.25), max_steps=500, tol=1e-12)
    g_hyper, _ = hypergradient(outer, inner, u, w_star, adjoint)
    np.testing.assert_allclose(jax.grad(total)(u), g_hyper, rtol=1e-9)


@pytest.mark.float64
@pytest.mark.parametrize("checkpoint_branching", [None, 3])
def test_unrolled_adjoint_is_autodiff_through_the_steps(checkpoint_branching):
    inner, outer, _, u = _quadratic(2)
    w0 = jnp.ones(D)
    opt = optax.sgd(0.1)
    adjoint = Unrolled(checkpoint_branching=checkpoint_branching)
    total = lambda u: outer(u, solve_inner(inner, u, w0, opt, max_steps=20, adjoint=adjoint)[0])
    g_method, _ = hypergradient(outer, inner, u, w0, FullUnroll(opt, 20))
    assert tree_allclose(jax.grad(total)(u), g_method, rtol=1e-12)


@pytest.mark.float64
def test_truncated_adjoint_matches_the_truncated_method_and_differs_from_full():
    inner, outer, _, u = _quadratic(3)
    w0 = jnp.ones(D)
    opt = optax.sgd(0.1)
    total = lambda u, adjoint: outer(
        u, solve_inner(inner, u, w0, opt, max_steps=20, adjoint=adjoint)[0]
    )
    g = jax.grad(total)(u, Truncated(backprop_steps=4))
    g_method, _ = hypergradient(outer, inner, u, w0, TruncatedUnroll(opt, 20, 4))
    np.testing.assert_allclose(g, g_method, rtol=1e-12)
    g_full = jax.grad(total)(u, Unrolled())
    assert not np.allclose(g, g_full, rtol=1e-3)
    np.testing.assert_allclose(jax.grad(total)(u, Truncated(backprop_steps=20)), g_full, 1e-12)


def test_bad_adjoint_input():
    inner, outer, _, u = _quadratic(4, np.float32)
    w0 = jnp.zeros(D, jnp.float32)
    with pytest.raises(ValueError, match="tol"):
        solve_inner(inner, u, w0, optax.sgd(0.1), max_steps=5, tol=1e-3, adjoint=Unrolled())
    with pytest.raises(ValueError, match="backprop_steps"):
        solve_inner(inner, u, w0, optax.sgd(0.1), max_steps=5, adjoint=Truncated(6))
    with pytest.raises(TypeError, match="adjoint"):
        solve_inner(inner, u, w0, optax.sgd(0.1), max_steps=5, adjoint="implicit")
    with pytest.raises(ValueError, match="checkpoint_branching"):
        Unrolled(checkpoint_branching=1)
