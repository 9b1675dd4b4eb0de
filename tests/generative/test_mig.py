"""The two MIGs: golden codes (copies of the factors, independent noise), disentanglement_lib's
numpy/sklearn reference computation, and bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from respax.generative import discrete_mutual_info, discretize, mig_discrete, mig_sampled
from respax.testing._mig_reference import reference_mig_discrete

# A dSprites-like grid without colour (shape, scale, orientation, posX, posY), cut down so that
# the sampled MIG's N x 10,000 densities stay small in a test.
GRID = (3, 6, 40, 4, 4)
SCORED = (1, 2, 3, 4)  # shape excluded, as Chen et al.


def _grid_classes(sizes):
    return np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(
        -1, len(sizes)
    )


def test_sampled_mig_of_copied_factors_is_one():
    classes = _grid_classes(GRID)
    # Latents 0..4 copy the factors (unit spacing, posterior sd e^-3 = 0.05), plus 2 constants.
    mu = np.concatenate([classes.astype(np.float32), np.zeros((len(classes), 2), np.float32)], 1)
    logvar = np.full_like(mu, -6.0)
    fn = jax.jit(mig_sampled, static_argnames=("factor_sizes", "factors", "num_samples"))
    out = fn(mu, logvar, factor_sizes=GRID, factors=SCORED, key=jax.random.key(0))
    assert abs(float(out.mig) - 1.0) < 0.02, out.gaps
    np.testing.assert_allclose(out.factor_entropies, np.log([6, 40, 4, 4]), rtol=1e-6)
    assert out.mutual_info.shape == (4, 7)
    # The MI of each copy with its factor is the factor's entropy log|V_k|.
    np.testing.assert_allclose(
        np.asarray(out.mutual_info)[np.arange(4), [1, 2, 3, 4]], np.log([6, 40, 4, 4]), atol=0.03
    )


def test_sampled_mig_of_independent_codes_is_near_zero():
    sizes = (10, 10, 10, 10)  # 10,000 codes of 6 latents x 4 factors
    n = math.prod(sizes)
    mu = 0.3 * jax.random.normal(jax.random.key(1), (n, 6))
    out = jax.jit(mig_sampled, static_argnames=("factor_sizes",))(
        mu, jnp.zeros((n, 6)), factor_sizes=sizes, key=jax.random.key(2)
    )
    assert float(out.mig) < 0.02, out.gaps


def test_discrete_mig_of_copied_factors_is_the_binned_entropy_ratio():
    classes = _grid_classes(GRID)[:, 1:]  # scale, orientation, posX, posY
    codes = classes.astype(np.float64)
    ours = mig_discrete(jnp.asarray(codes, jnp.float32), classes, (6, 40, 4, 4))
    # 20 bins cannot resolve 40 orientations: that factor's gap is H(binned)/H(v) < 1.
    binned = np.digitize(codes[:, 1], np.histogram(codes[:, 1], 20)[1][:-1])
    ratio = mutual_info_score(binned, binned) / math.log(40)
    assert ratio < 0.9
    expected = (1 + ratio + 1 + 1) / 4
    np.testing.assert_allclose(ours.mig, expected, rtol=1e-5)
    np.testing.assert_allclose(ours.gaps[1], ratio, rtol=1e-5)
    ref, m, _ = reference_mig_discrete(codes, classes)
    np.testing.assert_allclose(ours.mig, ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.mutual_info).T, m, rtol=1e-4, atol=1e-6)


def test_discrete_mig_of_independent_codes_is_near_zero():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, [6, 40, 32, 32], size=(10_000, 4))
    codes = rng.normal(size=(10_000, 10)).astype(np.float32)
    ours = mig_discrete(codes, classes, (6, 40, 32, 32))
    assert float(ours.mig) < 0.02
    ref, _, _ = reference_mig_discrete(codes, classes)
    np.testing.assert_allclose(ours.mig, ref, rtol=1e-3, atol=1e-6)


@pytest.mark.float64
def test_discrete_mutual_info_equals_sklearn():
    rng = np.random.default_rng(1)
    fn = jax.jit(discrete_mutual_info, static_argnums=(2, 3))
    for n, ka, kb in [(50, 3, 4), (1000, 20, 40), (10_000, 20, 6), (7, 1, 5)]:
        a, b = rng.integers(0, ka, n), rng.integers(0, kb, n)
        np.testing.assert_allclose(fn(a, b, ka, kb), mutual_info_score(a, b), rtol=1e-6, atol=1e-12)


@pytest.mark.float64
def test_discretize_matches_numpy_digitize():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 3))
    x[:, 2] = 1.5  # a constant latent: every code in one bin
    ours = np.asarray(discretize(jnp.asarray(x), 20))
    for j in range(2):
        ref = np.digitize(x[:, j], np.histogram(x[:, j], 20)[1][:-1]) - 1
        np.testing.assert_array_equal(ours[:, j], ref)
    assert len(np.unique(ours[:, 2])) == 1


def test_bad_input():
    mu = jnp.zeros((24, 3))
    with pytest.raises(ValueError, match="factor_sizes"):
        mig_sampled(mu, mu, (5, 5), key=jax.random.key(0))
    with pytest.raises(ValueError, match="factors"):
        mig_sampled(mu, mu, (1, 4, 6), factors=(0,), key=jax.random.key(0))
    with pytest.raises(ValueError, match="`mu`"):
        mig_sampled(mu.at[3, 1].set(jnp.nan), mu, (4, 6), key=jax.random.key(0))
    classes = jnp.zeros((24, 2), jnp.int32)
    with pytest.raises(ValueError, match="codes"):
        mig_discrete(mu.at[0, 0].set(jnp.nan), classes, (4, 6))
    with pytest.raises(ValueError, match="factor_sizes"):
        mig_discrete(mu, classes, (4, 6, 2))
    with pytest.raises((ValueError, TypeError), match="factor_classes"):
        mig_discrete(mu, classes[:10], (4, 6))
