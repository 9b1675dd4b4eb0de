"""Influence scores of every strategy against an independent dense oracle (float64)."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from respax.core import CG, BernoulliLoss, GaussianLoss, Neumann, SoftmaxCrossEntropy
from respax.interp import (
    EKFAC,
    KFAC,
    Arnoldi,
    Diagonal,
    Exact,
    Identity,
    LiSSA,
    MatrixFree,
    fit_factors,
    inverse_curvature_product,
    load_factors,
    pairwise_scores,
    pearson,
    save_factors,
    self_scores,
)

N, Q = 24, 5


def apply(model, x):
    return model(x)


@functools.cache
def _problem(loss, out=3, key=0):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    model = eqx.nn.MLP(4, out, 5, 1, activation=jnp.tanh, key=k1)
    model = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)
    x = jax.random.normal(k2, (N, 4), jnp.float64)
    if isinstance(loss, SoftmaxCrossEntropy):
        y = jax.random.randint(k3, (N,), 0, out)
    elif isinstance(loss, BernoulliLoss):
        y = jax.random.bernoulli(k3, 0.5, (N, out)).astype(jnp.float64)
    else:
        y = jax.random.normal(k3, (N, out), jnp.float64)
    return model, (x, y), (x[:Q], y[:Q])


@functools.cache
def _dense_oracle_for(loss, curvature="ggn"):
    """`_dense_oracle` on the (cached) `_problem(loss)`, computed once per session."""
    model, train, _ = _problem(loss)
    return _dense_oracle(model, loss, train, curvature)


def _dense_oracle(model, loss, train, curvature="ggn"):
    """Dense curvature from jax.jacobian / jax.hessian, independent of the library's helpers."""
    diff, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(diff)
    f = lambda p, x: eqx.combine(unravel(p), static)(x)
    x, y = train

    @jax.jit
    def curvature_matrix(flat):
        if curvature == "ggn":
            jac = jax.vmap(jax.jacobian(f), in_axes=(None, 0))(flat, x)  # (n, k, p)
            outs = jax.vmap(f, in_axes=(None, 0))(flat, x)
            h = jax.vmap(lambda o: jax.hessian(lambda oo: loss.loss(oo, y[0]))(o))(outs)
            # The output Hessian of these losses does not depend on the target.
            return jnp.einsum("nkp,nkl,nlq->pq", jac, h, jac) / x.shape[0]
        mean_loss = lambda p: jnp.mean(jax.vmap(lambda xi, yi: loss.loss(f(p, xi), yi))(x, y))
        return jax.hessian(mean_loss)(flat)

    per_example_grads = jax.jit(
        jax.vmap(jax.grad(lambda p, xi, yi: loss.loss(f(p, xi), yi)), in_axes=(None, 0, 0))
    )
    grads = lambda data: per_example_grads(flat, *data)
    return np.asarray(curvature_matrix(flat)), grads


def _oracle_scores(c, gq, gt, damping):
    a = c + damping * np.eye(c.shape[0])
    return np.asarray(gq) @ np.linalg.solve(a, np.asarray(gt).T)


