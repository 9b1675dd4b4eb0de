"""K-FAC: exactness where the Kronecker form is exact, the optax transform's contract (scan, jit,
structure, skipping, serialisation, errors), damping and the quadratic model, data parallelism."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from respax.core import GaussianLoss, SoftmaxCrossEntropy
from respax.curvature import (
    KFACConfig,
    KFACFactors,
    capture_layers,
    damped_inverse,
    ggn_operator,
    kfac,
    kfac_report,
    kfac_stats,
)
from tests.helpers import dense as _dense

APPLY = lambda m, x: m(x)


def _f64(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, tree)


def _params(model):
    return eqx.filter(model, eqx.is_inexact_array)


def _mlp_problem(key=0, batch=32):
    k1, k2 = jax.random.split(jax.random.key(key))
    model = eqx.nn.MLP(4, 3, 8, 1, activation=jnp.tanh, key=k1)
    x = jax.random.normal(k2, (batch, 4))
    y = (x[:, 0] > 0).astype(jnp.int32) + (x[:, 1] > 0).astype(jnp.int32)
    loss = SoftmaxCrossEntropy()
    plan = capture_layers(model, loss, jnp.zeros(4))
    return model, plan, x, y


@functools.cache
def _default():
    """One problem, default-config optimizer and jitted update shared by several tests (one
    compile)."""
    model, plan, x, y = _mlp_problem()
    params = _params(model)
    opt = kfac(plan)
    stats_fn = jax.jit(lambda p, x, y: kfac_stats(plan, p, x, y, mode="empirical"))
    update = jax.jit(lambda g, s, p, st, lv: opt.update(g, s, p, stats=st, loss=lv))
    return model, plan, x, y, params, opt, stats_fn, update


@pytest.mark.float64
def test_single_linear_layer_is_exact_fisher_and_natural_gradient():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    layer = _f64(eqx.nn.Linear(3, 2, key=k1))
    loss = GaussianLoss()
    x = jax.random.normal(k2, (8, 3), jnp.float64)  # batch >= d_in + 1
    y = jax.random.normal(k3, (8, 2), jnp.float64)
    plan = capture_layers(layer, loss, jnp.zeros(3))
    params = _params(layer)
    _, grads, stats = kfac_stats(plan, params, x, y, mode="expected")
    fisher = _dense(ggn_operator(APPLY, loss, layer, x).mv, params)
    block = _dense(KFACFactors(plan, stats).mv, params)
    assert np.linalg.norm(block - fisher) <= 1e-10 * np.linalg.norm(fisher)

    cfg = KFACConfig(learning_rate=1.0, momentum=0.0, damping=0.0, ema_decay=0.0)
    opt = kfac(plan, cfg)
    updates, state = jax.jit(lambda g, s, p, st: opt.update(g, s, p, stats=st))(
        grads, opt.init(params), params, stats
    )
    natural = -np.linalg.solve(fisher, ravel_pytree(grads)[0])
    got = ravel_pytree(updates)[0]
    assert np.linalg.norm(got - natural) <= 1e-10 * np.linalg.norm(natural)
    assert int(state.num_fallbacks) == 0


@pytest.mark.slow
@pytest.mark.float64
def test_pi_damped_inverse_matches_dense_kronecker():
    model, plan, x, y = _mlp_problem()
    model = _f64(model)
    params = _params(model)
    _, _, stats = kfac_stats(plan, params, x.astype(jnp.float64), y, mode="expected")
    factors = KFACFactors(plan, stats)
    damping = 0.3
    v = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), params)
    got = ravel_pytree(factors.inverse_vp(v, damping))[0]
    ref = []
    for blk, item in zip(stats, [model.layers[0], model.layers[1]], strict=True):
        a, g = np.asarray(blk["A"]), np.asarray(blk["G"])
        pi = np.sqrt((np.trace(a) / a.shape[0]) / (np.trace(g) / g.shape[0]))
        ad = a + pi * np.sqrt(damping) * np.eye(a.shape[0])
        gd = g + np.sqrt(damping) / pi * np.eye(g.shape[0])
        vi = eqx.filter(item, eqx.is_inexact_array)
        vi = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), vi)
        m = np.concatenate([np.asarray(vi.weight), np.asarray(vi.bias)[:, None]], 1)
        sol = np.linalg.solve(np.kron(gd, ad), m.reshape(-1)).reshape(m.shape)
        ref.append((sol[:, :-1], sol[:, -1]))
    ref_flat = np.concatenate([np.concatenate([w.ravel(), b]) for w, b in ref])
    np.testing.assert_allclose(got, ref_flat, rtol=1e-10, atol=1e-12)


def test_training_loop_in_one_scan():
    model, plan, x, y = _mlp_problem(batch=16)
    params = _params(model)
    opt = kfac(
        plan,
        KFACConfig(
            learning_rate=0.05, momentum=0.9, damping=1e-2, l2_reg=1e-4, norm_constraint=1e-2
        ),
    )
    state0 = opt.init(params)

    def step(carry, i):
        params, state = carry
        loss, grads, stats = kfac_stats(
            plan, params, x, y, mode="mc", key=jax.random.fold_in(jax.random.key(1), i)
        )
        updates, state = opt.update(grads, state, params, stats=stats)
        return (optax.apply_updates(params, updates), state), loss

    (params_end, state), losses = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(100)))(
        (params, state0)
    )
    assert int(state.step) == 100 and int(state.num_skipped) == 0
    assert bool(jnp.all(jnp.isfinite(losses)))
    assert float(losses[-1]) < 0.5 * float(losses[0])
    assert "steps: 100" in kfac_report(plan, state)


def test_state_structure_unchanged_by_update_with_and_without_jit():
    _, plan, x, y, params, opt, stats_fn, update = _default()
    state0 = opt.init(params)
    loss, grads, stats = stats_fn(params, x, y)
    eager = lambda g, s, p, st, lv: opt.update(g, s, p, stats=st, loss=lv)
    for fn in (eager, update):
        _, s1 = fn(grads, state0, params, stats, loss)
        assert jax.tree.structure(s1) == jax.tree.structure(state0)
        for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(state0), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype


@pytest.mark.slow
def test_adaptive_learning_rate_momentum_and_damping():
    model, plan, x, y = _mlp_problem()
    params = _params(model)
    cfg = KFACConfig(
        learning_rate=None,
        momentum=None,
        damping=1.0,
        adapt_damping=True,
        damping_adaptation_interval=1,
        ema_decay=0.0,
    )
    opt = kfac(plan, cfg)
    state = opt.init(params)
    loss, grads, stats = kfac_stats(plan, params, x, y, mode="expected")
    upd = jax.jit(lambda g, s, p, st, lv: opt.update(g, s, p, stats=st, loss=lv, batch=(x, y)))
    stats_fn = jax.jit(lambda p: kfac_stats(plan, p, x, y, mode="expected"))
    updates, state1 = upd(grads, state, params, stats, loss)
    # First step (no velocity): α = -g·Δ / (Δ^T (C + λ I) Δ) with C the exact batch GGN.
    c = _dense(ggn_operator(APPLY, plan.output_loss, model, x).mv, params)
    inv = KFACFactors(plan, stats).inverse_vp(grads, 1.0)
    delta = -ravel_pytree(inv)[0]
    g = ravel_pytree(grads)[0]
    alpha = -(g @ delta) / (delta @ (c + np.eye(c.shape[0])) @ delta)
    assert float(state1.learning_rate) == pytest.approx(float(alpha), rel=1e-4)
    np.testing.assert_allclose(ravel_pytree(updates)[0], alpha * delta, rtol=1e-4, atol=1e-7)
    # rho compares the true loss change with the quadratic model; damping moved by the LM rule.
    new_loss = plan.output_loss.mean_loss(jax.vmap(eqx.apply_updates(model, updates))(x), y)
    rho = (new_loss - loss) / state1.quad_change
    assert float(state1.rho) == pytest.approx(float(rho), rel=1e-3)
    omega = 0.95
    expect = 1.0 / omega if rho < 0.25 else (omega if rho > 0.75 else 1.0)
    assert float(state1.damping) == pytest.approx(expect, rel=1e-5)
    # A few more steps with joint α, μ stay finite and decrease the loss.
    p = optax.apply_updates(params, updates)
    for _ in range(5):
        loss_i, grads, stats = stats_fn(p)
        updates, state1 = upd(grads, state1, p, stats, loss_i)
        p = optax.apply_updates(p, updates)
    assert np.isfinite(float(state1.momentum)) and float(loss_i) < float(loss)


def test_nonfinite_step_is_skipped_and_counted():
    _, _, x, y, params, opt, stats_fn, update = _default()
    state = opt.init(params)
    loss, grads, stats = stats_fn(params, x, y)
    bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
    updates, s1 = update(bad, state, params, stats, loss)
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
    assert int(s1.num_skipped) == 1 and int(s1.step) == 0
    for a, b in zip(
        jax.tree.leaves(s1._replace(num_skipped=state.num_skipped)),
        jax.tree.leaves(state),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    _, s2 = update(grads, s1, params, stats, jnp.asarray(jnp.inf))
    assert int(s2.num_skipped) == 2


def test_init_inverses_are_the_damped_inverses_of_the_zero_factors():
    # init builds the inverses directly (identities); they must be what the refresh would give
    # for the zero factors at damping 1.
    _, plan, _, _, params, opt, _, _ = _default()
    state = opt.init(params)
    for inv in jax.tree.leaves(state.inverses):
        ref = jnp.eye(inv.shape[0], dtype=inv.dtype) if inv.ndim == 2 else jnp.ones_like(inv)
        np.testing.assert_array_equal(inv, ref)
    v = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), params)
    back = KFACFactors(plan, state.factors).inverse_vp(v, 1.0)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(v), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_update_under_vmap_matches_unbatched_and_skips_per_member():
    # Two optimizer states updated in one vmap: a finite member equals the unbatched update, a
    # non-finite member is skipped on its own (the refresh `lax.cond` becomes a select).
    _, _, x, y, params, opt, stats_fn, update = _default()
    state = opt.init(params)
    loss, grads, stats = stats_fn(params, x, y)
    bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), grads, bad)
    pair = lambda t: jax.tree.map(lambda a: jnp.stack([a, a]), t)
    vupd = jax.jit(jax.vmap(lambda g, s, st, lv: opt.update(g, s, params, stats=st, loss=lv)))
    upd_v, s_v = vupd(both, pair(state), pair(stats), jnp.stack([loss, loss]))
    upd_1, s_1 = update(grads, state, params, stats, loss)
    for a, b in zip(jax.tree.leaves(upd_v), jax.tree.leaves(upd_1), strict=True):
        np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-7)
        assert bool(jnp.all(a[1] == 0))
    assert s_v.num_skipped.tolist() == [0, 1] and s_v.step.tolist() == [1, 0]
    for a, b in zip(jax.tree.leaves(s_v.inverses), jax.tree.leaves(state.inverses), strict=True):
        np.testing.assert_array_equal(a[1], b)
        assert bool(jnp.all(jnp.isfinite(a)))


def test_bad_input_and_serialisation(tmp_path):
    _, plan, x, y, params, opt, stats_fn, update = _default()
    with pytest.raises(ValueError, match="damping"):
        KFACConfig(damping=-1.0)
    with pytest.raises(ValueError, match="inverse_update_period"):
        KFACConfig(inverse_update_period=0)
    with pytest.raises(ValueError, match="ema_decay"):
        KFACConfig(ema_decay=1.0)
    state = opt.init(params)
    loss, grads, stats = stats_fn(params, x, y)
    wrong = eqx.filter(eqx.nn.MLP(4, 3, 8, 2, key=jax.random.key(0)), eqx.is_inexact_array)
    with pytest.raises(ValueError, match="grads"):
        opt.update(wrong, state, params, stats=stats)
    with pytest.raises(ValueError, match="batch"):
        kfac(plan, KFACConfig(learning_rate=None)).update(grads, state, params, stats=stats)
    _, state = update(grads, state, params, stats, loss)
    path = tmp_path / "kfac_state.eqx"
    eqx.tree_serialise_leaves(path, state)
    restored = eqx.tree_deserialise_leaves(path, opt.init(params))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    factors = KFACFactors(plan, stats)
    eqx.tree_serialise_leaves(tmp_path / "factors.eqx", factors)
    back = eqx.tree_deserialise_leaves(tmp_path / "factors.eqx", factors)
    assert all(
        bool(jnp.all(a == b))
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(factors), strict=True)
    )


@pytest.mark.parametrize("method", ["cholesky", "eigh"])
def test_damped_inverse_robust_in_float32(method):
    u = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (6, 6)))[0]
    rank2 = (u[:, :2] * jnp.array([1e3, 1.0])) @ u[:, :2].T
    inv, fb, clipped = damped_inverse(rank2, 1e-12, method)
    assert bool(jnp.all(jnp.isfinite(inv))) and int(fb) == 0
    # A NaN factor (e.g. a corrupted checkpoint) ends at the damped diagonal, every fallback
    # counted (Cholesky -> eigh -> diagonal).
    inv, fb, _ = damped_inverse(rank2.at[0, 0].set(jnp.nan), 1e-3, method)
    assert int(fb) == (2 if method == "cholesky" else 1)
    assert bool(jnp.all(jnp.isfinite(inv)))
    # Indefinite beyond the damping: Cholesky fails and the eigh path clips the eigenvalue.
    indefinite = jnp.diag(jnp.array([1.0, -1.0, 2.0]))
    inv, fb, clipped = damped_inverse(indefinite, 0.5, method)
    assert int(clipped) == 1 and int(fb) == (1 if method == "cholesky" else 0)
    np.testing.assert_allclose(jnp.diag(inv), [1 / 1.5, 1 / 0.5, 1 / 2.5], rtol=1e-6)
    one, _, _ = damped_inverse(jnp.array([[4.0]]), 0.0, method)  # 1x1 block
    assert float(one[0, 0]) == pytest.approx(0.25, rel=1e-6)


@pytest.mark.float64
def test_cholesky_and_eigh_inverses_match_dense_inverse():
    rng = np.random.default_rng(0)
    mats = []
    for n in (1, 3, 10, 40):  # several size classes, padded and batched
        a = rng.normal(size=(2 * n, n))
        mats.append(jnp.asarray(a.T @ a / (2 * n)))
    for method in ("cholesky", "eigh"):
        for m in mats:
            inv, fb, _ = damped_inverse(m, 1e-3, method)
            ref = np.linalg.inv(np.asarray(m) + 1e-3 * np.eye(m.shape[0]))
            assert int(fb) == 0
            np.testing.assert_allclose(inv, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.float64
def test_data_parallel_statistics_and_updates_match_single_device():
    assert len(jax.devices()) >= 4
    model, plan, x, y = _mlp_problem(batch=16)
    params = _params(_f64(model))
    x = x.astype(jnp.float64)
    opt = kfac(plan, KFACConfig(learning_rate=0.1, momentum=0.5, damping=1e-2))
    state = opt.init(params)

    def step(params, state, x, y):
        loss, grads, stats = kfac_stats(plan, params, x, y, mode="mc", key=jax.random.key(4))
        updates, state = opt.update(grads, state, params, stats=stats)
        return stats, updates, state

    single = jax.jit(step)(params, state, x, y)
    mesh = Mesh(np.array(jax.devices()[:4]), ("batch",))
    shard = NamedSharding(mesh, PartitionSpec("batch"))
    xs, ys = jax.device_put(x, shard), jax.device_put(y, shard)
    sharded = jax.jit(step)(params, state, xs, ys)
    assert len(xs.sharding.device_set) == 4
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.array_equal(np.isnan(a), np.isnan(b))  # rho/quad_change are nan until computed
        a, b = np.nan_to_num(a), np.nan_to_num(b)
        assert np.linalg.norm(a - b) <= 1e-6 * max(np.linalg.norm(b), 1e-30) + 1e-7


def test_hyperparameters_validated_and_init_checks_the_model():
    _, plan, x, y, params, opt, stats_fn, update = _default()
    with pytest.raises(ValueError, match="momentum"):
        KFACConfig(momentum=1.5)
    with pytest.raises(ValueError, match="momentum"):
        KFACConfig(momentum=-0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        KFACConfig(learning_rate=0.0)
    with pytest.raises(ValueError, match="curvature_update_period"):
        KFACConfig(curvature_update_period=0)
    with pytest.raises(ValueError, match="damping.*schedule"):
        KFACConfig(damping=optax.constant_schedule(1.0), adapt_damping=True)
    with pytest.raises(ValueError, match="momentum"):
        KFACConfig(momentum=jnp.array([0.5, 1.0]))  # stacked configs are checked entrywise
    other = _params(eqx.nn.MLP(4, 3, 16, 1, key=jax.random.key(0)))
    with pytest.raises(ValueError, match="`params` does not match the plan"):
        opt.init(other)
    with pytest.raises(ValueError, match="params"):
        kfac_stats(plan, other, x, y)


@pytest.mark.float64
def test_schedules_give_the_fixed_step_of_their_value_at_each_step():
    """A schedule used to fail with `ufunc 'isfinite' not supported`; at every step the update
    must equal that of a fixed config holding the schedule's value, from the same state."""
    model, plan, x, y = _mlp_problem()
    params = _params(_f64(model))
    x = x.astype(jnp.float64)
    lr = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
    mom = optax.linear_schedule(0.0, 0.8, transition_steps=4)
    damp = optax.exponential_decay(1e-1, transition_steps=1, decay_rate=0.7)
    sched = kfac(plan, KFACConfig(learning_rate=lr, momentum=mom, damping=damp))
    state = sched.init(params)
    stats_fn = jax.jit(lambda p: kfac_stats(plan, p, x, y))
    for t in range(4):
        loss, grads, stats = stats_fn(params)
        count = jnp.asarray(t, jnp.int32)  # what the transform passes: its step counter
        fixed = kfac(
            plan,
            KFACConfig(learning_rate=float(lr(count)), momentum=float(mom(count)), damping=1.0),
        )
        # The fixed config with the scheduled damping of this step, from the same state.
        fixed_state = state._replace(damping=jnp.asarray(damp(count), jnp.float64))
        u_fixed, s_fixed = fixed.update(grads, fixed_state, params, stats=stats)
        u, state = sched.update(grads, state, params, stats=stats)
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_fixed), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(state.learning_rate, lr(count), rtol=1e-12)
        np.testing.assert_allclose(state.damping, damp(count), rtol=1e-12)
        params = optax.apply_updates(params, u)


