"""Cold-start and warm-start bilevel loops: the min-norm outer solution of cold start on an
underdetermined quadratic (Vicol et al. 2022, Sec. 3), vmap over seeds/hyperparameters, chunking."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import pytest

from respax.core import Neumann
from respax.implicit_diff import (
    BilevelConfig,
    FullUnroll,
    Implicit,
    bilevel_init,
    bilevel_optimize,
    bilevel_run,
    hypergradient,
)
from respax.testing import quadratic_bilevel_problem

D, P, M = 8, 12, 5  # inner dim, outer dim (overparameterized: P > M), outer residual dim


def _quadratic(seed=0):
    problem = quadratic_bilevel_problem(D, P, M, seed=seed)
    inner, outer = problem.functions(jnp.float64)
    return inner, outer, problem.jacobian(), problem.target  # F(u, w*(u)) = 1/2 |jac u - t|^2


def _outer_lr(jac):
    return 1.0 / np.linalg.norm(jac, 2) ** 2


@pytest.mark.float64
def test_cold_start_exact_converges_to_min_norm_solution():
    inner, outer, jac, t = _quadratic()
    u_dagger = np.linalg.pinv(jac) @ t
    config = BilevelConfig(
        Implicit(lx.Cholesky()),
        optax.sgd(_outer_lr(jac)),
        warm_start=False,
        inner_optimizer=optax.sgd(0.25),
        num_inner_steps=200,  # (1 - 1/16)^200 ~ 2e-6 per ... from w=0: converged to ~1e-6
    )
    run = jax.jit(lambda u0, w0: bilevel_optimize(config, outer, inner, u0, w0, 600))
    state, history = run(jnp.zeros(P), jnp.zeros(D))
    u = np.asarray(state.outer_params)
    assert np.linalg.norm(u - u_dagger) / np.linalg.norm(u_dagger) <= 1e-6
    assert history.outer_loss.shape == (600,)
    assert float(history.outer_loss[-1]) <= 1e-12


@pytest.mark.float64
def test_warm_start_unrolled_solves_outer_problem_but_not_min_norm():
    inner, outer, jac, t = _quadratic()
    u_dagger = np.linalg.pinv(jac) @ t
    config = BilevelConfig(
        FullUnroll(optax.sgd(0.25), 2), optax.sgd(0.5 * _outer_lr(jac)), warm_start=True
    )
    state, _ = jax.jit(lambda u0, w0: bilevel_optimize(config, outer, inner, u0, w0, 3000))(
        jnp.zeros(P), jnp.zeros(D)
    )
    u = np.asarray(state.outer_params)
    assert np.linalg.norm(jac @ u - t) <= 1e-6 * np.linalg.norm(t)  # an outer solution
    assert np.linalg.norm(u - u_dagger) / np.linalg.norm(u_dagger) >= 1e-3  # not the min-norm one


@pytest.mark.float64
def test_chunked_run_equals_single_run_and_vmaps_over_seeds_and_hyperparameters():
    inner, outer, jac, _ = _quadratic(1)
    lr = _outer_lr(jac)

    def run(u0, outer_lr, chunks):
        config = BilevelConfig(
            Implicit(Neumann(5, 0.25)),
            optax.sgd(outer_lr),
            warm_start=True,
            inner_optimizer=optax.sgd(0.25),
            num_inner_steps=3,
        )
        state = bilevel_init(config, u0, jnp.zeros(D))
        for n in chunks:
            state, _ = bilevel_run(config, outer, inner, state, n)
        return state.outer_params

    u0s = jnp.asarray(np.random.default_rng(0).normal(size=(3, P)))
    lrs = jnp.asarray([0.5 * lr, lr, 0.25 * lr])
    single = jax.jit(jax.vmap(lambda u0, lr_: run(u0, lr_, (20,))))(u0s, lrs)
    chunked = jax.jit(jax.vmap(lambda u0, lr_: run(u0, lr_, (5, 15))))(u0s, lrs)
    np.testing.assert_allclose(chunked, single, rtol=1e-12, atol=1e-14)
    for i in range(3):
        np.testing.assert_allclose(
            single[i], jax.jit(run, static_argnums=2)(u0s[i], lrs[i], (20,)), rtol=1e-10, atol=1e-12
        )


def test_config_errors():
    with pytest.raises(ValueError, match="inner_optimizer"):
        BilevelConfig(Implicit(), optax.sgd(0.1))
    with pytest.raises(ValueError, match="None"):
        BilevelConfig(FullUnroll(optax.sgd(0.1), 3), optax.sgd(0.1), num_inner_steps=3)
    with pytest.raises(ValueError, match="num_inner_steps"):
        BilevelConfig(Implicit(), optax.sgd(0.1), inner_optimizer=optax.sgd(0.1), num_inner_steps=0)
    with pytest.raises(TypeError, match="method"):
        BilevelConfig("implicit", optax.sgd(0.1))
    config = BilevelConfig(FullUnroll(optax.sgd(0.1), 3), optax.sgd(0.1))
    state = bilevel_init(config, jnp.zeros(2), jnp.zeros(2))
    with pytest.raises(ValueError, match="num_outer_steps"):
        bilevel_run(config, lambda u, w: jnp.sum(w), lambda u, w: jnp.sum(w), state, 0)


def test_cold_start_inner_sampler_draws_a_new_init_every_outer_step():
    # Oracle: a Python loop of hypergradients, each from w0 = sampler(fold_in(key, t)).
    b = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)))
    inner = lambda u, w: 0.5 * jnp.sum((w - b @ u) ** 2)
    outer = lambda u, w: 0.5 * jnp.sum((w - 1.0) ** 2)
    method = FullUnroll(optax.sgd(0.3), 2)  # 2 steps from w0: the result depends on w0
    sampler = lambda key: jax.random.normal(key, (4,))
    config = BilevelConfig(method, optax.sgd(0.1), inner_sampler=sampler)
    key, u0, w_fixed = jax.random.key(7, impl="rbg"), jnp.zeros(3), jnp.zeros(4)
    state, history = jax.jit(
        lambda u, w, k: bilevel_optimize(config, outer, inner, u, w, 5, key=k)
    )(u0, w_fixed, key)

    @jax.jit
    def oracle(u, key):
        def step(u, t):
            w0 = sampler(jax.random.fold_in(key, t))
            g, info = hypergradient(outer, inner, u, w0, method)
            return u - 0.1 * g, info.outer_loss

        return jax.lax.scan(step, u, jnp.arange(5))

    u, losses = oracle(u0, key)
    np.testing.assert_allclose(state.outer_params, u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history.outer_loss, losses, rtol=1e-5, atol=1e-6)

    fixed_config = BilevelConfig(method, optax.sgd(0.1))
    fixed, _ = jax.jit(lambda u, w: bilevel_optimize(fixed_config, outer, inner, u, w, 5))(
        u0, w_fixed
    )
    assert not np.allclose(fixed.outer_params, state.outer_params)  # the draws are used

    with pytest.raises(ValueError, match="key"):
        bilevel_init(config, u0, w_fixed)
    with pytest.raises(ValueError, match="cold start"):
        BilevelConfig(method, optax.sgd(0.1), warm_start=True, inner_sampler=sampler)
    with pytest.raises(TypeError, match="inner_sampler"):
        BilevelConfig(method, optax.sgd(0.1), inner_sampler="normal")


@pytest.mark.float64
def test_history_records_the_relative_solve_residual_and_flags_a_divergent_neumann_series():
    """The history's `linear_relative_residual` is the IFT solve's true residual over the
    right-hand side: for Neumann(K, alpha) on the quadratic (inner Hessian A, eigenvalues 1..4)
    it is ||(I - alpha A)^K b|| / ||b||, small when alpha * 4 < 2 and growing like
    |1 - 4 alpha|^K when alpha * 4 > 2."""
    inner, outer, _, _ = _quadratic()
    w0, u0 = jnp.zeros(D), jnp.ones(P)
    a = np.asarray(jax.hessian(lambda w: inner(u0, w))(w0))

    def relative_residual(alpha, k):
        config = BilevelConfig(
            Implicit(Neumann(k, alpha), throw=False),  # a divergent series is the point
            optax.sgd(0.0),
            inner_optimizer=optax.sgd(0.25),
            num_inner_steps=5,
        )
        state, history = jax.jit(lambda: bilevel_optimize(config, outer, inner, u0, w0, 1))()
        b = np.asarray(jax.grad(lambda w: outer(u0, w))(state.inner_params))
        want = np.linalg.matrix_power(np.eye(D) - alpha * a, k) @ b
        got = float(history.linear_relative_residual[0])
        np.testing.assert_allclose(got, np.linalg.norm(want) / np.linalg.norm(b), rtol=1e-10)
        return got

    assert relative_residual(0.25, 30) < 1e-3  # alpha * lambda_max = 1: converges
    assert relative_residual(0.6, 30) > 1e3  # alpha * lambda_max = 2.4 > 2: diverges
    # Unrolled hypergradients have no solve: the residual is recorded as 0.
    unrolled = BilevelConfig(FullUnroll(optax.sgd(0.25), 3), optax.sgd(0.1))
    _, history = jax.jit(lambda: bilevel_optimize(unrolled, outer, inner, u0, w0, 2))()
    np.testing.assert_array_equal(history.linear_relative_residual, 0.0)


@pytest.mark.float64
def test_history_records_the_outer_trajectory():
    """`history.outer_params[t]` is u_t: the same as running one outer step at a time."""
    inner, outer, _, _ = _quadratic()
    w0, u0 = jnp.zeros(D), jnp.ones(P)
    config = BilevelConfig(FullUnroll(optax.sgd(0.25), 3), optax.sgd(0.1))
    run = jax.jit(lambda s, n: bilevel_run(config, outer, inner, s, n), static_argnums=1)
    state = bilevel_init(config, u0, w0)
    _, history = run(state, 4)
    us = []
    for _ in range(4):
        us.append(state.outer_params)
        state, _ = run(state, 1)
    np.testing.assert_allclose(history.outer_params, np.stack(us), rtol=1e-6)
