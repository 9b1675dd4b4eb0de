"""Geometry metrics of toy models of superposition: exact fractions on hand-built W, invariances,
brute-force oracles, the peak detector and the analytic phase comparison."""

import doctest
import importlib
import itertools

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

from respax.interp import superposition as sp

# ---------------------------------------------------------------------------------------------
# Hand-built configurations (rows = features).


def polygon(k: int) -> np.ndarray:
    angles = 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def tetrahedron() -> np.ndarray:
    return np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)


def square_antiprism() -> np.ndarray:
    # Two squares rotated by 45 degrees at heights +-h; h^2 = 1/3 makes the 8 unit vectors a tight
    # frame (sum_j w_j w_j^T = 8/3 I), so every feature gets exactly 3/8 of a dimension.
    h, r = np.sqrt(1 / 3), np.sqrt(2 / 3)
    top = [(r * np.cos(a), r * np.sin(a), h) for a in np.pi / 2 * np.arange(4)]
    bottom = [(r * np.cos(a), r * np.sin(a), -h) for a in np.pi / 2 * np.arange(4) + np.pi / 4]
    return np.array(top + bottom)


def block_diag(*blocks: np.ndarray) -> np.ndarray:
    """Tegum product: each block in its own orthogonal subspace."""
    rows = sum(b.shape[0] for b in blocks)
    cols = sum(b.shape[1] for b in blocks)
    out = np.zeros((rows, cols))
    r = c = 0
    for b in blocks:
        out[r : r + b.shape[0], c : c + b.shape[1]] = b
        r, c = r + b.shape[0], c + b.shape[1]
    return out


CASES = {
    "orthogonal": (np.eye(3), 1.0),
    "antipodal": (np.array([[1.0], [-1.0]]), 1 / 2),
    "triangle": (polygon(3), 2 / 3),
    "pentagon": (polygon(5), 2 / 5),
    "tetrahedron": (tetrahedron(), 3 / 4),
    "square_antiprism": (square_antiprism(), 3 / 8),
}


@pytest.mark.float64
@pytest.mark.parametrize("name", list(CASES))
def test_uniform_polytopes_have_exact_fractions(name):
    W, fraction = CASES[name]
    W = jnp.asarray(W, jnp.float64)
    n, m = W.shape
    np.testing.assert_allclose(jax.jit(sp.feature_dimensionality)(W), fraction, atol=1e-12)
    np.testing.assert_allclose(sp.feature_norms(W), 1.0, atol=1e-12)
    # for unit-norm uniform polytopes D* = m / n equals the per-feature fraction
    np.testing.assert_allclose(sp.dimensions_per_feature(W), m / n, atol=1e-12)
    # D_i = ||W_i||^2 / (||W_i||^2 + superposition_i)
    np.testing.assert_allclose(sp.superposition_interference(W), 1 / fraction - 1, atol=1e-12)


