"""PBRF, proximal response, LOO retraining and the five terms against closed forms on linear
regression (where every objective is quadratic), plus a small MLP run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from respax.core import CG, GaussianLoss, SoftmaxCrossEntropy
from respax.interp import (
    TERMS,
    Exact,
    MatrixFree,
    fit_factors,
    five_terms,
    linearized_pbrf,
    loo_retrain,
    pbrf,
    proximal_response,
    response_distances,
    retrain,
)

LOSS = GaussianLoss()
N, D = 20, 3


def linear(w, x):
    return jnp.atleast_1d(x @ w)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D))
    y = x @ rng.normal(size=D) + 0.3 * rng.normal(size=N)
    return x, y


def _quadratic_response(x, y, theta_s, damping, removed, eps, bregman):
    """Closed form: (G + λI − ε x_m x_mᵀ)(θ − θs) = ε g_m(θs) [− ∇J(θs) for the raw loss]."""
    g_mat = x.T @ x / N
    grad_j = x.T @ (x @ theta_s - y) / N
    out = []
    for m in removed:
        a = g_mat + damping * np.eye(D) - eps * np.outer(x[m], x[m])
        rhs = eps * x[m] * (x[m] @ theta_s - y[m])
        if not bregman:
            rhs = rhs - grad_j
        out.append(theta_s + np.linalg.solve(a, rhs))
    return np.stack(out)


@pytest.mark.float64
def test_pbrf_proximal_and_linearized_match_closed_forms():
    x, y = _data()
    # A non-converged θˢ: the PBRF still starts at its own minimiser, the proximal response not.
    theta_s = np.linalg.lstsq(x, y, rcond=None)[0] + 0.05
    train = (jnp.asarray(x), jnp.asarray(y[:, None]))
    removed = jnp.arange(N)
    damping, eps = 0.3, 1.0 / N
    opt = optax.sgd(0.5)
    got = pbrf(
        linear,
        LOSS,
        jnp.asarray(theta_s),
        train,
        removed,
        damping=damping,
        optimizer=opt,
        num_steps=400,
    )
    np.testing.assert_allclose(
        got, _quadratic_response(x, y, theta_s, damping, range(N), eps, True), atol=1e-10
    )
    got = proximal_response(
        linear,
        LOSS,
        jnp.asarray(theta_s),
        train,
        removed,
        damping=damping,
        optimizer=opt,
        num_steps=400,
    )
    np.testing.assert_allclose(
        got, _quadratic_response(x, y, theta_s, damping, range(N), eps, False), atol=1e-10
    )
    f = fit_factors(linear, LOSS, jnp.asarray(theta_s), train, strategy=Exact())
    lin = linearized_pbrf(f, linear, LOSS, jnp.asarray(theta_s), train, removed, damping=damping)
    g_mat = x.T @ x / N + damping * np.eye(D)
    grads = x * (x @ theta_s - y)[:, None]
    np.testing.assert_allclose(lin, theta_s + eps * np.linalg.solve(g_mat, grads.T).T, atol=1e-12)


@pytest.mark.float64
def test_loo_retrain_and_weighted_retrain_match_brute_force():
    x, y = _data()
    train = (jnp.asarray(x), jnp.asarray(y[:, None]))
    got = loo_retrain(
        linear,
        LOSS,
        jnp.zeros(D),
        train,
        jnp.array([0, 5]),
        optimizer=optax.sgd(0.5),
        num_steps=500,
    )
    for row, m in zip(got, (0, 5), strict=True):
        xr, yr = np.delete(x, m, 0), np.delete(y, m)
        np.testing.assert_allclose(row, np.linalg.lstsq(xr, yr, rcond=None)[0], atol=1e-9)
    masks = jnp.asarray(np.random.default_rng(1).random((3, N)) < 0.7, jnp.float64)
    got = retrain(linear, LOSS, jnp.zeros(D), train, masks, optimizer=optax.sgd(0.5), num_steps=800)
    for row, mask in zip(got, np.asarray(masks, bool), strict=True):
        np.testing.assert_allclose(row, np.linalg.lstsq(x[mask], y[mask], rcond=None)[0], atol=1e-8)


@pytest.mark.float64
def test_five_terms_on_linear_regression_vanish_where_theory_says():
    x, y = _data()
    train = (jnp.asarray(x), jnp.asarray(y[:, None]))
    theta_s = jnp.asarray(np.linalg.lstsq(x, y, rcond=None)[0])  # the exact minimiser
    exact = fit_factors(linear, LOSS, theta_s, train, strategy=Exact())
    out = five_terms(
        linear,
        LOSS,
        theta_s,
        jnp.zeros(D),
        train,
        jnp.arange(4),
        damping=0.1,
        train_optimizer=optax.sgd(0.5),
        train_steps=500,
        response_optimizer=optax.sgd(0.5),
        response_steps=500,
        solver_factors=exact,
        exact_factors=exact,
    )
    assert set(out["param"]) == set(TERMS) == set(out["output"])
    p = out["param"]
    assert float(jnp.max(p["warm_start_gap"])) < 1e-9  # convex: cold = warm
    assert float(jnp.max(p["nonconvergence_gap"])) < 1e-9  # at a minimum: proximal = PBRF
    assert float(jnp.max(p["solver_error"])) == 0.0  # the same exact solver
    assert float(jnp.min(p["proximity_gap"])) > 1e-4  # damping changes the response
    assert float(jnp.min(p["linearization_error"])) > 0.0


def _mlp_problem():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {"w1": 0.5 * jax.random.normal(k1, (4, 8)), "w2": 0.5 * jax.random.normal(k2, (8, 3))}
    mlp = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
    x = jax.random.normal(k3, (16, 4))
    y = jnp.arange(16) % 3
    return params, mlp, x, y


@pytest.mark.slow
def test_five_terms_mlp_are_distances_that_chain_and_term5_is_the_solver_error():
    params, mlp, x, y = _mlp_problem()
    loss = SoftmaxCrossEntropy()
    opt = optax.adam(1e-2)
    trained = retrain(mlp, loss, params, (x, y), jnp.ones((1, 16)), optimizer=opt, num_steps=20)
    trained = jax.tree.map(lambda a: a[0], trained)
    solver = fit_factors(mlp, loss, trained, (x, y), strategy=MatrixFree(CG(5, rtol=0.0)))
    out = five_terms(
        mlp,
        loss,
        trained,
        params,
        (x, y),
        jnp.array([0, 1]),
        damping=1e-2,
        train_optimizer=opt,
        train_steps=20,
        response_optimizer=opt,
        response_steps=20,
        solver_factors=solver,
    )
    for space in ("param", "output"):
        for term in TERMS:
            v = out[space][term]
            assert v.shape == (2,) and bool(jnp.all(jnp.isfinite(v))) and bool(jnp.all(v >= 0))
    # The terms are the distances between consecutive responses (cold, warm, proximal, PBRF,
    # linearized, solver), so the cold-to-solver distance is at most their sum (triangle
    # inequality) in both spaces.
    resp = out["responses"]
    ends = response_distances(mlp, resp["cold"], resp["solver"], x)
    for space in ("param", "output"):
        total = sum(out[space][term] for term in TERMS)
        assert bool(jnp.all(ends[space] <= total * (1 + 1e-5) + 1e-7)), space
    # Term 5 is the approximate solver's error: a solver run longer has a smaller one.
    longer = fit_factors(mlp, loss, trained, (x, y), strategy=MatrixFree(CG(60, rtol=0.0)))
    removed = jnp.array([0, 1])
    better = linearized_pbrf(longer, mlp, loss, trained, (x, y), removed, damping=1e-2)
    term5_longer = response_distances(mlp, resp["linearized"], better, x)["param"]
    assert bool(jnp.all(term5_longer < out["param"][TERMS[-1]]))


def test_pbrf_bad_input_raises_clear_errors():
    trained, mlp, x, y = _mlp_problem()
    loss = SoftmaxCrossEntropy()
    opt = optax.adam(1e-2)
    with pytest.raises(ValueError, match="damping"):
        pbrf(mlp, loss, trained, (x, y), jnp.array([0]), damping=0.0, optimizer=opt, num_steps=1)
    with pytest.raises(TypeError, match="optimizer"):
        pbrf(mlp, loss, trained, (x, y), jnp.array([0]), damping=0.1, optimizer="adam", num_steps=1)
    with pytest.raises((TypeError, ValueError), match="removed"):
        pbrf(mlp, loss, trained, (x, y), jnp.array([[0]]), damping=0.1, optimizer=opt, num_steps=1)
