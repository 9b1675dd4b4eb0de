"""SOAP against a dense reference (the Kronecker eigenbasis as one explicit `kron(QL, QR)`
matrix, Adam on the flattened coordinates), plain Adam where nothing is preconditioned, a float32
training smoke test and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from respax.curvature import SOAPState, scale_by_soap, soap


def _dense_soap(grads, lr, b1, b2, eps, refresh):
    """SOAP on one matrix parameter, written densely: factors, numpy eigh, the flattened
    (row-major) gradient rotated by the explicit Kronecker basis `kron(QL, QR)`. Call `t` uses
    the basis of the gradients before it; `refresh(t)` says whether the basis is recomputed after
    call `t`; call 0 only builds the preconditioner."""
    m_dim, n_dim = grads[0].shape
    big_l, big_r = np.zeros((m_dim, m_dim)), np.zeros((n_dim, n_dim))
    q = np.eye(m_dim * n_dim)
    mu, nu = np.zeros(m_dim * n_dim), np.zeros(m_dim * n_dim)
    out = []
    for t, g in enumerate(grads):
        if t == 0:
            out.append(np.zeros_like(g))
        else:
            mu = b1 * mu + (1 - b1) * g.ravel()
            nu = b2 * nu + (1 - b2) * (q.T @ g.ravel()) ** 2
            m_hat = (q.T @ mu) / (1 - b1**t)
            v_hat = nu / (1 - b2**t)
            out.append((-lr * q @ (m_hat / (np.sqrt(v_hat) + eps))).reshape(m_dim, n_dim))
        big_l = b2 * big_l + (1 - b2) * g @ g.T
        big_r = b2 * big_r + (1 - b2) * g.T @ g
        if refresh(t):
            q = np.kron(np.linalg.eigh(big_l)[1], np.linalg.eigh(big_r)[1])
    return out


@pytest.mark.float64
@pytest.mark.parametrize("shape", [(4, 4), (5, 3)])
def test_soap_matches_dense_reference_on_one_layer(shape):
    """Square: the default schedule (a refresh after calls 0 and 3). Rectangular: a single
    gradient's factor is singular (its eigenbasis is not unique), so the basis is first refreshed
    after call 2 (by `refresh=`), once the factors have full rank."""
    rng = np.random.default_rng(0)
    lin = eqx.nn.Linear(shape[1], shape[0], key=jax.random.key(0))
    params = jax.tree.map(lambda x: x.astype(jnp.float64), eqx.filter(lin, eqx.is_inexact_array))
    grads = [rng.normal(size=shape) for _ in range(8)]
    bias_grads = [rng.normal(size=shape[0]) for _ in range(8)]
    lr, b1, b2, eps = 0.05, 0.9, 0.95, 1e-8
    square = shape[0] == shape[1]
    refresh = (lambda t: t % 3 == 0) if square else (lambda t: t in (2, 5))
    opt = soap(lr, b1, b2, eps, precondition_frequency=3)
    adam = optax.adam(lr, b1, b2, eps)
    state, adam_state = opt.init(params), adam.init(params.bias)
    want = _dense_soap(grads, lr, b1, b2, eps, refresh)
    step = jax.jit(opt.update)
    for t, (g, gb, w) in enumerate(zip(grads, bias_grads, want, strict=True)):
        g_tree = eqx.tree_at(
            lambda p: (p.weight, p.bias), params, (jnp.asarray(g), jnp.asarray(gb))
        )
        flag = None if square else jnp.asarray(refresh(t))
        updates, state = step(g_tree, state, refresh=flag)
        np.testing.assert_allclose(np.asarray(updates.weight), w, rtol=1e-9, atol=1e-13)
        # The bias is not a matrix: plain Adam on the gradients after the first.
        if t == 0:
            np.testing.assert_array_equal(np.asarray(updates.bias), 0.0)
            continue
        with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes dtypes
            ub, adam_state = adam.update(jnp.asarray(gb), adam_state)
        np.testing.assert_allclose(np.asarray(updates.bias), np.asarray(ub), rtol=1e-12)
    assert isinstance(state[0], SOAPState) and int(state[0].count) == 8


def test_soap_without_preconditioned_sides_is_adam():
    params = {"w": jnp.ones((6, 5)), "b": jnp.zeros(6)}
    opt = soap(1e-2, max_precond_dim=4)  # both sides of w are longer: identity bases
    adam = optax.adam(1e-2, b1=0.95, b2=0.95)
    s, sa = opt.init(params), adam.init(params)
    assert s[0].factors == ({}, {})
    key = jax.random.key(0)
    for i in range(5):
        g = jax.tree.map(lambda x: jax.random.normal(jax.random.fold_in(key, i), x.shape), params)
        u, s = opt.update(g, s)
        if i == 0:  # the first call builds the preconditioner
            assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
            continue
        with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes dtypes
            ua, sa = adam.update(g, sa)
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(ua), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_soap_trains_a_float32_autoencoder_under_vmap_and_inject_hyperparams():
    """A population of learning rates, vmapped, with an unbatched `refresh`: the loss falls for
    each member and stays finite."""
    model = eqx.nn.MLP(16, 16, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    x = jax.random.normal(jax.random.key(1), (64, 16))
    loss = lambda p: jnp.mean((jax.vmap(eqx.combine(p, static))(x) - x) ** 2)
    opt = optax.inject_hyperparams(soap, static_args=("precondition_frequency", "max_precond_dim"))(
        learning_rate=0.0, precondition_frequency=5
    )

    def train(lr):
        s = opt.init(params)
        s.hyperparams["learning_rate"] = lr

        def body(carry, i):
            p, s = carry
            u, s = opt.update(jax.grad(loss)(p), s, p, refresh=i % 5 == 0)
            return (optax.apply_updates(p, u), s), None

        (p, s), _ = jax.lax.scan(body, (params, s), jnp.arange(60))
        return loss(p), s.inner_state[0].count

    final, counts = jax.jit(jax.vmap(train))(jnp.asarray([1e-2, 3e-2]))
    initial = float(loss(params))
    assert np.all(np.isfinite(final)) and np.all(np.asarray(final) < 0.7 * initial)
    assert np.all(np.asarray(counts) == 60)


def test_the_eigenbasis_under_vmap_is_each_matrix_decomposed_alone():
    """The refresh's eigh runs one matrix at a time under (nested) vmap (`lax.map`, not a
    batched LAPACK call that deadlocked in XLA's CPU thread pool): same bases as a loop."""
    from respax.curvature._soap import _basis

    m = jax.random.normal(jax.random.key(2), (2, 3, 6, 6))
    m = m @ jnp.swapaxes(m, -1, -2)
    want = np.stack([[np.asarray(_basis(m[i, j])) for j in range(3)] for i in range(2)])
    got = jax.jit(jax.vmap(jax.vmap(_basis)))(m)
    np.testing.assert_array_equal(np.asarray(got), want)
    hlo = jax.jit(jax.vmap(_basis)).lower(m[0]).as_text()
    assert "while" in hlo  # the lax.map loop, not one batched call


