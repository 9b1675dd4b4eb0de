"""Compilation behaviour with optax optimizers, which are closures (compared by identity):
a learning rate passed as a traced argument and the optimizer built inside the caller's jit
compiles once for a whole sweep and vmaps; a fresh optimizer object passed from outside as a
static argument compiles once per object."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from respax.implicit_diff import FullUnroll, hypergradient

X = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
Y = jnp.array([1.0, 2.0, 0.0])


def inner(lam, w):
    return 0.5 * jnp.sum((X @ w - Y) ** 2) + 0.5 * jnp.sum(jnp.exp(lam) * w**2)


def outer(lam, w):
    return 0.5 * jnp.sum((w - 0.5) ** 2)


def test_traced_learning_rate_compiles_once_for_a_sweep():
    def hypergrad(lr, lam):
        method = FullUnroll(optax.sgd(lr), num_steps=5)
        return hypergradient(outer, inner, lam, jnp.zeros(2), method)[0]

    once = eqx.filter_jit(eqx.debug.assert_max_traces(hypergrad, max_traces=1))
    lam = jnp.zeros(2)
    sweep = [once(jnp.asarray(lr), lam) for lr in (0.05, 0.1, 0.2)]
    # the same function vmapped over the learning rates
    batched = jax.jit(jax.vmap(hypergrad, in_axes=(0, None)))(jnp.array([0.05, 0.1, 0.2]), lam)
    for i, g in enumerate(sweep):
        assert jnp.allclose(g, batched[i], atol=1e-6)
    # and the learning rate matters (the sweep is not returning one cached value)
    assert not jnp.allclose(sweep[0], sweep[2], atol=1e-4)


def test_fresh_static_optimizers_retrace_and_a_reused_one_does_not():
    traces = []

    @eqx.filter_jit
    def hypergrad(method, lam):
        traces.append(None)
        return hypergradient(outer, inner, lam, jnp.zeros(2), method)[0]

    lam = jnp.zeros(2)
    method = FullUnroll(optax.sgd(0.1), num_steps=20)
    hypergrad(method, lam)
    hypergrad(method, lam)
    assert len(traces) == 1  # the same object: cached
    hypergrad(FullUnroll(optax.sgd(0.1), num_steps=20), lam)
    assert len(traces) == 2  # an equal but new closure: compiled again