def _block_diag(c, model):
    """Zero out cross-layer blocks of c (the MLP's layers: weight + bias each)."""
    diff, _ = eqx.partition(model, eqx.is_inexact_array)
    sizes = [int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(diff)]
    starts = np.cumsum([0] + sizes)
    mask = np.zeros_like(c)
    for layer in range(len(sizes) // 2):
        a, b = starts[2 * layer], starts[2 * layer + 2]
        mask[a:b, a:b] = 1
    return c * mask


@pytest.mark.float64
@pytest.mark.parametrize(
    ("loss", "block_diagonal"),
    [
        pytest.param(SoftmaxCrossEntropy(), False, marks=pytest.mark.slow),
        (SoftmaxCrossEntropy(), True),
        (GaussianLoss(0.5), False),
        pytest.param(BernoulliLoss(), True, marks=pytest.mark.slow),
    ],
    ids=["softmax-full", "softmax-block", "gaussian-full", "bernoulli-block"],
)
def test_exact_ggn_matches_dense_oracle(loss, block_diagonal):
    model, train, query = _problem(loss)
    c, grads = _dense_oracle_for(loss)
    if block_diagonal:
        c = _block_diag(c, model)
    f = fit_factors(
        apply, loss, model, train, strategy=Exact(block_diagonal=block_diagonal, chunk_size=7)
    )
    for damping in (1e-3, 0.3):
        s = pairwise_scores(f, apply, loss, model, query, train, damping=damping)
        np.testing.assert_allclose(
            s, _oracle_scores(c, grads(query), grads(train), damping), rtol=1e-9, atol=1e-10
        )


@pytest.mark.slow
@pytest.mark.float64
def test_exact_hessian_matches_jax_hessian():
    loss = SoftmaxCrossEntropy()
    model, train, query = _problem(loss)
    c, grads = _dense_oracle_for(loss, curvature="hessian")
    f = fit_factors(apply, loss, model, train, strategy=Exact(curvature="hessian", chunk_size=16))
    s = pairwise_scores(f, apply, loss, model, query, train, damping=2.0)
    np.testing.assert_allclose(
        s, _oracle_scores(c, grads(query), grads(train), 2.0), rtol=1e-9, atol=1e-10
    )


SOLVERS = {
    "cg": (MatrixFree(CG(max_steps=80, rtol=0.0)), 1e-3, 1e-8),
    "cg_block": (MatrixFree(CG(max_steps=80, rtol=0.0), block_diagonal=True), 1e-3, 1e-8),
    "neumann": (MatrixFree(Neumann(max_steps=1500, step_size=1.0)), 0.2, 1e-7),
    "lissa_full_batch": (LiSSA(num_iterations=1500, batch_size=N, scale_factor=1.5), 0.2, 1e-7),
    "arnoldi_full_rank": (Arnoldi(rank=43), 1e-3, 1e-7),
    "arnoldi_block": (Arnoldi(rank=43, block_diagonal=True), 1e-3, 1e-7),
}
SLOW_SOLVERS = {"cg_block", "arnoldi_block", "lissa_full_batch"}


@pytest.mark.float64
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SOLVERS else n for n in SOLVERS]
)
def test_solver_matches_exact_oracle(name):
    strategy, damping, tol = SOLVERS[name]
    loss = SoftmaxCrossEntropy()
    model, train, query = _problem(loss)
    exact = fit_factors(
        apply, loss, model, train, strategy=Exact(block_diagonal=strategy.block_diagonal)
    )
    expected = pairwise_scores(exact, apply, loss, model, query, train, damping=damping)
    key = jax.random.key(0)
    f = fit_factors(apply, loss, model, train, strategy=strategy, key=key)
    s = pairwise_scores(f, apply, loss, model, query, train, damping=damping, key=key)
    assert float(jnp.max(jnp.abs(s - expected)) / jnp.max(jnp.abs(expected))) < tol


@pytest.mark.slow
@pytest.mark.float64
def test_lissa_minibatches_track_exact():
    loss = GaussianLoss()
    model, train, query = _problem(loss)
    exact = fit_factors(apply, loss, model, train, strategy="exact")
    expected = pairwise_scores(exact, apply, loss, model, query, train, damping=0.5)
    strategy = LiSSA(num_iterations=400, batch_size=8, num_repeats=8)
    f = fit_factors(apply, loss, model, train, strategy=strategy, key=jax.random.key(0))
    with pytest.raises(ValueError, match="key"):  # LiSSA samples minibatches
        pairwise_scores(f, apply, loss, model, query, train, damping=0.5)
    s = pairwise_scores(f, apply, loss, model, query, train, damping=0.5, key=jax.random.key(1))
    corr = np.corrcoef(np.ravel(s), np.ravel(expected))[0, 1]
    assert corr > 0.95


@pytest.mark.slow
@pytest.mark.float64
def test_arnoldi_low_rank_with_complement_is_exact_for_low_rank_curvature():
    # A linear model with 2 outputs on 3 examples: the GGN has rank <= 3 in 2 * 6 parameters.
    loss = GaussianLoss()
    w = jax.random.normal(jax.random.key(0), (2, 6), jnp.float64)
    lin = lambda p, x: p @ x
    x = jax.random.normal(jax.random.key(1), (3, 6), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (3, 2), jnp.float64)
    exact = fit_factors(lin, loss, w, (x, y), strategy="exact")
    e = pairwise_scores(exact, lin, loss, w, (x, y), (x, y), damping=0.1)
    strategy = Arnoldi(rank=6, num_iterations=8, complement=True)
    f = fit_factors(lin, loss, w, (x, y), strategy=strategy, key=jax.random.key(3))
    s = pairwise_scores(f, lin, loss, w, (x, y), (x, y), damping=0.1)
    np.testing.assert_allclose(s, e, rtol=1e-8, atol=1e-10)


