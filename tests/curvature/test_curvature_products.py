"""Curvature-vector products against dense float64 oracles, and respax.core's estimators (which
respax.curvature re-exports) on them."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import respax.core
import respax.curvature
from respax.core import BernoulliLoss, GaussianLoss, SoftmaxCrossEntropy
from respax.curvature import (
    empirical_fisher_operator,
    fisher_operator,
    ggn_operator,
    hessian_operator,
    hutchinson_diagonal,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_top_k,
    split_params,
)
from tests.helpers import dense as _dense

APPLY = lambda m, x: m(x)


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _problem(loss_name, key, width=5):
    k1, k2, k3 = jax.random.split(key, 3)
    model = eqx.nn.MLP(3, 3, width, 1, activation=jnp.tanh, key=k1)
    model = jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, model)
    x = jax.random.normal(k2, (7, 3), jnp.float64)
    if loss_name == "softmax":
        loss, y = SoftmaxCrossEntropy(), jax.random.randint(k3, (7,), 0, 3)
    elif loss_name == "gaussian":
        loss, y = GaussianLoss(variance=0.5), jax.random.normal(k3, (7, 3), jnp.float64)
    else:
        loss, y = BernoulliLoss(), jax.random.bernoulli(k3, 0.5, (7, 3)).astype(jnp.float64)
    return model, loss, x, y


def _jacobians(model, x):
    diff, static = split_params(model)
    flat, unravel = ravel_pytree(diff)
    f = lambda p, xi: eqx.combine(unravel(p), static)(xi)
    return flat, unravel, jax.vmap(lambda xi: jax.jacfwd(f)(flat, xi))(x), f


@pytest.mark.float64
@pytest.mark.parametrize(
    "loss_name",
    [
        "softmax",
        pytest.param("gaussian", marks=pytest.mark.slow),
        pytest.param("bernoulli", marks=pytest.mark.slow),
    ],
)
def test_ggn_hessian_empirical_fisher_matchdense(loss_name):
    model, loss, x, y = _problem(loss_name, jax.random.key(0))

    @eqx.filter_jit
    def oracles(model, x, y):
        flat, unravel, jac, f = _jacobians(model, x)
        outs = jax.vmap(lambda xi: f(flat, xi))(x)
        # Oracle output Hessians from autodiff of the loss (independent of hessian_sqrt).
        h_out = jax.vmap(jax.hessian(loss.loss))(outs, y)
        ggn = jnp.einsum("bkp,bkl,blq->pq", jac, h_out, jac) / x.shape[0]
        hess = jax.hessian(lambda p: loss.mean_loss(jax.vmap(lambda xi: f(p, xi))(x), y))(flat)
        per_grads = jax.vmap(jax.grad(lambda p, xi, yi: loss.loss(f(p, xi), yi)), (None, 0, 0))(
            flat, x, y
        )
        return ggn, hess, per_grads.T @ per_grads / x.shape[0]

    @eqx.filter_jit
    def operators(model, x, y):
        diff, _ = split_params(model)
        return (
            _dense(ggn_operator(APPLY, loss, model, x).mv, diff),
            _dense(fisher_operator(APPLY, loss, model, x).mv, diff),
            _dense(hessian_operator(APPLY, loss, model, x, y).mv, diff),
            _dense(empirical_fisher_operator(APPLY, loss, model, x, y).mv, diff),
        )

    ggn, hess, emp = oracles(model, x, y)
    got_ggn, got_fisher, got_hess, got_emp = operators(model, x, y)
    assert _rel(got_ggn, ggn) < 1e-10
    assert _rel(got_fisher, ggn) < 1e-10
    assert _rel(got_hess, hess) < 1e-10
    assert _rel(got_emp, emp) < 1e-10


@pytest.mark.slow
@pytest.mark.float64
def test_mc_fisher_matches_dense_and_is_unbiased():
    model, loss, x, _ = _problem("softmax", jax.random.key(1))
    flat, unravel, jac, f = _jacobians(model, x)
    outs = jax.vmap(lambda xi: f(flat, xi))(x)
    diff, _ = split_params(model)
    key, m = jax.random.key(3), 4
    # The operator draws labels with split(key, (m, b)); the oracle redraws the same labels.
    keys = jax.random.split(key, (m, x.shape[0]))
    labels = jax.vmap(lambda ks: jax.vmap(loss.sample_targets)(ks, outs))(keys)
    grad_fn = jax.grad(lambda p, xi, yi: loss.loss(f(p, xi), yi))
    g = jax.vmap(lambda ys: jax.vmap(grad_fn, (None, 0, 0))(flat, x, ys))(labels)
    dense_mc = jnp.einsum("sbp,sbq->pq", g, g) / (m * x.shape[0])
    op = fisher_operator(APPLY, loss, model, x, mode="mc", key=key, num_samples=m)
    assert _rel(_dense(op.mv, diff), dense_mc) < 1e-10
    # Many samples approach the exact Fisher.
    exact = _dense(ggn_operator(APPLY, loss, model, x).mv, diff)
    op = fisher_operator(APPLY, loss, model, x, mode="mc", key=key, num_samples=4000)
    assert _rel(_dense(op.mv, diff), exact) < 0.1


@pytest.mark.slow
@pytest.mark.float64
def test_hutchpp_and_lanczos_exact_on_ggn():
    model, loss, x, _ = _problem("softmax", jax.random.key(2), width=3)
    diff, _ = split_params(model)
    op = ggn_operator(APPLY, loss, model, x)
    dense = np.asarray(_dense(op.mv, diff))
    n = dense.shape[0]
    key = jax.random.key(5)
    # Hutch++ with a full-rank sketch is exact.
    t = jax.jit(lambda k: hutchpp_trace(op, key=k, num_matvecs=3 * n + 3))(key)
    assert abs(float(t.value) - np.trace(dense)) < 1e-10 * abs(np.trace(dense))
    assert float(t.standard_error) < 1e-10 * abs(np.trace(dense))
    # Lanczos with n iterations (full reorthogonalisation) recovers the top eigenvalues.
    r = jax.jit(lambda k: lanczos_top_k(op, key=k, k=4, num_iterations=n))(key)
    top = np.sort(np.linalg.eigvalsh(dense))[::-1][:4]
    np.testing.assert_allclose(np.asarray(r.eigenvalues), top, rtol=1e-10, atol=1e-12 * top[0])
    v0 = jax.tree.map(lambda leaf: leaf[0], r.eigenvectors)
    av = ravel_pytree(op.mv(v0))[0]
    np.testing.assert_allclose(np.asarray(av), top[0] * ravel_pytree(v0)[0], atol=1e-8 * top[0])


def test_estimators_are_respax_core_objects():
    names = ["LanczosResult", "hutchinson_diagonal", "hutchinson_trace", "hutchpp_trace"]
    names += ["lanczos_top_k", "power_iteration"]
    for name in names:
        assert getattr(respax.curvature, name) is getattr(respax.core, name), name


@pytest.mark.slow
@pytest.mark.float64
def test_hutchinson_is_unbiased_on_ggn():
    model, loss, x, _ = _problem("gaussian", jax.random.key(4))
    diff, _ = split_params(model)
    op = ggn_operator(APPLY, loss, model, x)
    dense = np.asarray(_dense(op.mv, diff))
    m = 400
    est = hutchinson_trace(op, key=jax.random.key(9), num_samples=m)
    # Rademacher variance: 2 (||A||_F^2 - sum diag^2).
    std = np.sqrt(2 * (np.sum(dense**2) - np.sum(np.diag(dense) ** 2)) / m)
    assert abs(float(est.value) - np.trace(dense)) < 5 * std
    assert 0.7 < float(est.standard_error) / std < 1.3
    diag = hutchinson_diagonal(op, key=jax.random.key(9), num_samples=m)
    err = ravel_pytree(diag)[0] - np.diag(dense)
    assert float(jnp.max(jnp.abs(err))) < 5 * np.sqrt(np.max(np.sum(dense**2, 1)) / m)


@pytest.mark.slow
def test_float32_ggn_matches_float64():
    model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 3))
    diff, _ = split_params(model)
    op = ggn_operator(APPLY, SoftmaxCrossEntropy(), model, x)
    with jax.enable_x64(True):
        m64 = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)
        op64 = ggn_operator(APPLY, SoftmaxCrossEntropy(), m64, x.astype(jnp.float64))
        ref = _dense(op64.mv, split_params(m64)[0])
    assert _rel(_dense(op.mv, diff), ref) < 1e-5


def test_products_bad_input():
    model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 3))
    op = ggn_operator(APPLY, SoftmaxCrossEntropy(), model, x)
    with pytest.raises(TypeError, match="output_loss"):
        ggn_operator(APPLY, "mse", model, x)
    with pytest.raises(ValueError, match="key"):
        fisher_operator(APPLY, SoftmaxCrossEntropy(), model, x, mode="mc")
    with pytest.raises(ValueError, match="num_iterations"):
        lanczos_top_k(op, key=jax.random.key(0), k=1, num_iterations=10_000)
    with pytest.raises(ValueError, match="num_matvecs"):
        hutchpp_trace(op, key=jax.random.key(0), num_matvecs=2)


def test_fisher_vocabulary_and_vector_structure_checked():
    """The analytic Fisher is `mode="expected"` (the default, as in kfac_stats and
    fit_kfac_factors); a vector of the wrong structure names `vector` instead of failing with
    `Closure-converted function called with different dynamic arguments`."""
    model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 3))
    loss = SoftmaxCrossEntropy()
    diff, _ = split_params(model)
    v = jax.tree.map(jnp.ones_like, diff)
    expected = fisher_operator(APPLY, loss, model, x, mode="expected").mv(v)
    for a, b, c in zip(
        jax.tree.leaves(expected),
        jax.tree.leaves(fisher_operator(APPLY, loss, model, x).mv(v)),
        jax.tree.leaves(ggn_operator(APPLY, loss, model, x).mv(v)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    # The old name is refused (by the Literal annotation under the tests' type-checking hook,
    # by the function's own check with the new name otherwise).
    with pytest.raises((ValueError, TypeError), match="expected"):
        fisher_operator(APPLY, loss, model, x, mode="exact")
    other = split_params(eqx.nn.MLP(3, 2, 4, 2, key=jax.random.key(0)))[0]
    wrong_shape = eqx.tree_at(lambda d: d.layers[0].bias, v, jnp.ones(7))
    ops = [
        ggn_operator(APPLY, loss, model, x),
        fisher_operator(APPLY, loss, model, x, mode="mc", key=jax.random.key(2)),
        empirical_fisher_operator(APPLY, loss, model, x, jnp.arange(5) % 2),
        hessian_operator(APPLY, loss, model, x, jnp.arange(5) % 2),
    ]
    for op in ops:
        with pytest.raises(ValueError, match="`vector` must have the structure"):
            op.mv(other)
        with pytest.raises(ValueError, match="`vector` has shape"):
            op.mv(wrong_shape)
        with pytest.raises(ValueError, match="`vector`"):
            eqx.filter_jit(lambda o, w: o.mv(w))(op, other)
