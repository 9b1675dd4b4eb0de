"""Invertible blocks: exact log-dets against dense jacobians, inverses, Lipschitz bounds."""

import math

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from respax.generative import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    Flow,
    InvertibleResidualBlock,
    LUConv1x1,
    Permute,
    Squeeze,
    StandardNormal,
)


def _randomise(block, key, scale=0.5):
    """Non-trivial parameters (zero-init conditioners would make couplings the identity)."""
    params, static = eqx.partition(block, eqx.is_inexact_array)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return eqx.combine(jax.tree.unflatten(tree, leaves), static)


def _blocks(shape, key):
    ks = jax.random.split(key, 8)
    out = {
        "additive": AdditiveCoupling(shape, key=ks[0], width=8, depth=1),
        "affine_exp": AffineCoupling(shape, key=ks[1], scale_fn="exp", width=8, depth=1),
        "affine_sigmoid": AffineCoupling(
            shape, key=ks[2], scale_fn="sigmoid", eps=1e-6, width=8, depth=1
        ),
        "affine_softplus": AffineCoupling(
            shape, key=ks[3], scale_fn="softplus", eps=1e-2, width=8, depth=1
        ),
        "actnorm": ActNorm(shape),
        "lu": LUConv1x1(shape, key=ks[4]),
        "permute": Permute(shape),
        "residual": InvertibleResidualBlock(
            shape,
            key=ks[5],
            width=8,
            depth=1,
            lipschitz_constant=0.8,
            rtol=1e-12,
            atol=1e-12,
            max_steps=2000,
        ),
    }
    out = {k: _randomise(v, ks[6]) if k not in ("permute",) else v for k, v in out.items()}
    if len(shape) == 3:
        out["squeeze"] = Squeeze(shape)
    return out


_SLOW = pytest.mark.slow  # eager dense jacobians of every block: ~20 s per case on one core
SHAPES = [(4,), pytest.param((5,), marks=_SLOW), pytest.param((2, 2, 3), marks=_SLOW)]
REGIMES = [pytest.param(0.1, marks=_SLOW), 1.0, pytest.param(4.0, marks=_SLOW)]