@pytest.mark.float64
def test_identity_and_diagonal_match_their_oracles():
    loss = SoftmaxCrossEntropy()
    model, train, query = _problem(loss)
    c, grads = _dense_oracle_for(loss)
    gq, gt = np.asarray(grads(query)), np.asarray(grads(train))
    f = fit_factors(apply, loss, model, train, strategy=Identity())
    s = pairwise_scores(f, apply, loss, model, query, train, damping=0.5)
    np.testing.assert_allclose(s, gq @ gt.T / 1.5, rtol=1e-10)
    f = fit_factors(apply, loss, model, train, strategy=Diagonal())
    s = pairwise_scores(f, apply, loss, model, query, train, damping=0.01)
    np.testing.assert_allclose(s, _oracle_scores(np.diag(np.diag(c)), gq, gt, 0.01), rtol=1e-9)
    np.testing.assert_allclose(f.diagonal, np.diag(c), rtol=1e-10, atol=1e-14)


@pytest.mark.float64
def test_monte_carlo_fisher_is_an_option_and_converges():
    loss = SoftmaxCrossEntropy()
    c, _ = _dense_oracle_for(loss)
    model, train, _ = _problem(loss)
    strategy = Diagonal(mc_samples=2000)
    with pytest.raises(ValueError, match="key"):  # sampled labels need a key
        fit_factors(apply, loss, model, train, strategy=strategy)
    d = fit_factors(apply, loss, model, train, strategy=strategy, key=jax.random.key(1)).diagonal
    assert np.max(np.abs(np.asarray(d) - np.diag(c))) < 0.1 * np.max(np.diag(c))


@pytest.mark.float64
def test_per_layer_self_normalize_and_query_rank():
    loss = SoftmaxCrossEntropy()
    model, train, query = _problem(loss)
    f = fit_factors(apply, loss, model, train, strategy="exact")
    s = pairwise_scores(f, apply, loss, model, query, train, damping=0.01)
    per = pairwise_scores(f, apply, loss, model, query, train, damping=0.01, per_layer=True)
    assert per.shape == (2, Q, N) and f.block_names == (".layers[0]", ".layers[1]")
    np.testing.assert_allclose(per.sum(0), s, rtol=1e-10, atol=1e-12)
    full = pairwise_scores(f, apply, loss, model, train, train, damping=0.01, batch_size=5)
    np.testing.assert_allclose(
        self_scores(f, apply, loss, model, train, damping=0.01), np.diag(full), rtol=1e-10
    )
    per_self = self_scores(f, apply, loss, model, train, damping=0.01, per_layer=True)
    np.testing.assert_allclose(per_self.sum(0), np.diag(full), rtol=1e-10)
    np.testing.assert_allclose(
        pairwise_scores(f, apply, loss, model, query, train, damping=0.01, normalize=True),
        s / N,
        rtol=1e-12,
    )
    # Query batching: the rank-2 scores equal the rank-2 SVD of the preconditioned query grads.
    _, grads = _dense_oracle_for(loss)
    gq = grads(query)
    diff, _ = eqx.partition(model, eqx.is_inexact_array)
    unravel = ravel_pytree(diff)[1]
    pq = inverse_curvature_product(f, apply, loss, model, jax.vmap(unravel)(gq), damping=0.01)
    pq = eqx.filter_vmap(lambda t: ravel_pytree(eqx.filter(t, eqx.is_inexact_array))[0])(pq)
    u, sv, vt = np.linalg.svd(np.asarray(pq), full_matrices=False)
    low = (u[:, :2] * sv[:2]) @ vt[:2]
    gt = grads(train)
    r2 = pairwise_scores(f, apply, loss, model, query, train, damping=0.01, query_rank=2)
    np.testing.assert_allclose(r2, low @ np.asarray(gt).T, rtol=1e-8, atol=1e-10)


@pytest.mark.float64
def test_refit_is_deterministic_and_save_load_round_trips(tmp_path):
    loss = SoftmaxCrossEntropy()
    model, train, query = _problem(loss)
    f1 = fit_factors(apply, loss, model, train, strategy=Exact(block_diagonal=True))
    f2 = fit_factors(apply, loss, model, train, strategy=Exact(block_diagonal=True))
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(f1.matrices, f2.matrices, strict=True))
    path = tmp_path / "factors.eqx"
    save_factors(path, f1)
    like = eqx.filter_eval_shape(
        fit_factors, apply, loss, model, train, strategy=Exact(block_diagonal=True)
    )
    f3 = load_factors(path, like)
    np.testing.assert_array_equal(
        pairwise_scores(f3, apply, loss, model, query, train, damping=0.1),
        pairwise_scores(f1, apply, loss, model, query, train, damping=0.1),
    )


