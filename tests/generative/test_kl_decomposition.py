"""The ELBO decomposition: the telescoping identity, the MSS weights, brute-force loops and the
known total correlation of Gaussian aggregate posteriors."""

import functools
import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax.scipy.stats import multivariate_normal

from respax.generative import (
    KLDecomposition,
    gaussian_log_density,
    kl_decomposition,
    kl_decomposition_full,
    mixture_log_density,
    mss_log_weights,
)

_kl = jax.jit(kl_decomposition, static_argnums=(3, 4))


def _codes(key, b, d, dtype=jnp.float64):
    k1, k2, k3 = jax.random.split(key, 3)
    mu = jax.random.normal(k1, (b, d), dtype)
    logvar = jax.random.uniform(k2, (b, d), dtype, -2.0, 0.5)
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(k3, (b, d), dtype)
    return z, mu, logvar


def _log_normal(x, m, v):
    return -0.5 * (np.log(2 * np.pi * v) + (x - m) ** 2 / v)


def _brute_force(z, mu, logvar, n, estimator):
    """Per-sample log q(z), log prod q(z_d) with explicit Python loops over the batch."""
    z, mu, var = map(np.asarray, (z, mu, np.exp(logvar)))
    b, d = z.shape
    m = b - 1
    log_qz, log_prod = [], []
    for i in range(b):
        if estimator == "mws":
            w = [1.0 / (n * b)] * b
        else:
            w = [1.0 / m] * b
            w[i] = 1.0 / n
            w[(i + 1) % b] = (n - m) / (n * m)
        joint = sum(
            w[j] * math.exp(sum(_log_normal(z[i, k], mu[j, k], var[j, k]) for k in range(d)))
            for j in range(b)
        )
        marg = [
            sum(w[j] * math.exp(_log_normal(z[i, k], mu[j, k], var[j, k])) for j in range(b))
            for k in range(d)
        ]
        log_qz.append(math.log(joint))
        log_prod.append(sum(math.log(x) for x in marg))
    return np.asarray(log_qz), np.asarray(log_prod)


@pytest.mark.float64
@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_brute_force(estimator):
    z, mu, logvar = _codes(jax.random.key(0), 5, 3)
    out = jax.jit(kl_decomposition, static_argnums=(3, 4))(z, mu, logvar, 40, estimator)
    log_qz, log_prod = _brute_force(z, mu, logvar, 40, estimator)
    np.testing.assert_allclose(out.log_qz, log_qz, rtol=1e-10)
    np.testing.assert_allclose(out.log_prod_qzj, log_prod, rtol=1e-10)
    log_qzx = np.sum(_log_normal(np.asarray(z), np.asarray(mu), np.exp(np.asarray(logvar))), 1)
    np.testing.assert_allclose(out.log_qz_given_x, log_qzx, rtol=1e-10)
    np.testing.assert_allclose(out.tc, np.mean(log_qz - log_prod), rtol=1e-10)


@pytest.mark.float64
@settings(max_examples=10)
@given(
    b=st.sampled_from([2, 7]),
    d=st.sampled_from([1, 4]),
    extra=st.integers(0, 10_000),
    seed=st.integers(0, 2**31 - 1),
    estimator=st.sampled_from(["mws", "mss"]),
)
def test_terms_telescope_to_the_single_sample_kl(b, d, extra, seed, estimator):
    z, mu, logvar = _codes(jax.random.key(seed), b, d)
    out = _kl(z, mu, logvar, b + extra, estimator)
    log_pz = np.sum(_log_normal(np.asarray(z), 0.0, 1.0), 1)
    np.testing.assert_allclose(out.log_pz, log_pz, rtol=1e-10)
    kl = np.mean(np.asarray(out.log_qz_given_x) - log_pz)
    np.testing.assert_allclose(out.mi + out.tc + out.dwkl, kl, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.kl, kl, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.weighted(1.0, 1.0, 1.0), kl, rtol=1e-10, atol=1e-10)


