"""Fitted factors hold curvature only: the matrix-free solves take the fitting set back."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from respax.core import CG, SoftmaxCrossEntropy
from respax.interp import (
    EKFAC,
    LiSSA,
    MatrixFree,
    fit_factors,
    inverse_curvature_product,
    pairwise_scores,
    save_factors,
    self_scores,
)

LOSS = SoftmaxCrossEntropy()


def _apply(model, x):
    return model(x)


def _data(n, seed=1):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (n, 3)), jax.random.randint(ky, (n,), 0, 2)


MODEL = eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=jax.random.key(0))
STRATEGY = MatrixFree(CG(max_steps=30))


def test_saved_factors_do_not_grow_with_the_fitting_set(tmp_path):
    sizes = []
    for n in (10, 400):
        f = fit_factors(_apply, LOSS, MODEL, _data(n), strategy=STRATEGY)
        assert all(a.size <= 2 for a in jax.tree.leaves(eqx.filter(f, eqx.is_array)))
        save_factors(tmp_path / f"f{n}.eqx", f)
        sizes.append((tmp_path / f"f{n}.eqx").stat().st_size)
    assert sizes[0] == sizes[1]


def test_scoring_other_examples_needs_the_fitting_set():
    train = _data(12)
    query = _data(3, seed=2)
    f = fit_factors(_apply, LOSS, MODEL, train, strategy=STRATEGY)
    full = pairwise_scores(f, _apply, LOSS, MODEL, query, train, damping=0.1)
    subset = jax.tree.map(lambda a: a[:5], train)
    with pytest.raises(ValueError, match="fit_data"):
        pairwise_scores(f, _apply, LOSS, MODEL, query, subset, damping=0.1)
    part = pairwise_scores(f, _apply, LOSS, MODEL, query, subset, damping=0.1, fit_data=train)
    np.testing.assert_allclose(part, full[:, :5], rtol=1e-4, atol=1e-6)
    self_part = self_scores(f, _apply, LOSS, MODEL, subset, damping=0.1, fit_data=train)
    self_full = self_scores(f, _apply, LOSS, MODEL, train, damping=0.1)
    np.testing.assert_allclose(self_part, self_full[:5], rtol=1e-4, atol=1e-6)
    # Other data of the fitting set's shape is caught when the solve runs.
    with pytest.raises(Exception, match="fit_data"):
        pairwise_scores(f, _apply, LOSS, MODEL, query, train, damping=0.1, fit_data=_data(12, 7))


def _flat(tree):
    return jnp.concatenate(
        [a.reshape(a.shape[0], -1) for a in jax.tree.leaves(eqx.filter(tree, eqx.is_array))], 1
    )


def test_inverse_curvature_product_asks_for_the_fitting_set():
    train = _data(12)
    params, _ = eqx.partition(MODEL, eqx.is_inexact_array)
    vectors = jax.tree.map(lambda a: jnp.ones((2, *a.shape), a.dtype), params)
    key = jax.random.key(4)
    results = {}
    for strategy in (
        LiSSA(num_iterations=5, batch_size=4),
        EKFAC(refine_iterations=40),
        MatrixFree(CG(max_steps=200, rtol=1e-6), block_diagonal=True),
    ):
        f = fit_factors(_apply, LOSS, MODEL, train, strategy=strategy, key=jax.random.key(3))
        with pytest.raises(ValueError, match="fit_data"):
            inverse_curvature_product(f, _apply, LOSS, MODEL, vectors, damping=0.1, key=key)
        out = inverse_curvature_product(
            f, _apply, LOSS, MODEL, vectors, damping=0.1, key=key, fit_data=train
        )
        results[type(strategy).__name__] = np.asarray(_flat(out))
    assert np.all(np.isfinite(results["LiSSA"]))
    # The refined EK-FAC solve (PCG to convergence on the block-diagonal GGN, which it rebuilt
    # from the fitting inputs passed back) equals block-diagonal CG.
    np.testing.assert_allclose(results["EKFAC"], results["MatrixFree"], rtol=2e-3, atol=1e-4)