@pytest.mark.slow
def test_float32_cg_close_to_exact():
    loss = SoftmaxCrossEntropy()
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    model = eqx.nn.MLP(4, 3, 5, 1, activation=jnp.tanh, key=k1)
    train = (jax.random.normal(k2, (N, 4)), jax.random.randint(k3, (N,), 0, 3))
    e = pairwise_scores(
        fit_factors(apply, loss, model, train), apply, loss, model, train, train, damping=0.1
    )
    s = pairwise_scores(
        # rtol 1e-6 is below what float32 CG reaches here in 60 steps: throw=False takes the
        # 60-step solution as it is.
        fit_factors(apply, loss, model, train, strategy=MatrixFree(CG(60, rtol=1e-6), throw=False)),
        apply,
        loss,
        model,
        train,
        train,
        damping=0.1,
    )
    assert e.dtype == jnp.float32
    np.testing.assert_allclose(s, e, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(e))))


def test_jit_vmap_and_sharding():
    loss = GaussianLoss()
    lin = lambda w, x: x @ w
    w = jax.random.normal(jax.random.key(0), (3, 2))
    x = jax.random.normal(jax.random.key(1), (8, 3))
    y = jax.random.normal(jax.random.key(2), (8, 2))
    f = fit_factors(lin, loss, w, (x, y), strategy=Exact(block_diagonal=True))
    base = pairwise_scores(f, lin, loss, w, (x, y), (x, y), damping=0.1)
    jitted = jax.jit(lambda w, d: pairwise_scores(f, lin, loss, w, (x, y), (x, y), damping=d))
    np.testing.assert_allclose(jitted(w, 0.1), base, rtol=1e-5)
    # vmap over damping values and over query sets
    sweep = jax.vmap(lambda d: pairwise_scores(f, lin, loss, w, (x, y), (x, y), damping=d))(
        jnp.array([0.1, 1.0])
    )
    np.testing.assert_allclose(sweep[0], base, rtol=1e-5)
    qs = (x.reshape(2, 4, 3), y.reshape(2, 4, 2))
    per_q = jax.vmap(
        lambda qx, qy: pairwise_scores(f, lin, loss, w, (qx, qy), (x, y), damping=0.1)
    )(*qs)
    np.testing.assert_allclose(per_q.reshape(8, 8), base, rtol=1e-5)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))  # as the experiment runner
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
    fs = fit_factors(lin, loss, w, (xs, ys), strategy=Exact(block_diagonal=True))
    s = pairwise_scores(fs, lin, loss, w, (x, y), (xs, ys), damping=0.1)
    np.testing.assert_allclose(s, base, rtol=1e-5, atol=1e-6)


def test_bad_input_raises_clear_errors():
    loss = SoftmaxCrossEntropy()
    lin = lambda w, x: x @ w
    w = jnp.zeros((3, 4))
    x = jax.random.normal(jax.random.key(1), (6, 3))
    y = jnp.arange(6) % 4
    f = fit_factors(lin, loss, w, (x, y), strategy="exact")
    with pytest.raises(ValueError, match="query"):
        pairwise_scores(f, lin, loss, w, (jnp.ones((2, 5)), y[:2]), (x, y), damping=0.1)
    with pytest.raises(ValueError, match="batch size"):
        pairwise_scores(f, lin, loss, w, (x[:2], y[:3]), (x, y), damping=0.1)
    with pytest.raises(ValueError, match="damping"):
        pairwise_scores(f, lin, loss, w, (x, y), (x, y), damping=-1.0)
    with pytest.raises(ValueError, match="strategy"):
        fit_factors(lin, loss, w, (x, y), strategy="kfca")
    with pytest.raises(ValueError, match="parameters"):
        pairwise_scores(f, lin, loss, jnp.zeros((3, 5)), (x, y), (x, y), damping=0.1)
    # 6 examples x 3 rank-3 output Hessians cannot span 12 parameters: singular without damping.
    with pytest.raises(Exception, match="positive definite"):
        pairwise_scores(f, lin, loss, w, (x, y), (x, y), damping=0.0).block_until_ready()
    bad_x = x.at[0, 0].set(jnp.nan)
    with pytest.raises(Exception, match="non-finite"):
        pairwise_scores(f, lin, loss, w, (bad_x, y), (x, y), damping=0.1).block_until_ready()
    with pytest.raises(Exception, match="non-finite"):
        fit_factors(lin, loss, w, (bad_x, y), strategy="exact")


