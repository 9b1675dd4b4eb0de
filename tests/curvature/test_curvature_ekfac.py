"""EK-FAC: closer to the dense GGN than K-FAC (Frobenius), exact damped inverse, pytree API."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from respax.core import SoftmaxCrossEntropy
from respax.curvature import capture_layers, fit_ekfac, fit_kfac_factors, ggn_operator
from tests.helpers import dense


def _dense(mv, like):
    return np.asarray(dense(mv, like))


class Net(eqx.Module):
    emb: eqx.nn.Embedding
    ln: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __call__(self, x):
        feats, tok = x
        return self.mlp(self.ln(feats + self.emb(tok)))


@pytest.mark.slow
@pytest.mark.float64
def test_ekfac_closer_to_ggn_than_kfac_and_inverse_is_exact():
    k = jax.random.split(jax.random.key(0), 4)
    net = Net(
        eqx.nn.Embedding(4, 3, key=k[0]),
        eqx.nn.LayerNorm(3),
        eqx.nn.MLP(3, 3, 6, 2, activation=jnp.tanh, key=k[1]),
    )
    net = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, net)
    loss = SoftmaxCrossEntropy()
    x = (jax.random.normal(k[2], (24, 3), jnp.float64), jax.random.randint(k[3], (24,), 0, 4))
    plan = capture_layers(net, loss, (jnp.zeros(3), jnp.array(0)), on_uncovered="raise")
    params = eqx.filter(net, eqx.is_inexact_array)
    ggn = _dense(ggn_operator(lambda m, xi: m(xi), loss, net, x).mv, params)
    factors = jax.jit(lambda p, x: fit_kfac_factors(plan, p, x, batch_size=8))(params, x)
    ek = jax.jit(lambda p, x, f: fit_ekfac(plan, p, x, factors=f, batch_size=8))(params, x, factors)
    kfac_dense = _dense(factors.mv, params)
    ekfac_dense = _dense(ek.mv, params)
    err_k = np.linalg.norm(kfac_dense - ggn)
    err_e = np.linalg.norm(ekfac_dense - ggn)
    assert err_e <= err_k
    # The eigenvalue correction is the exact diagonal of the GGN in the Kronecker eigenbasis, so
    # EK-FAC's diagonal blocks reproduce the GGN's own diagonal in that basis.
    assert err_e < 0.999 * err_k
    # Damped inverse: exact inverse of (EK-FAC + d I), alone and vmapped over per-example
    # gradients (the influence-function use); one compiled program for both.
    d = 1e-3
    v = jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), params)
    batch_v = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), v)
    single, out = eqx.filter_jit(
        lambda ek, v, bv: (ek.inverse_vp(v, d), jax.vmap(lambda g: ek.inverse_vp(g, d))(bv))
    )(ek, v, batch_v)
    got = ravel_pytree(single)[0]
    ref = np.linalg.solve(ekfac_dense + d * np.eye(ggn.shape[0]), ravel_pytree(v)[0])
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    np.testing.assert_allclose(
        ravel_pytree(jax.tree.map(lambda a: a[1], out))[0],
        2 * ref,
        rtol=1e-9,
        atol=1e-9 * np.abs(ref).max(),
    )


def test_ekfac_bad_input():
    mlp = eqx.nn.MLP(2, 2, 3, 1, key=jax.random.key(0))
    plan = capture_layers(mlp, SoftmaxCrossEntropy(), jnp.zeros(2))
    x = jnp.ones((6, 2))
    with pytest.raises(ValueError, match="batch_size"):
        fit_ekfac(plan, mlp, x, batch_size=4)
    with pytest.raises(ValueError, match="targets"):
        fit_ekfac(plan, mlp, x, mode="empirical")
    ek = eqx.filter_jit(lambda m, x: fit_ekfac(plan, m, x))(mlp, x)
    with pytest.raises(ValueError, match="damping"):
        ek.inverse_vp(eqx.filter(mlp, eqx.is_inexact_array), -1.0)