@pytest.mark.float64
def test_tegum_product_and_unlearned_feature():
    W = block_diag(polygon(3), np.array([[1.0], [-1.0]]), np.array([[1.0]]))
    W = np.concatenate([W, np.zeros((1, W.shape[1]))])  # a feature that is not learned
    W = jnp.asarray(W)
    dims = sp.feature_dimensionality(W)
    np.testing.assert_allclose(dims, [2 / 3] * 3 + [1 / 2] * 2 + [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(sp.dimensions_per_feature(W), 4 / 6, atol=1e-12)
    np.testing.assert_array_equal(
        sp.classify_features(W),
        [sp.SUPERPOSITION] * 5 + [sp.DEDICATED, sp.NOT_REPRESENTED],
    )
    assert np.all(np.isfinite(sp.superposition_interference(W)))


def test_two_in_one_configurations_classify_extra_feature():
    extra = {
        "not represented": ([[1.0], [0.0]], sp.NOT_REPRESENTED),
        "dedicated": ([[0.0], [1.0]], sp.DEDICATED),
        "superposition": ([[1.0], [-1.0]], sp.SUPERPOSITION),
    }
    for W, expected in extra.values():
        assert int(sp.classify_features(jnp.asarray(W))[-1]) == expected


def _brute_force(W: np.ndarray):
    n = W.shape[0]
    norms = np.array([np.sqrt(sum(W[i, k] ** 2 for k in range(W.shape[1]))) for i in range(n)])
    inter, dims = np.zeros(n), np.zeros(n)
    for i in range(n):
        if norms[i] == 0:
            continue
        unit = W[i] / norms[i]
        overlaps = [float(unit @ W[j]) ** 2 for j in range(n)]
        inter[i] = sum(o for j, o in enumerate(overlaps) if j != i)
        dims[i] = norms[i] ** 2 / sum(overlaps)
    total = np.sum(W**2)
    return norms, inter, dims, (W.shape[1] / total if total > 0 else np.inf)


matrices = st.tuples(st.integers(1, 7), st.integers(1, 4)).flatmap(
    lambda s: hnp.arrays(np.float64, s, elements=st.floats(-2, 2, allow_subnormal=False))
)


@pytest.mark.float64
@given(W=matrices)
def test_metrics_match_brute_force(W):
    W = np.where(np.abs(W) < 1e-3, 0.0, W)  # rows are either clearly nonzero or exactly zero
    norms, inter, dims, dstar = _brute_force(W)
    Wj = jnp.asarray(W)
    np.testing.assert_allclose(sp.feature_norms(Wj), norms, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sp.superposition_interference(Wj), inter, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sp.feature_dimensionality(Wj), dims, rtol=1e-10, atol=1e-12)
    if np.sum(W**2) > 0:
        np.testing.assert_allclose(sp.dimensions_per_feature(Wj), dstar, rtol=1e-10)


def _orthogonal(seed: int, m: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(m, m)))
    return q * np.sign(np.diag(r))


@pytest.mark.float64
@given(W=matrices, seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 10.0))
def test_metrics_invariant_under_rotation_and_scaling(W, seed, scale):
    W = np.where(np.abs(W) < 1e-3, 0.0, W)
    Q = _orthogonal(seed, W.shape[1])
    Wj, rotated, scaled = jnp.asarray(W), jnp.asarray(W @ Q), jnp.asarray(scale * W)
    dims = sp.feature_dimensionality(Wj)
    np.testing.assert_allclose(sp.feature_dimensionality(rotated), dims, atol=1e-10)
    np.testing.assert_allclose(sp.feature_dimensionality(scaled), dims, atol=1e-10)
    np.testing.assert_allclose(
        sp.superposition_interference(rotated), sp.superposition_interference(Wj), atol=1e-9
    )
    np.testing.assert_allclose(sp.feature_norms(rotated), sp.feature_norms(Wj), atol=1e-10)
    if np.sum(W**2) > 0:
        np.testing.assert_allclose(
            sp.dimensions_per_feature(scaled), sp.dimensions_per_feature(Wj) / scale**2, rtol=1e-10
        )


def test_metrics_vmap_over_instances():
    W = jnp.stack([jnp.asarray(polygon(5), jnp.float32), jnp.asarray(polygon(5) * 2, jnp.float32)])
    dims = jax.vmap(sp.feature_dimensionality)(W)
    np.testing.assert_allclose(dims, 0.4, atol=1e-5)


