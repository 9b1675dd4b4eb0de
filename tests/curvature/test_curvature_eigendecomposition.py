"""`kfac_eigendecomposition`: K-FAC in eigen form equals K-FAC (dense oracle), its damped inverse is
exact, and its bases are the ones EK-FAC corrects."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from respax.core import SoftmaxCrossEntropy
from respax.curvature import (
    EKFACFactors,
    capture_layers,
    fit_ekfac,
    fit_kfac_factors,
    kfac_eigendecomposition,
)
from respax.testing import dense_matrix


class Net(eqx.Module):
    emb: eqx.nn.Embedding  # Kronecker with a diagonal input factor (UA is None)
    ln: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __call__(self, x):
        feats, tok = x
        return self.mlp(self.ln(feats + self.emb(tok)))


def _fitted(dtype):
    k = jax.random.split(jax.random.key(0), 4)
    net = Net(
        eqx.nn.Embedding(4, 3, key=k[0]),
        eqx.nn.LayerNorm(3),
        eqx.nn.MLP(3, 3, 5, 1, activation=jnp.tanh, key=k[1]),
    )
    net = jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, net)
    x = (jax.random.normal(k[2], (16, 3), dtype), jax.random.randint(k[3], (16,), 0, 4))
    plan = capture_layers(net, SoftmaxCrossEntropy(), (jnp.zeros(3, dtype), jnp.array(0)))
    params = eqx.filter(net, eqx.is_inexact_array)
    factors = jax.jit(lambda p, x: fit_kfac_factors(plan, p, x))(params, x)
    return plan, params, x, factors


@pytest.mark.slow
@pytest.mark.float64
def test_eigendecomposition_equals_kfac_and_inverts_exactly():
    plan, params, x, factors = _fitted(jnp.float64)
    eig = jax.jit(kfac_eigendecomposition)(factors)
    assert isinstance(eig, EKFACFactors)
    kfac_dense = np.asarray(dense_matrix(factors.mv, params))
    np.testing.assert_allclose(
        dense_matrix(eig.mv, params), kfac_dense, atol=1e-12 * np.abs(kfac_dense).max()
    )
    d = 1e-3
    v = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), params)
    ref = np.linalg.solve(kfac_dense + d * np.eye(kfac_dense.shape[0]), ravel_pytree(v)[0])
    got = ravel_pytree(eig.inverse_vp(v, d))[0]
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    # EK-FAC keeps these bases and replaces only the eigenvalues.
    ek = fit_ekfac(plan, params, x, factors=factors)
    for a, b in zip(eig.blocks, ek.blocks, strict=True):
        assert a.keys() == b.keys()
        for name in a.keys() - {"D"}:
            if a[name] is None:
                assert b[name] is None
            else:
                np.testing.assert_array_equal(a[name], b[name])


def test_eigendecomposition_float32():
    _, params, _, factors = _fitted(jnp.float32)
    eig = kfac_eigendecomposition(factors)
    kfac_dense = np.asarray(dense_matrix(factors.mv, params))
    got = np.asarray(dense_matrix(eig.mv, params))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, kfac_dense, atol=1e-5 * np.abs(kfac_dense).max())


def test_eigendecomposition_bad_input():
    with pytest.raises(TypeError, match="factors"):
        kfac_eigendecomposition({"G": jnp.eye(2)})
