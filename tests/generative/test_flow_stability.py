"""Memory-saving gradients vs autodiff, FD regularizer limits, diagnostics on stable flows."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from respax.generative import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    Flow,
    InvertibleResidualBlock,
    Permute,
    StandardNormal,
    condition_number,
    fd_inverse_regularizer,
    fd_regularizer,
    memory_saving_forward,
    nonfinite_fraction,
    ood_probes,
    reconstruction_error,
)


def _flow(key, d=4, residual=True):
    ks = jax.random.split(key, 4)
    blocks = [
        ActNorm((d,)),
        AffineCoupling((d,), key=ks[0], width=8, zero_init=False),
        Permute((d,)),
        AdditiveCoupling((d,), key=ks[1], width=8, zero_init=False),
    ]
    if residual:  # the fixed-point inverse costs compile time; only the memsave oracle needs it
        blocks.append(InvertibleResidualBlock((d,), key=ks[2], width=8, rtol=1e-12, atol=1e-12))
    return Flow(StandardNormal((d,)), blocks)


def _loss_plain(blocks, x):
    flow = Flow(StandardNormal((4,)), blocks)
    z, ld = flow.forward_and_log_det(x)
    return jnp.mean(jnp.sum(z**2, 1) * 0.5 - ld + jnp.sin(z[:, 0]))


def _loss_memsave(blocks, x):
    flow = Flow(StandardNormal((4,)), blocks)
    z, ld = memory_saving_forward(flow, x)
    return jnp.mean(jnp.sum(z**2, 1) * 0.5 - ld + jnp.sin(z[:, 0]))


@pytest.mark.float64
def test_memory_saving_gradients_equal_autodiff():
    flow = _flow(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64)
    g1 = eqx.filter_jit(eqx.filter_grad(_loss_plain))(flow.blocks, x)
    g2 = eqx.filter_jit(eqx.filter_grad(_loss_memsave))(flow.blocks, x)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-8, rtol=1e-6)


@pytest.mark.float64
@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("normalize", ["example", "batch_axis"])
def test_fd_penalty_approaches_jacobian_norm(power, normalize):
    flow = _flow(jax.random.key(2), residual=False)
    x = jax.random.normal(jax.random.key(3), (3, 4), jnp.float64)
    key = jax.random.key(4)
    eps = 1e-5
    pen = fd_regularizer(flow.forward, x, key=key, eps=eps, normalize=normalize, power=power)
    # the same directions, and the exact ||J d||^2 summed over the batch
    from respax.generative._flow_stability import _directions

    d = _directions(key, x.shape, x.dtype, normalize)
    jd = jax.jvp(flow.forward, (x,), (d,))[1]
    exact = jnp.sum(jd**2) * eps ** (2 - power)
    np.testing.assert_allclose(pen, exact, rtol=1e-3)
    inv = fd_inverse_regularizer(flow, x, key=key, eps=eps, normalize=normalize, power=power)
    assert bool(jnp.isfinite(inv)) and float(inv) > 0


def test_inverse_fd_without_differentiation_has_no_parameter_gradient():
    flow = _flow(jax.random.key(5), residual=False)
    x = jax.random.normal(jax.random.key(6), (3, 4))

    def pen(f, diff):
        return fd_inverse_regularizer(f, x, key=jax.random.key(7), differentiate_inverse=diff)

    g_off = eqx.filter_jit(eqx.filter_grad(lambda f: pen(f, False)))(flow)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(g_off))
    g_on = eqx.filter_jit(eqx.filter_grad(lambda f: pen(f, True)))(flow)
    assert any(float(jnp.max(jnp.abs(g))) > 0.0 for g in jax.tree.leaves(g_on))


def test_diagnostics_on_a_stable_flow_and_bad_kind():
    flow = _flow(jax.random.key(8), residual=False)
    x = ood_probes("rademacher", (8, 4), key=jax.random.key(9))
    err = eqx.filter_jit(reconstruction_error)(flow, x)
    assert err.shape == (8,) and float(err.max()) < 1e-3
    assert float(nonfinite_fraction(jnp.array([[1.0, jnp.inf], [0.0, 1.0]]))) == 0.5
    assert float(condition_number(flow, x[0])) >= 1.0
    with pytest.raises(ValueError, match="kind"):
        ood_probes("laplace", (2, 4), key=jax.random.key(0))