@pytest.mark.float64
def test_weighted_objective():
    z, mu, logvar = _codes(jax.random.key(1), 16, 4)
    out = _kl(z, mu, logvar, 1000, "mss")
    # beta-TCVAE (alpha = gamma = 1) is the ELBO's KL plus (beta - 1) TC.
    np.testing.assert_allclose(out.weighted(beta=6.0), out.kl + 5.0 * out.tc, rtol=1e-10)
    np.testing.assert_allclose(
        out.weighted(2.0, 3.0, 0.5), 2.0 * out.mi + 3.0 * out.tc + 0.5 * out.dwkl, rtol=1e-12
    )
    np.testing.assert_allclose(
        jnp.mean(out.per_sample_weighted(2.0, 3.0, 0.5)), out.weighted(2.0, 3.0, 0.5), rtol=1e-10
    )


@pytest.mark.float64
@pytest.mark.parametrize("b, n", [(2, 2), (5, 5), (5, 100), (64, 737_280)])
def test_mss_rows_sum_to_one_with_own_weight_on_the_diagonal(b, n):
    w = np.exp(np.asarray(mss_log_weights(b, n)))
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.diag(w), 1.0 / n, rtol=1e-12)
    m = b - 1
    strat = w[np.arange(b), (np.arange(b) + 1) % b]
    np.testing.assert_allclose(strat, (n - m) / (n * m), rtol=1e-12)
    # Not the upstream pattern: column 0 holds 1/N only on row 0 (when 1/M != 1/N).
    if b > 2 and n != m:
        assert not np.allclose(w[1:, 0], 1.0 / n)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _gaussian_population(key, a, s2, b):
    """A minibatch of a dataset whose posteriors are N(mu_n, s2 I) with mu_n ~ N(0, A A^T):
    its aggregate posterior is N(0, A A^T + s2 I) (N = 10^6, large against the batch)."""
    k1, k2 = jax.random.split(key)
    d = a.shape[0]
    mu = jax.random.normal(k1, (b, d), jnp.float64) @ jnp.asarray(a).T
    logvar = jnp.full((b, d), math.log(s2))
    z = mu + math.sqrt(s2) * jax.random.normal(k2, (b, d), jnp.float64)
    return z, mu, logvar


_FACTORISED = np.diag([0.8, 1.3, 0.5])
_CORRELATED = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.3, -0.5, 0.7]])


def _tc_of_gaussian(cov):
    return 0.5 * (np.sum(np.log(np.diag(cov))) - np.linalg.slogdet(cov)[1])


@jax.jit
def _mc_tc(z, cov):
    """The TC integrand averaged over the same samples with the exact densities (a control
    variate: the estimator's error minus this is its bias, nearly free of sampling noise)."""
    cov = jnp.asarray(cov)
    joint = multivariate_normal.logpdf(z, jnp.zeros(cov.shape[0]), cov)
    marg = gaussian_log_density(z, jnp.zeros_like(z), jnp.log(jnp.diag(cov)))
    return jnp.mean(joint - jnp.sum(marg, 1))


@pytest.mark.float64
@pytest.mark.parametrize("a", [_FACTORISED, _CORRELATED], ids=["factorised", "correlated"])
def test_mss_matches_the_known_tc_at_batch_1024(a):
    s2, n = 0.25, 10**6
    cov = a @ a.T + s2 * np.eye(3)
    truth = _tc_of_gaussian(cov)
    est = [
        float(_kl(*_gaussian_population(jax.random.key(s), a, s2, 1024), n, "mss").tc)
        for s in range(4)
    ]
    assert abs(np.mean(est) - truth) < 0.05, (np.mean(est), truth)