@pytest.mark.float64
def test_gradient_through_soap_updates_matches_finite_differences():
    """Reverse mode through the update (refreshes included), e.g. a hypergradient with respect
    to the learning rate: the eigenbasis carries its own derivative rule."""
    w0 = jax.random.normal(jax.random.key(0), (4, 3))
    x = jax.random.normal(jax.random.key(1), (16, 3))
    loss = lambda w: jnp.mean((x @ w.T) ** 2)

    def train(lr):
        opt = soap(learning_rate=lr, precondition_frequency=2)
        w, s = w0, opt.init(w0)
        for _ in range(4):
            u, s = opt.update(jax.grad(loss)(w), s, w)
            w = optax.apply_updates(w, u)
        return loss(w)

    fd = (train(0.05 + 1e-6) - train(0.05 - 1e-6)) / 2e-6
    np.testing.assert_allclose(jax.grad(train)(0.05), fd, rtol=1e-5)


def test_soap_bad_input():
    with pytest.raises(ValueError, match="b1"):
        scale_by_soap(b1=1.0)
    with pytest.raises(ValueError, match="shampoo_beta"):
        scale_by_soap(shampoo_beta=-0.5)
    with pytest.raises(ValueError, match="precondition_frequency"):
        scale_by_soap(precondition_frequency=0)
    with pytest.raises(ValueError, match="weight_decay"):
        soap(1e-3, weight_decay=-1.0)
    opt = scale_by_soap()
    state = opt.init({"w": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match="structure"):
        opt.update({"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, state)
