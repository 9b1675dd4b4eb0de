"""respax.core's statistics helpers: Pearson, Spearman and average ranks against scipy.stats (ties,
batched leading axes), their invariances as hypothesis properties, and the percentile bootstrap
against a numpy reference loop and by its coverage over many seeds."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import respax.core
import respax.interp
from respax.core import BootstrapCI, average_ranks, bootstrap_ci, pearson, spearman


def _tied(seed, shape):
    """Integer-valued floats from a small range: many ties."""
    return np.random.default_rng(seed).integers(0, 5, size=shape).astype(np.float64)


@pytest.mark.float64
def test_pearson_spearman_and_ranks_match_scipy_with_ties_and_batches():
    rng = np.random.default_rng(0)
    a = np.concatenate([_tied(1, (3, 4, 9)), rng.normal(size=(3, 4, 9))], axis=-1)
    b = np.concatenate([_tied(2, (3, 4, 9)), rng.normal(size=(3, 4, 9))], axis=-1)
    p, s = jax.jit(pearson)(a, b), jax.jit(spearman)(a, b)
    assert p.shape == s.shape == (3, 4)
    for i in np.ndindex(3, 4):
        assert float(p[i]) == pytest.approx(scipy.stats.pearsonr(a[i], b[i])[0], rel=1e-12)
        assert float(s[i]) == pytest.approx(scipy.stats.spearmanr(a[i], b[i])[0], rel=1e-12)
    np.testing.assert_array_equal(average_ranks(a), scipy.stats.rankdata(a, axis=-1))
    # Leading axes broadcast: one reference row against a batch.
    np.testing.assert_allclose(
        pearson(a[0, 0], b[0]), [scipy.stats.pearsonr(a[0, 0], r)[0] for r in b[0]], rtol=1e-12
    )


def test_correlations_float32():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 50)).astype(np.float32)
    b = (a + rng.normal(size=(5, 50))).astype(np.float32)
    p, s = pearson(a, b), spearman(a, b)
    assert p.dtype == s.dtype == jnp.float32
    ref_p = [scipy.stats.pearsonr(x, y)[0] for x, y in zip(a, b, strict=True)]
    ref_s = [scipy.stats.spearmanr(x, y)[0] for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(p, ref_p, rtol=1e-5)
    np.testing.assert_allclose(s, ref_s, rtol=1e-5)


def test_interp_reexports_the_core_objects():
    assert respax.interp.pearson is respax.core.pearson
    assert respax.interp.spearman is respax.core.spearman


# Values on a grid of quarters: ties are common, and distinct values stay far enough apart that
# the monotone maps below neither merge nor split them in float64.
_grid = st.integers(-40, 40).map(lambda i: i / 4.0)
_vectors = st.integers(3, 20).flatmap(
    lambda n: st.tuples(*[arrays(np.float64, n, elements=_grid) for _ in range(2)])
)


def _varies(x):
    return np.std(x) > 1e-3 * (1.0 + np.max(np.abs(x)))


@pytest.mark.float64
@settings(max_examples=30)
@given(_vectors, st.floats(0.1, 10.0), st.floats(-10.0, 10.0))
def test_pearson_properties(pair, scale, shift):
    a, b = pair
    assume(_varies(a) and _varies(b))
    r = float(pearson(a, b))
    assert -1.0 - 1e-12 <= r <= 1.0 + 1e-12
    assert float(pearson(b, a)) == pytest.approx(r, abs=1e-12)
    assert float(pearson(scale * a + shift, b)) == pytest.approx(r, abs=1e-9)
    assert float(pearson(-scale * a + shift, b)) == pytest.approx(-r, abs=1e-9)
    assert float(pearson(a, a)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.float64
@settings(max_examples=30)
@given(_vectors)
def test_spearman_properties(pair):
    a, b = pair
    assume(_varies(a) and _varies(b))
    r = float(spearman(a, b))
    assert -1.0 - 1e-12 <= r <= 1.0 + 1e-12
    assert float(spearman(b, a)) == pytest.approx(r, abs=1e-12)
    # Strictly increasing maps keep every order and tie; decreasing maps flip the sign.
    assert float(spearman(a**3 + a, np.arctan(b))) == pytest.approx(r, abs=1e-12)
    assert float(spearman(-np.exp(a / 10.0), b)) == pytest.approx(-r, abs=1e-12)
    ranks = np.asarray(average_ranks(a))
    assert np.sum(ranks) == pytest.approx(len(a) * (len(a) + 1) / 2)


def test_correlation_bad_input():
    with pytest.raises((ValueError, TypeError), match="observations|n"):
        pearson(jnp.ones(3), jnp.ones(4))
    with pytest.raises(ValueError, match="at least 2"):
        spearman(jnp.ones(1), jnp.ones(1))
    # A scalar is refused (by the runtime type check in the tests, by a ValueError without it).
    with pytest.raises((ValueError, TypeError), match="x"):
        average_ranks(jnp.float32(1.0))


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


@pytest.mark.float64
@pytest.mark.parametrize("batch_size", [None, 64])
def test_bootstrap_matches_a_numpy_loop_with_the_same_indices(batch_size):
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = 0.5 * x + rng.normal(size=40)
    key, b, conf = jax.random.key(2), 300, 0.9
    ci = jax.jit(
        lambda x, y, k: bootstrap_ci(
            pearson, x, y, key=k, num_resamples=b, confidence=conf, batch_size=batch_size
        )
    )(x, y, key)
    assert isinstance(ci, BootstrapCI)
    index = np.asarray(jax.random.randint(key, (b, 40), 0, 40))  # the documented indices
    reps = np.array([np.corrcoef(x[i], y[i])[0, 1] for i in index])
    assert float(ci.estimate) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    assert float(ci.lower) == pytest.approx(np.quantile(reps, 0.05), rel=1e-10)
    assert float(ci.upper) == pytest.approx(np.quantile(reps, 0.95), rel=1e-10)
    assert float(ci.standard_error) == pytest.approx(np.std(reps, ddof=1), rel=1e-9)


@pytest.mark.float64
def test_bootstrap_pytree_data_and_statistic():
    rng = np.random.default_rng(4)
    data = {"u": jnp.asarray(rng.normal(size=(30, 2))), "v": jnp.asarray(rng.normal(size=30))}
    stat = lambda d: {"mean_u": jnp.mean(d["u"], axis=0), "var_v": jnp.var(d["v"])}
    ci = bootstrap_ci(stat, data, key=jax.random.key(0), num_resamples=200)
    index = np.asarray(jax.random.randint(jax.random.key(0), (200, 30), 0, 30))
    u, v = np.asarray(data["u"]), np.asarray(data["v"])
    reps_u = np.stack([u[i].mean(0) for i in index])
    reps_v = np.array([v[i].var() for i in index])
    np.testing.assert_allclose(ci.lower["mean_u"], np.quantile(reps_u, 0.025, axis=0), rtol=1e-10)
    np.testing.assert_allclose(ci.upper["var_v"], np.quantile(reps_v, 0.975), rtol=1e-10)
    assert ci.estimate["mean_u"].shape == (2,)


@functools.partial(jax.jit, static_argnames="confidence")
def _covers(keys, confidence):
    def one(k):
        kd, kb = jax.random.split(k)
        x = 2.0 + 3.0 * jax.random.normal(kd, (100,))
        ci = bootstrap_ci(jnp.mean, x, key=kb, num_resamples=500, confidence=confidence)
        return (ci.lower <= 2.0) & (2.0 <= ci.upper)

    return jnp.mean(jax.vmap(one)(keys))


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_bootstrap_coverage_of_a_normal_mean_is_near_nominal(confidence):
    # 1000 seeds: the coverage's standard error is <= 0.013, so a wrong percentile (e.g. the
    # (1 - c, c) quantiles, 0.90 / 0.60 nominal) lands far outside the band.
    coverage = float(_covers(jax.random.split(jax.random.key(0), 1000), confidence))
    assert abs(coverage - confidence) < 0.035


def test_bootstrap_bad_input():
    x = jnp.ones(5)
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="statistic"):
        bootstrap_ci("mean", x, key=key)
    with pytest.raises(ValueError, match="data"):
        bootstrap_ci(jnp.mean, key=key)
    with pytest.raises(ValueError, match="leading axis"):
        bootstrap_ci(lambda a, b: jnp.mean(a - b), x, jnp.ones(4), key=key)
    with pytest.raises((ValueError, TypeError), match="confidence"):
        bootstrap_ci(jnp.mean, x, key=key, confidence=1.5)
    with pytest.raises(ValueError, match="num_resamples"):
        bootstrap_ci(jnp.mean, x, key=key, num_resamples=1)
    with pytest.raises(TypeError):
        bootstrap_ci(jnp.mean, x)  # `key` is required