def test_pair_cosines():
    W = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    np.testing.assert_allclose(sp.pair_cosines(W), [-1.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        sp.pair_cosines(jnp.ones((3, 2)))


# ---------------------------------------------------------------------------------------------
# Density peaks.


def test_density_peaks_find_a_spike_and_ignore_a_flat_background():
    background = np.linspace(0, 1, 2001)
    spike = np.full(30, 0.5) + np.linspace(-0.002, 0.002, 30)
    is_peak, narrow, flank = sp.density_peaks(np.concatenate([background, spike]))
    names = list(sp.POLYTOPE_FRACTIONS)
    assert [n for n, p in zip(names, np.asarray(is_peak)) if p] == ["digon (1/2)"]
    assert int(narrow[3]) == 30 + 21 and int(flank[3]) == 30
    # a flat distribution with many values everywhere has contrast 1: no peaks
    assert not np.asarray(sp.density_peaks(background)[0]).any()


def test_density_peaks_needs_min_count():
    values = np.full(5, 2 / 5)
    assert not bool(sp.density_peaks(values)[0][4])
    assert bool(sp.density_peaks(values, min_count=5)[0][4])
    with pytest.raises(ValueError, match="narrow"):
        sp.density_peaks(values, narrow=0.02, wide=0.01)


def test_scaled_min_count():
    assert sp.scaled_min_count(4000) == 10
    assert sp.scaled_min_count(8000) == 20
    assert sp.scaled_min_count(100) == 3
    with pytest.raises(ValueError):
        sp.scaled_min_count(-1)


# ---------------------------------------------------------------------------------------------
# Analytic phase comparison: closed forms against Monte Carlo of the hand-built networks.


def _hand_built_loss(candidate: int, n: int, r: float, p: float, samples: int, seed: int):
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((samples, n)) < p, rng.random((samples, n)), 0.0)
    importance = np.ones(n)
    importance[-1] = r
    out = x.copy()
    if candidate in (0, 1):  # drop feature 0 / the extra feature, output p/2 for it
        i = 0 if candidate == 0 else n - 1
        out[:, i] = p / 2
    else:  # antipodal pair of (0, 1) or (0, extra)
        a, b = (0, 1) if candidate == 2 else (0, n - 1)
        out[:, a] = np.maximum(x[:, a] - x[:, b], 0)
        out[:, b] = np.maximum(x[:, b] - x[:, a], 0)
    err = (importance * (x - out) ** 2).sum(1)
    return err.mean(), err.std() / np.sqrt(samples)


@pytest.mark.float64
@pytest.mark.parametrize("n,r,p", [(2, 0.5, 0.3), (3, 3.0, 0.1), (3, 0.2, 1.0)])
def test_analytic_phase_losses_match_monte_carlo(n, r, p):
    losses = np.asarray(sp.analytic_phase_losses(r, p, n))
    for candidate in range(4):
        if n == 2 and candidate == 2:
            assert np.isinf(losses[2])
            continue
        mean, sem = _hand_built_loss(candidate, n, r, p, 400_000, seed=candidate)
        assert abs(losses[candidate] - mean) < 5 * sem + 1e-12, (candidate, losses, mean, sem)


def test_analytic_phase_corners():
    assert int(sp.analytic_phase(0.1, 1.0)) == sp.NOT_REPRESENTED
    assert int(sp.analytic_phase(10.0, 1.0)) == sp.DEDICATED
    assert int(sp.analytic_phase(1.0, 0.01)) == sp.SUPERPOSITION
    # 3 in 2: an important extra feature keeps its own dimension when sparse
    assert int(sp.analytic_phase(10.0, 0.01, 3)) == sp.DEDICATED
    grid = sp.analytic_phase(*np.meshgrid(np.logspace(-1, 1, 5), np.logspace(0, -2, 5)))
    assert grid.shape == (5, 5)
    with pytest.raises(ValueError, match="n_features"):
        sp.analytic_phase_losses(1.0, 1.0, 1)


# ---------------------------------------------------------------------------------------------
# Monosemantic bound of the abs model.


def _abs_network_loss(k: int, p: float, samples: int, seed: int):
    rng = np.random.default_rng(seed)
    x = np.where(rng.random(samples) < p, rng.uniform(-1, 1, samples), 0.0)
    q = p / 2
    if k == 0:
        y = np.full_like(x, p / 2)
    elif k == 1:
        c = q / (2 - 1.5 * q)
        y = np.maximum((1 - 1.5 * c) * np.maximum(x, 0) + c, 0)
    else:
        y = np.maximum(x, 0) + np.maximum(-x, 0)
    err = (np.abs(x) - y) ** 2
    return err.mean(), err.std() / np.sqrt(samples)


@pytest.mark.float64
@pytest.mark.parametrize("p", [1.0, 0.3, 0.05])
def test_monosemantic_abs_losses_match_monte_carlo(p):
    losses = np.asarray(sp.monosemantic_abs_losses(p))
    for k in range(3):
        mean, sem = _abs_network_loss(k, p, 400_000, seed=k)
        assert abs(losses[k] - mean) < 5 * sem + 1e-12


@pytest.mark.float64
def test_monosemantic_one_neuron_is_least_squares_optimal():
    # the 1-neuron loss q(b^2/3 - b c + c^2) + q(1/3 - c + c^2) + (1-p)c^2 with b = 1 - alpha,
    # minimised on a fine grid, matches the closed form
    p = 0.4
    q = p / 2
    b, c = np.meshgrid(np.linspace(-0.2, 0.4, 601), np.linspace(0, 0.3, 601))
    grid = q * (b**2 / 3 - b * c + c**2) + q * (1 / 3 - c + c**2) + (1 - p) * c**2
    np.testing.assert_allclose(grid.min(), sp.monosemantic_abs_losses(p)[1], rtol=1e-4)


@pytest.mark.float64
@given(
    importance=hnp.arrays(np.float64, st.integers(1, 5), elements=st.floats(0.01, 1.0)),
    p=st.floats(0.001, 1.0),
    m=st.integers(0, 6),
)
def test_monosemantic_bound_matches_enumeration(importance, p, m):
    losses = np.asarray(sp.monosemantic_abs_losses(p))
    best = min(
        sum(w * losses[k] for w, k in zip(importance, ks))
        for ks in itertools.product(range(3), repeat=len(importance))
        if sum(ks) <= m
    )
    bound = sp.monosemantic_abs_loss_bound(jnp.asarray(importance), p, m)
    np.testing.assert_allclose(bound, best / len(importance), rtol=1e-10, atol=1e-15)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        # the training examples compile a few scans: slow
        pytest.param("_superposition", marks=pytest.mark.slow),
        "_superposition_metrics",
    ],
)
def test_docstring_examples(name):
    module = importlib.import_module(f"respax.interp.{name}")
    results = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert results.attempted > 0
    assert results.failed == 0