def test_vmap_over_the_learning_rate_matches_a_loop():
    """vmap over the learning rate used to fail with a TracerBoolConversionError."""
    model, plan, x, y = _mlp_problem()
    params = _params(model)

    def train(lr, momentum):
        opt = kfac(plan, KFACConfig(learning_rate=lr, momentum=momentum, damping=1e-2))

        def step(carry, _):
            p, s = carry
            loss, grads, stats = kfac_stats(plan, p, x, y)
            u, s = opt.update(grads, s, p, stats=stats)
            return (optax.apply_updates(p, u), s), loss

        (_, state), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=6)
        return losses, state.learning_rate

    lrs, moms = jnp.array([0.02, 0.05, 0.1]), jnp.array([0.0, 0.5, 0.9])
    losses, used = jax.jit(jax.vmap(train))(lrs, moms)
    np.testing.assert_allclose(used, lrs, rtol=1e-6)
    for i in range(3):
        ref, _ = jax.jit(train)(lrs[i], moms[i])
        np.testing.assert_allclose(losses[i], ref, rtol=1e-4, atol=1e-6)
    assert float(losses[2, -1]) != float(losses[0, -1])
    # A config of stacked arrays under eqx.filter_vmap is the same population.
    stacked = KFACConfig(learning_rate=lrs, momentum=moms, damping=1e-2)
    run = lambda cfg: train(cfg.learning_rate, cfg.momentum)[0]
    np.testing.assert_allclose(eqx.filter_vmap(run)(stacked), losses, rtol=1e-5, atol=1e-7)