@pytest.mark.float64
@pytest.mark.parametrize("a", [_FACTORISED, _CORRELATED], ids=["factorised", "correlated"])
def test_mws_bias_shrinks_with_the_batch(a):
    # As printed, MWS's weights sum to 1/N: its TC is the aggregate's plus (D - 1) log N plus a
    # bias that shrinks with the batch.
    s2, n, d = 0.25, 10**6, 3
    cov = a @ a.T + s2 * np.eye(d)
    biases = []
    for b in (64, 256, 1024):
        errs = []
        for s in range(4):
            z, mu, logvar = _gaussian_population(jax.random.key(100 + s), a, s2, b)
            tc = float(_kl(z, mu, logvar, n, "mws").tc)
            errs.append(tc - (d - 1) * math.log(n) - float(_mc_tc(z, cov)))
        biases.append(abs(np.mean(errs)))
    assert biases[0] > biases[1] > biases[2], biases
    assert biases[2] < 0.02, biases


@pytest.mark.float64
def test_mixture_log_density_brute_force_and_chunking():
    z, _, _ = _codes(jax.random.key(2), 7, 3)
    _, mu, logvar = _codes(jax.random.key(3), 11, 3)
    dens = _log_normal(
        np.asarray(z)[:, None], np.asarray(mu)[None], np.exp(np.asarray(logvar))[None]
    )
    joint_ref = np.log(np.mean(np.exp(dens.sum(2)), 1))
    marg_ref = np.log(np.mean(np.exp(dens), 1))
    for chunk in (1, 3, 11, 50):
        joint, marg = mixture_log_density(z, mu, logvar, chunk_size=chunk)
        np.testing.assert_allclose(joint, joint_ref, rtol=1e-10)
        np.testing.assert_allclose(marg, marg_ref, rtol=1e-10)


@pytest.mark.float64
def test_full_dataset_decomposition():
    _, mu, logvar = _codes(jax.random.key(4), 30, 2)
    out = kl_decomposition_full(mu, logvar, key=jax.random.key(5), num_samples=100, chunk_size=7)
    assert isinstance(out, KLDecomposition) and out.log_qz.shape == (30,)
    np.testing.assert_allclose(out.mi + out.tc + out.dwkl, out.kl, rtol=1e-10, atol=1e-12)
    # With B = N and the exact 1/N weights, the full estimator is the MWS one shifted by log N
    # per term, on the same samples (MWS has a 1/(NM) = 1/N^2 weight).
    idx = jax.random.permutation(jax.random.split(jax.random.key(5))[0], 30)
    z = mu[idx] + jnp.exp(0.5 * logvar[idx]) * jax.random.normal(
        jax.random.split(jax.random.key(5))[1], (30, 2), jnp.float64
    )
    mws = kl_decomposition(z, mu[idx], logvar[idx], 30, "mws")
    np.testing.assert_allclose(out.log_qz, mws.log_qz + math.log(30), rtol=1e-10)
    np.testing.assert_allclose(out.tc, mws.tc - math.log(30), rtol=1e-10)


def test_bad_input():
    z = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="estimator"):
        kl_decomposition(z, z, z, 10, "iwae")
    with pytest.raises(ValueError, match="dataset_size"):
        kl_decomposition(z, z, z, 3)
    with pytest.raises(TypeError, match="dataset_size"):
        kl_decomposition(z, z, z, 10.0)
    # (a TypeError from the runtime type check when it is on, the library's ValueError if not)
    with pytest.raises((ValueError, TypeError), match="mu"):
        kl_decomposition(z, z[:, :1], z, 10)
    with pytest.raises(ValueError, match="batch_size"):
        mss_log_weights(1, 10)
    with pytest.raises(ValueError, match="chunk_size"):
        mixture_log_density(z, z, z, chunk_size=0)
    with pytest.raises(ValueError, match="num_samples"):
        kl_decomposition_full(z, z, key=jax.random.key(0), num_samples=0)


def test_float32_identity():
    z, mu, logvar = _codes(jax.random.key(6), 256, 10, jnp.float32)
    out = jax.jit(kl_decomposition, static_argnums=(3, 4))(z, mu, logvar, 737_280, "mss")
    assert out.tc.dtype == jnp.float32
    np.testing.assert_allclose(out.mi + out.tc + out.dwkl, out.kl, rtol=1e-4, atol=1e-3)
