"""Influence = leave-one-out on linear (ridge) regression: an exact identity with the leverage
correction, checked by brute-force refits (property-based)."""

import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from respax.core import GaussianLoss
from respax.interp import Exact, fit_factors, loo_correlation, pairwise_scores

LOSS = GaussianLoss()


def linear(w, x):
    return jnp.atleast_1d(x @ w)


def _prediction(outputs, targets):
    return outputs[0]


def _ridge(x, y, ridge):
    n, d = x.shape
    return np.linalg.solve(x.T @ x / n + ridge * np.eye(d), x.T @ y / n)


def _data(seed, n, d):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + 0.5 * rng.normal(size=n)
    return x, y


@pytest.mark.float64
@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), ridge=st.floats(1e-3, 1.0), spread=st.floats(0.1, 10.0))
def test_influence_times_leverage_correction_equals_loo(seed, ridge, spread):
    # Fixed shapes (one compilation); the data, its scale and the ridge vary.
    n, d = 16, 3
    x, y = _data(seed, n, d)
    x = x * spread
    theta = _ridge(x, y, ridge)
    xq = x[:3] + 0.1
    train = (jnp.asarray(x), jnp.asarray(y[:, None]))
    query = (jnp.asarray(xq), jnp.zeros((3, 1)))
    w = jnp.asarray(theta)
    f = fit_factors(linear, LOSS, w, train, strategy=Exact())
    # Measurement = the query's prediction, which is linear in the parameters.
    s = pairwise_scores(
        f, linear, LOSS, w, query, train, damping=ridge, normalize=True, measurement=_prediction
    )
    h = np.diag(x @ np.linalg.solve(x.T @ x / n + ridge * np.eye(d), x.T)) / n
    predicted = np.asarray(s) / (1.0 - h)[None, :]
    loo = np.stack([xq @ _loo_theta(x, y, ridge, t) - xq @ theta for t in range(n)], axis=1)
    np.testing.assert_allclose(predicted, loo, rtol=1e-8, atol=1e-11)


def _loo_theta(x, y, ridge, t):
    """Minimiser of (1/N) sum_{i != t} loss_i + ridge/2 |w|^2 (the same 1/N as the full fit)."""
    n, d = x.shape
    xr, yr = np.delete(x, t, 0), np.delete(y, t)
    return np.linalg.solve(xr.T @ xr / n + ridge * np.eye(d), xr.T @ yr / n)


@pytest.mark.float64
def test_influence_predicts_loo_query_loss_pearson():
    n, d, ridge = 200, 5, 1e-2
    x, y = _data(0, n, d)
    theta = _ridge(x, y, ridge)
    xq, yq = _data(1, 10, d)
    train = (jnp.asarray(x), jnp.asarray(y[:, None]))
    query = (jnp.asarray(xq), jnp.asarray(yq[:, None]))
    w = jnp.asarray(theta)
    f = fit_factors(linear, LOSS, w, train)
    s = pairwise_scores(f, linear, LOSS, w, query, train, damping=ridge, normalize=True)
    qloss = lambda th: 0.5 * (xq @ th - yq) ** 2
    actual = np.stack([qloss(_loo_theta(x, y, ridge, t)) - qloss(theta) for t in range(n)], 1)
    corr = loo_correlation(s, jnp.asarray(actual))
    assert float(jnp.mean(corr["pearson"])) >= 0.99