@pytest.mark.float64
def test_kronecker_strategies_exact_where_kronecker_form_is_exact():
    # One linear layer with a Gaussian loss: the GGN block is E[a a^T] kron I, which K-FAC
    # represents exactly; EK-FAC's corrected eigenvalues are then exact too.
    lin = eqx.nn.Linear(4, 2, key=jax.random.key(0))
    lin = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, lin)
    x = jax.random.normal(jax.random.key(1), (16, 4), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (16, 2), jnp.float64)
    loss = GaussianLoss()
    exact = pairwise_scores(
        fit_factors(apply, loss, lin, (x, y)), apply, loss, lin, (x, y), (x, y), damping=1e-3
    )
    for strategy in (KFAC(), EKFAC()):
        s = pairwise_scores(
            fit_factors(apply, loss, lin, (x, y), strategy=strategy),
            apply,
            loss,
            lin,
            (x, y),
            (x, y),
            damping=1e-3,
        )
        np.testing.assert_allclose(s, exact, rtol=1e-9, atol=1e-9 * float(jnp.max(exact)))


@pytest.mark.float64
def test_ekfac_tracks_exact_block_diagonal_on_an_mlp():
    loss = SoftmaxCrossEntropy()
    model, train, query = _problem(loss)
    exact = fit_factors(apply, loss, model, train, strategy=Exact(block_diagonal=True))
    e = pairwise_scores(exact, apply, loss, model, query, train, damping=1e-3)
    f = fit_factors(apply, loss, model, train, strategy="ekfac")
    s = pairwise_scores(f, apply, loss, model, query, train, damping=1e-3)
    assert float(jnp.mean(pearson(s, e))) > 0.9


@pytest.mark.float64
def test_ekfac_preconditioned_cg_converges_to_exact_block_diagonal():
    loss = SoftmaxCrossEntropy()
    model, train, query = _problem(loss)
    c, grads = _dense_oracle_for(loss)
    a = _block_diag(c, model) + 1e-3 * np.eye(c.shape[0])
    gq, gt = np.asarray(grads(query)), np.asarray(grads(train))
    x_exact = np.linalg.solve(a, gq.T).T
    diff, _ = eqx.partition(model, eqx.is_inexact_array)
    unravel = ravel_pytree(diff)[1]
    flatten = eqx.filter_vmap(lambda t: ravel_pytree(eqx.filter(t, eqx.is_inexact_array))[0])

    def solve(strategy):
        f = fit_factors(apply, loss, model, train, strategy=strategy)
        v = jax.vmap(unravel)(jnp.asarray(gq))
        return f, np.asarray(
            flatten(
                inverse_curvature_product(f, apply, loss, model, v, damping=1e-3, fit_data=train)
            )
        )

    def a_norm_error(x):
        e = x - x_exact
        return np.einsum("mp,pq,mq->m", e, a, e)

    # Converged (43 parameters, so at most 43 iterations in exact arithmetic): the oracle.
    f, x = solve(EKFAC(refine_iterations=43))
    # Every block is a once-used linear layer: structured products; the factors keep no data.
    assert f.needs_fit_inputs() and all(b is not None for b in f.linear)
    np.testing.assert_allclose(x, x_exact, rtol=1e-7, atol=1e-9 * np.max(np.abs(x_exact)))
    s = pairwise_scores(f, apply, loss, model, query, train, damping=1e-3)
    np.testing.assert_allclose(s, x_exact @ gt.T, rtol=1e-7, atol=1e-9 * np.max(np.abs(s)))
    # PCG minimizes the A-norm error over a Krylov space that contains the plain EK-FAC solution,
    # so any number of iterations is at least as good as EK-FAC alone, query by query.
    _, x_plain = solve(EKFAC())
    _, x_two = solve(EKFAC(refine_iterations=2))
    assert np.all(a_norm_error(x_two) <= a_norm_error(x_plain) * (1 + 1e-9))
    assert np.mean(a_norm_error(x_two)) < 0.9 * np.mean(a_norm_error(x_plain))
    with pytest.raises(ValueError, match="refine_iterations"):
        EKFAC(refine_iterations=-1)


@pytest.mark.float64
def test_negative_damping_inside_jit_is_an_error_not_garbage():
    loss = GaussianLoss()
    model, train, query = _problem(loss)
    exact = fit_factors(apply, loss, model, train, strategy="exact")
    scores = jax.jit(lambda d: pairwise_scores(exact, apply, loss, model, query, train, damping=d))
    assert bool(jnp.all(jnp.isfinite(scores(0.5))))
    with pytest.raises(Exception, match="damping"):
        jax.block_until_ready(scores(-0.5))