@pytest.mark.float64
def test_curvature_update_period_folds_statistics_every_k_steps():
    model, plan, x, y = _mlp_problem()
    params0 = _params(_f64(model))
    x = x.astype(jnp.float64)
    k, decay = 3, 0.8
    cfg = KFACConfig(learning_rate=0.05, momentum=0.5, curvature_update_period=k, ema_decay=decay)
    opt = kfac(plan, cfg)

    @jax.jit
    def step(p, s):
        due = cfg.curvature_due(s)
        loss, grads, stats = kfac_stats(plan, p, x, y, update_curvature=due)
        u, s = opt.update(grads, s, p, stats=stats)
        return optax.apply_updates(p, u), s, loss, grads, stats

    # Oracle: the EMA over the statistics of steps 0, k, 2k, ... only, from the full pass.
    full = jax.jit(lambda p: kfac_stats(plan, p, x, y))
    params, state = params0, opt.init(params0)
    ema = jax.tree.map(jnp.zeros_like, state.factors)
    weight = 0.0
    for t in range(2 * k + 1):
        loss_ref, grads_ref, stats_ref = full(params)
        if t % k == 0:
            ema = jax.tree.map(lambda e, s: decay * e + (1 - decay) * s, ema, stats_ref)
            weight = decay * weight + (1 - decay)
        params, state, loss, grads, stats = step(params, state)
        np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
        if t % k:  # the statistics pass was skipped
            assert all(float(jnp.abs(s).max()) == 0.0 for s in jax.tree.leaves(stats))
        for a, b in zip(jax.tree.leaves(state.factors), jax.tree.leaves(ema), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(state.ema_weight, weight, rtol=1e-12)


@pytest.mark.slow
def test_curvature_update_period_one_is_the_default_bit_for_bit():
    model, plan, x, y = _mlp_problem()
    params = _params(model)
    outs = []
    for cfg in (KFACConfig(), KFACConfig(curvature_update_period=1)):
        opt = kfac(plan, cfg)
        loss, grads, stats = kfac_stats(plan, params, x, y, update_curvature=True)
        outs.append(
            jax.jit(lambda g, s, st, opt=opt: opt.update(g, s, params, stats=st))(
                grads, opt.init(params), stats
            )
        )
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
        np.testing.assert_array_equal(a, b)
