"""ScannedBlocks / Chain against the unrolled flow, Permute's derivative, and memory-saving
gradients through scanned layers (equal to autodiff; temp memory independent of depth)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from respax.generative import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    Chain,
    Flow,
    Permute,
    ScannedBlocks,
    StandardNormal,
    memory_saving_forward,
)


def _layers(key, n, d=4, context_size=0):
    out = []
    for k in jax.random.split(key, n):
        k1, k2, k3 = jax.random.split(k, 3)
        act = ActNorm((d,))
        act = eqx.tree_at(lambda m: m.bias, act, 0.1 * jax.random.normal(k3, (d,)))
        out.append(
            Chain(
                [
                    act,
                    Permute((d,), permutation=jax.random.permutation(k2, d)),
                    AffineCoupling(
                        (d,),
                        key=k1,
                        width=8,
                        zero_init=False,
                        scale_fn="exp",
                        context_size=context_size,
                    ),
                ]
            )
        )
    return out


@pytest.mark.float64
def test_scanned_equals_unrolled_flow_with_context():
    layers = _layers(jax.random.key(0), 2, context_size=2)
    unrolled = Flow(StandardNormal((4,)), layers)
    scanned = Flow(StandardNormal((4,)), [ScannedBlocks(layers)])
    x = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64)
    c = jax.random.normal(jax.random.key(2), (5, 2), jnp.float64)

    @eqx.filter_jit
    def everything(unrolled, scanned):
        z1, ld1 = unrolled.forward_and_log_det(x, c)
        z2, ld2 = scanned.forward_and_log_det(x, c)
        x2, ild = scanned.inverse_and_log_det(z2, c)
        return z1, ld1, z2, ld2, x2, ild

    z1, ld1, z2, ld2, x2, ild = everything(unrolled, scanned)
    np.testing.assert_allclose(z2, z1, atol=1e-12)
    np.testing.assert_allclose(ld2, ld1, atol=1e-12)
    np.testing.assert_allclose(x2, x, atol=1e-10)
    np.testing.assert_allclose(ild, -ld2, atol=1e-10)
    assert scanned.blocks[0].length == 2
    f, i = scanned.lipschitz_bound()
    assert f == np.inf and i == np.inf


@pytest.mark.float64
def test_permute_derivatives_are_the_permutation_matrix():
    perm = jnp.array([2, 0, 3, 1])
    p = Permute((4,), permutation=perm)
    x = jnp.arange(4.0, dtype=jnp.float64)
    expected = jnp.eye(4, dtype=jnp.float64)[perm]
    fwd = lambda v: p.forward_and_log_det(v)[0]  # noqa: E731
    np.testing.assert_array_equal(jax.jacfwd(fwd)(x), expected)
    np.testing.assert_array_equal(jax.jacrev(fwd)(x), expected)
    inv = lambda v: p.inverse_and_log_det(v)[0]  # noqa: E731
    np.testing.assert_array_equal(jax.jacrev(inv)(x), expected.T)
    np.testing.assert_array_equal(inv(fwd(x)), x)


def _nll(blocks, x, memsave):
    flow = Flow(StandardNormal((4,)), blocks)
    z, ld = memory_saving_forward(flow, x) if memsave else flow.forward_and_log_det(x)
    return jnp.mean(0.5 * jnp.sum(z**2, 1) - ld + jnp.sin(z[:, 0]))


@pytest.mark.float64
def test_memory_saving_gradients_through_scanned_layers_equal_autodiff():
    layers = _layers(jax.random.key(3), 2)
    blocks = [
        ScannedBlocks(layers),
        AdditiveCoupling((4,), key=jax.random.key(4), width=8, zero_init=False),
    ]
    x = jax.random.normal(jax.random.key(5), (6, 4), jnp.float64)
    grad = eqx.filter_jit(eqx.filter_grad(lambda bx, m: _nll(*bx, m)))
    g_auto = grad((blocks, x), False)  # parameters and input
    g_mem = grad((blocks, x), True)
    leaves_a, leaves_m = jax.tree.leaves(g_auto), jax.tree.leaves(g_mem)
    assert len(leaves_a) == len(leaves_m) > 1
    for a, b in zip(leaves_a, leaves_m, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-9, rtol=1e-7)


def test_memory_saving_temp_memory_does_not_grow_with_scanned_depth():
    x = jnp.zeros((64, 4))

    def temp(depth):
        blocks = [ScannedBlocks(_layers(jax.random.key(6), depth))]
        params, static = eqx.partition(blocks, eqx.is_inexact_array)
        fn = jax.jit(jax.grad(lambda p: _nll(eqx.combine(p, static), x, True)))
        return fn.lower(params).compile().memory_analysis().temp_size_in_bytes

    assert temp(16) <= 1.1 * temp(2)


def test_bad_composites_raise():
    with pytest.raises(ValueError, match="blocks"):
        ScannedBlocks([])
    a = AdditiveCoupling((4,), key=jax.random.key(0), width=8)
    b = AdditiveCoupling((4,), key=jax.random.key(0), width=16)
    with pytest.raises(ValueError, match=r"blocks\[1\]"):
        ScannedBlocks([a, b])
    with pytest.raises(TypeError, match=r"blocks\[0\]"):
        ScannedBlocks([object()])
    with pytest.raises(ValueError, match=r"blocks\[1\]"):
        Chain([a, Permute((3,))])