@pytest.mark.float64
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("regime", REGIMES)
def test_log_det_matches_dense_jacobian_and_inverse(shape, regime):
    key = jax.random.key(1)
    x = regime * jax.random.normal(jax.random.key(2), shape, jnp.float64)
    for name, block in _blocks(shape, key).items():
        y, ld = block.forward_and_log_det(x)
        jac = jax.jacfwd(lambda v: block.forward_and_log_det(v)[0])(x)
        n = math.prod(shape)
        dense = jnp.linalg.slogdet(jac.reshape(n, n))[1]
        np.testing.assert_allclose(ld, dense, atol=1e-10, rtol=1e-10, err_msg=name)
        x_back, ld_inv = block.inverse_and_log_det(y)
        np.testing.assert_allclose(x_back, x, atol=1e-9, rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(ld_inv, -ld, atol=1e-10, rtol=1e-10, err_msg=name)


@pytest.mark.slow
@pytest.mark.float64
def test_flow_log_prob_is_change_of_variables():
    ks = jax.random.split(jax.random.key(3), 4)
    blocks = [
        ActNorm((3,)),
        AffineCoupling((3,), key=ks[0], width=8),
        LUConv1x1((3,), key=ks[1]),
        InvertibleResidualBlock((3,), key=ks[2], width=8, rtol=1e-12, atol=1e-12),
    ]
    blocks = [_randomise(b, k) for b, k in zip(blocks, jax.random.split(ks[3], 4))]
    flow = Flow(StandardNormal((3,)), blocks)
    x = jax.random.normal(jax.random.key(4), (6, 3), jnp.float64)
    jac = jax.vmap(jax.jacfwd(flow.forward))(x)
    expected = jax.vmap(flow.base.log_prob)(flow.forward(x)) + jnp.linalg.slogdet(jac)[1]
    np.testing.assert_allclose(flow.log_prob(x), expected, atol=1e-10)
    np.testing.assert_allclose(flow.inverse(flow.forward(x)), x, atol=1e-9)
    samples = flow.sample(key=jax.random.key(5), sample_shape=(2, 3))
    assert samples.shape == (2, 3, 3) and bool(jnp.all(jnp.isfinite(samples)))


@pytest.mark.slow
@pytest.mark.float64
def test_image_flow_with_squeeze_and_context():
    ks = jax.random.split(jax.random.key(6), 3)
    blocks = [
        ActNorm((4, 4, 1)),
        Squeeze((4, 4, 1)),
        AffineCoupling((2, 2, 4), key=ks[0], width=8, context_size=2),
        LUConv1x1((2, 2, 4), key=ks[1]),
    ]
    blocks = [_randomise(b, ks[2]) if eqx.filter(b, eqx.is_inexact_array) else b for b in blocks]
    flow = Flow(StandardNormal((2, 2, 4)), blocks)
    x = jax.random.normal(jax.random.key(7), (3, 4, 4, 1), jnp.float64)
    c = jax.random.normal(jax.random.key(8), (3, 2), jnp.float64)
    z = flow.forward(x, c)
    np.testing.assert_allclose(flow.inverse(z, c), x, atol=1e-10)
    jac = jax.jacfwd(lambda v: flow.forward(v, c[0]))(x[0]).reshape(16, 16)
    np.testing.assert_allclose(
        flow.log_prob(x, c)[0], flow.base.log_prob(z[0]) + jnp.linalg.slogdet(jac)[1], atol=1e-10
    )


def _sigma_max_min(fn, x):
    n = x.size
    s = jnp.linalg.svd(jax.jacfwd(fn)(x).reshape(n, n), compute_uv=False)
    return s[0], s[-1]


@pytest.mark.slow
@settings(max_examples=15)
@given(seed=st.integers(0, 2**30), scale=st.floats(0.01, 10.0))
@pytest.mark.float64
def test_declared_bounds_hold_and_inverse_is_identity(seed, scale):
    key = jax.random.key(seed)
    x = scale * jax.random.normal(jax.random.fold_in(key, 1), (4,), jnp.float64)
    for name, block in _blocks((4,), key).items():
        y = block.forward_and_log_det(x)[0]
        np.testing.assert_allclose(block.inverse_and_log_det(y)[0], x, atol=1e-8 * (1 + scale))
        lip_f, lip_i = block.lipschitz_bound()
        if name.startswith("affine"):
            assert math.isinf(lip_f) and math.isinf(lip_i)
            continue
        s_max, _ = _sigma_max_min(lambda v: block.forward_and_log_det(v)[0], x)
        s_inv, _ = _sigma_max_min(lambda v: block.inverse_and_log_det(v)[0], y)
        assert float(s_max) <= float(lip_f) * (1 + 1e-9), name
        assert float(s_inv) <= float(lip_i) * (1 + 1e-9), name


@pytest.mark.float64
def test_affine_coupling_has_no_global_inverse_bound():
    """With the scale pushed to 0 (bias of the log-scale output -> -inf), Lip(F^-1) ~ 1/s grows."""
    block = AffineCoupling((2,), key=jax.random.key(0), scale_fn="exp", width=4, depth=1)
    y = jnp.array([0.3, 0.7])
    norms = []
    for shift in [0.0, -5.0, -10.0, -20.0]:
        b = eqx.tree_at(lambda m: m.conditioner.layers[-1].bias, block, jnp.array([shift, 0.0]))
        s_inv, _ = _sigma_max_min(lambda v: b.inverse_and_log_det(v)[0], y)
        norms.append(float(s_inv))
    assert all(b > 10 * a for a, b in zip(norms[1:], norms[2:]))
    np.testing.assert_allclose(norms[-1], math.exp(20.0), rtol=1e-6)
    # and it also grows with |x2| through the scale's dependence on x1 (a local bound only)
    b = _randomise(block, jax.random.key(1))
    grow = [
        float(_sigma_max_min(lambda v: b.forward_and_log_det(v)[0], jnp.array([0.1, r]))[0])
        for r in (1.0, 10.0, 100.0)
    ]
    assert grow[2] > grow[1] > grow[0] and grow[2] > 5 * grow[0]


@pytest.mark.float64
def test_residual_series_log_det_within_error_and_truncation_bound():
    block = InvertibleResidualBlock(
        (6,), key=jax.random.key(0), width=16, depth=1, lipschitz_constant=0.5
    )
    block = _randomise(block, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (6,), jnp.float64)
    exact = block.forward_and_log_det(x)[1]
    num_terms = 12
    _, est = block.forward_and_log_det_estimate(
        x, key=jax.random.key(3), num_terms=num_terms, num_probes=256
    )
    bound = block.truncation_bound(num_terms)
    assert abs(float(est.value - exact)) <= 3 * float(est.standard_error) + bound
    # with many probes the remaining bias is the truncation: the dense truncated series is exact
    jac = jax.jacfwd(block.residual)(x)
    series, power = 0.0, jnp.eye(6)
    for k in range(1, num_terms + 1):
        power = power @ jac
        series = series + (-1.0) ** (k + 1) / k * jnp.trace(power)
    assert abs(float(series - exact)) <= bound


def test_bad_inputs_raise_naming_the_argument():
    with pytest.raises(ValueError, match="lipschitz_constant"):
        InvertibleResidualBlock((3,), key=jax.random.key(0), lipschitz_constant=1.0)
    block = AffineCoupling((4,), key=jax.random.key(0), context_size=2)
    with pytest.raises(ValueError, match="`x`"):
        block.forward_and_log_det(jnp.ones(5), jnp.ones(2))
    with pytest.raises(ValueError, match="`context`"):
        block.forward_and_log_det(jnp.ones(4), jnp.ones(3))
    with pytest.raises(ValueError, match="`context`"):
        block.forward_and_log_det(jnp.ones(4))
    with pytest.raises(ValueError, match="scale_fn"):
        AffineCoupling((4,), key=jax.random.key(0), scale_fn="tanh")
    flow = Flow(StandardNormal((4,)), [AdditiveCoupling((4,), key=jax.random.key(0))])
    with pytest.raises(ValueError, match="`x`"):
        flow.log_prob(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="blocks"):
        Flow(StandardNormal((4,)), [AdditiveCoupling((4,), key=jax.random.key(0)), Permute((3,))])
    with pytest.raises(ValueError, match="base"):
        Flow(StandardNormal((3,)), [Permute((4,))])


def test_float32_flow_is_finite_and_invertible():
    ks = jax.random.split(jax.random.key(0), 3)
    blocks = [
        AffineCoupling((8,), key=ks[0]),
        Permute((8,)),
        AdditiveCoupling((8,), key=ks[1]),
        InvertibleResidualBlock((8,), key=ks[2]),
    ]
    flow = Flow(StandardNormal((8,)), [_randomise(b, ks[2], 0.2) for b in blocks])
    x = jax.random.normal(jax.random.key(1), (16, 8))
    z = eqx.filter_jit(lambda f, v: f.forward(v))(flow, x)
    assert z.dtype == jnp.float32
    np.testing.assert_allclose(eqx.filter_jit(lambda f, v: f.inverse(v))(flow, z), x, atol=2e-4)
