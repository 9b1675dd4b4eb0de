"""Structured linear-layer GGN blocks (refined EK-FAC products, the exact oracle's blocks) against
the dense GGN from `jax.jacobian` (float64), on a model with biased, bias-free and shared layers."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from respax.core import SoftmaxCrossEntropy
from respax.interp import EKFAC, KFAC, Exact, fit_factors, pairwise_scores
from respax.interp._influence_layers import LinearBlock, linear_layer_io
from respax.interp._influence_model import FlatModel
from respax.interp._strategies import block_ggn_matvec, gather

N, Q = 20, 4


class Net(eqx.Module):
    shared: eqx.nn.Linear  # applied at every position: a shared layer (generic products)
    nobias: eqx.nn.Linear
    mlp: eqx.nn.MLP

    def __call__(self, x):
        h = jnp.tanh(jax.vmap(self.shared)(x)).ravel()
        return self.mlp(jnp.tanh(self.nobias(h)))


def apply(model, x):
    return model(x)


@functools.cache
def _problem():
    k = jax.random.split(jax.random.key(0), 5)
    net = Net(
        eqx.nn.Linear(2, 3, key=k[0]),
        eqx.nn.Linear(9, 4, use_bias=False, key=k[1]),
        eqx.nn.MLP(4, 3, 4, 1, activation=jnp.tanh, key=k[2]),
    )
    net = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, net)
    x = jax.random.normal(k[3], (N, 3, 2), jnp.float64)
    y = jax.random.randint(k[4], (N,), 0, 3)
    return net, (x, y), (x[:Q], y[:Q])


@functools.cache
def _dense_ggn():
    net, (x, _), _ = _problem()
    loss = SoftmaxCrossEntropy()
    diff, static = eqx.partition(net, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(diff)
    f = lambda p, xi: eqx.combine(unravel(p), static)(xi)
    jac = jax.vmap(jax.jacobian(f), in_axes=(None, 0))(flat, x)  # (n, k, p)
    outs = jax.vmap(f, in_axes=(None, 0))(flat, x)
    h = jax.vmap(jax.hessian(lambda o: loss.loss(o, 0)))(outs)
    return np.asarray(jnp.einsum("nkp,nkl,nlq->pq", jac, h, jac) / x.shape[0])


def _segment_index(seg):
    return np.concatenate([np.arange(a, b) for a, b in seg])


@pytest.mark.slow
@pytest.mark.float64
def test_structured_products_and_blocks_equal_the_dense_ggn():
    net, train, _ = _problem()
    loss = SoftmaxCrossEntropy()
    ggn = _dense_ggn()
    f = fit_factors(apply, loss, net, train, strategy=EKFAC(refine_iterations=3))
    # The shared layer keeps the generic product; the bias-free and biased linears are
    # structured (their per-example inputs and pseudo-gradients come from the fitting inputs,
    # which the factors do not keep).
    assert f.linear[0] is None
    assert f.linear[1] == LinearBlock(1, 4, 9, False)  # plan index 1: `nobias`
    assert all(isinstance(b, LinearBlock) and b.bias for b in f.linear[2:])
    model = FlatModel(apply, loss, net)
    structured = tuple(b for b in f.linear if b is not None)
    layer_io = linear_layer_io(model, f.ekfac.plan, train[0], structured)
    assert len(layer_io) == 3
    p = model.num_params
    eye = jnp.eye(p, dtype=jnp.float64)
    products = jax.jit(
        lambda v, d: (
            block_ggn_matvec(model, train[0], f.block_segments, d, f.linear, layer_io)(v),
            block_ggn_matvec(
                model, train[0], f.block_segments, 0.0, f.linear, layer_io, jnp.float32
            )(v),
        )
    )
    damping = 0.3
    got, got32 = products(eye, damping)
    want = damping * np.eye(p)
    for seg in f.block_segments:
        i = _segment_index(seg)
        want[np.ix_(i, i)] += ggn[np.ix_(i, i)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * np.abs(ggn).max())
    # float32 products from float64 arrays: float32 accuracy, returned in float64.
    assert got32.dtype == jnp.float64
    np.testing.assert_allclose(
        got32, want - damping * np.eye(p), rtol=0, atol=1e-5 * np.abs(ggn).max()
    )
    # EK-FAC's eigenvalue corrections (rank-one fast path for the once-used layers, per-example
    # gradients for the shared one) are the exact GGN block's diagonal in the Kronecker basis.
    layers = [net.shared, net.nobias, *net.mlp.layers]
    for seg, blk, layer in zip(f.block_segments, f.ekfac.blocks, layers, strict=True):
        i = _segment_index(seg)
        ug, ua = np.asarray(blk["UG"]), np.asarray(blk["UA"])
        n_in = layer.weight.shape[1]
        # Matrix form [W | b] -> flat layout (weight row-major, then bias).
        basis = np.einsum("or,is->oirs", ug, ua)
        flat_basis = basis[:, :n_in].reshape(-1, basis.shape[2] * basis.shape[3])
        if ua.shape[0] > n_in:
            flat_basis = np.concatenate([flat_basis, basis[:, n_in].reshape(ug.shape[0], -1)])
        c = ggn[np.ix_(i, i)]
        want_d = np.einsum("pk,pq,qk->k", flat_basis, c, flat_basis).reshape(blk["D"].shape)
        np.testing.assert_allclose(blk["D"], want_d, rtol=1e-9, atol=1e-12 * np.abs(c).max())
    # The exact oracle's structured dense blocks.
    ex = fit_factors(apply, loss, net, train, strategy=Exact(block_diagonal=True))
    ex_dense = fit_factors(
        apply, loss, net, train, strategy=Exact(block_diagonal=True, structured=False)
    )
    for seg, c, c_dense in zip(f.block_segments, ex.matrices, ex_dense.matrices, strict=True):
        i = _segment_index(seg)
        np.testing.assert_allclose(c, ggn[np.ix_(i, i)], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(c_dense, ggn[np.ix_(i, i)], rtol=1e-10, atol=1e-13)


@pytest.mark.slow
@pytest.mark.float64
def test_refined_ekfac_converges_to_exact_with_structured_products():
    net, train, query = _problem()
    loss = SoftmaxCrossEntropy()
    ex = fit_factors(apply, loss, net, train, strategy=Exact(block_diagonal=True))
    p = FlatModel(apply, loss, net).num_params
    for damping in (1e-3, 1e-1):
        want = np.asarray(pairwise_scores(ex, apply, loss, net, query, train, damping=damping))
        # Exact arithmetic converges within the largest block's size; float64 needs a few more.
        f = fit_factors(apply, loss, net, train, strategy=EKFAC(refine_iterations=p))
        got = np.asarray(pairwise_scores(f, apply, loss, net, query, train, damping=damping))
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10 * np.abs(want).max())
    # float32 products inside the float64 iteration: the same scores to float32 accuracy.
    f32 = fit_factors(
        apply, loss, net, train, strategy=EKFAC(refine_iterations=p, refine_dtype="float32")
    )
    got = np.asarray(pairwise_scores(f32, apply, loss, net, query, train, damping=1e-1))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    # K-FAC as the preconditioner converges to the same scores.
    fk = fit_factors(apply, loss, net, train, strategy=KFAC(refine_iterations=p))
    got = np.asarray(pairwise_scores(fk, apply, loss, net, query, train, damping=1e-1))
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10 * np.abs(want).max())
    with pytest.raises(ValueError, match="refine_dtype"):
        EKFAC(refine_iterations=2, refine_dtype="float16")


@pytest.mark.float64
def test_layer_io_of_a_plain_mlp_is_all_structured():
    loss = SoftmaxCrossEntropy()
    mlp = eqx.nn.MLP(3, 2, 4, 2, key=jax.random.key(1))
    mlp = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, mlp)
    x = jax.random.normal(jax.random.key(2), (6, 3), jnp.float64)
    f = fit_factors(
        apply, loss, mlp, (x, jnp.zeros(6, jnp.int32)), strategy=EKFAC(refine_iterations=2)
    )
    assert all(b is not None for b in f.linear)
    model = FlatModel(apply, loss, mlp)
    a, g = linear_layer_io(model, f.ekfac.plan, x, f.linear)[0]
    # The first layer's inputs are the data; its pseudo-gradients are the bias gradients of
    # the output Hessian square root's columns.
    np.testing.assert_allclose(a, x, rtol=0, atol=0)
    sqrt = jax.vmap(loss.hessian_sqrt)(model.batch_outputs(model.flat, x))  # (n, k, c)
    seg = f.block_segments[0]
    rows = jax.vmap(lambda xi: model.ggn_rows(model.flat, xi))(x)  # (n, c, p)
    bias_rows = gather(rows, seg)[..., -4:]
    np.testing.assert_allclose(np.swapaxes(g, 0, 1), bias_rows, rtol=1e-12, atol=1e-14)
    assert sqrt.shape[-1] == g.shape[0]


def test_capture_plan_falls_back_only_on_capture_errors_and_warns():
    """`capture_plan` used to catch every exception and take the generic path silently."""
    from respax.interp._influence_layers import capture_plan

    model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    loss = SoftmaxCrossEntropy()
    x = jnp.ones((5, 3))
    assert capture_plan(lambda m, xi: m(xi), loss, model, x) is not None
    with pytest.warns(UserWarning, match="layer capture failed"):
        fell_back = eqx.filter_jit(
            lambda m: capture_plan(lambda mm, xi: mm(xi), loss, m, x) is None
        )(model)
    assert fell_back

    def broken(m, xi):
        raise RuntimeError("a bug in apply")

    with pytest.raises(RuntimeError, match="a bug in apply"):
        capture_plan(broken, loss, model, x)
