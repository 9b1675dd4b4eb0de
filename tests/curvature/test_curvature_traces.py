"""Plans are hashable values: equal plans of equal model structures compare and hash equal, so the
hot entry points (kfac_stats, kfac's update, the GGN / Fisher products) trace once for many equal
plans and models (`eqx.debug.assert_max_traces`)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from respax.core import GaussianLoss, SoftmaxCrossEntropy
from respax.curvature import (
    CaptureError,
    KFACConfig,
    capture_layers,
    fisher_operator,
    ggn_operator,
    kfac,
    kfac_stats,
)

LOSS = SoftmaxCrossEntropy()


def _model(seed, activation=jnp.tanh, width=8):
    return eqx.nn.MLP(4, 3, width, 1, activation=activation, key=jax.random.key(seed))


def _data(seed=0):
    x = jax.random.normal(jax.random.key(100 + seed), (16, 4))
    return x, jnp.arange(16) % 3


def test_equal_plans_compare_and_hash_equal_and_others_differ():
    plans = [capture_layers(_model(s), LOSS, jnp.zeros(4)) for s in range(3)]
    assert plans[0] == plans[1] == plans[2]
    assert len({hash(p) for p in plans}) == 1
    assert plans[0] is not plans[1]
    others = [
        capture_layers(_model(0, activation=jax.nn.relu), LOSS, jnp.zeros(4)),  # non-float leaf
        capture_layers(_model(0, width=9), LOSS, jnp.zeros(4)),  # layer shapes
        capture_layers(_model(0), GaussianLoss(), jnp.zeros(4)),  # output loss
        capture_layers(_model(0), LOSS, jnp.zeros(4), apply=lambda m, x: m(x)),  # apply
        capture_layers(_model(0), GaussianLoss(variance=2.0), jnp.zeros(4)),
    ]
    for other in others:
        assert other != plans[0]
    assert others[2] != others[4]
    assert len({hash(p) for p in others} | {hash(plans[0])}) == len(others) + 1


def test_kfac_stats_traces_once_for_three_equal_plans():
    """Before plans were values, three identical plans traced three times."""

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def stats(plan, model, x, y):
        return kfac_stats(plan, model, x, y)

    x, y = _data()
    results = []
    for seed in range(3):
        model = _model(seed)
        plan = capture_layers(model, LOSS, jnp.zeros(4))
        results.append(stats(plan, model, x, y))
    # Different weights: different results from the one program.
    assert not np.allclose(results[0][0], results[1][0])


def test_kfac_update_traces_once_for_equal_plans_and_configs():
    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(plan, config, params, state, x, y):
        opt = kfac(plan, config)
        loss, grads, stats = kfac_stats(plan, params, x, y)
        return opt.update(grads, state, params, stats=stats, loss=loss, batch=(x, y))

    x, y = _data()
    for seed in range(3):
        model = _model(seed)
        plan = capture_layers(model, LOSS, jnp.zeros(4))
        config = KFACConfig(learning_rate=None, momentum=None, damping=1e-2, adapt_damping=True)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, state = step(plan, config, params, kfac(plan, config).init(params), x, y)
        assert int(state.step) == 1


def test_ggn_and_fisher_products_trace_once():
    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def products(model, x, v, key):
        ggn = ggn_operator(_call, LOSS, model, x).mv(v)
        expected = fisher_operator(_call, LOSS, model, x).mv(v)
        mc = fisher_operator(_call, LOSS, model, x, mode="mc", key=key, num_samples=2).mv(v)
        return ggn, expected, mc

    x, _ = _data()
    for seed in range(3):
        model = _model(seed)
        v = eqx.filter(_model(seed + 10), eqx.is_inexact_array)
        ggn, expected, mc = products(model, x, v, jax.random.key(seed))
        for a, b in zip(jax.tree.leaves(ggn), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(a, b)


def _call(model, x):
    return model(x)


def test_capture_errors_name_the_argument():
    model = _model(0)
    with pytest.raises(CaptureError, match="example_input.*ONE example"):
        capture_layers(model, LOSS, jnp.zeros((8, 4)))  # a batch
    with pytest.raises(ValueError, match="example_input"):  # CaptureError is a ValueError
        capture_layers(model, LOSS, jnp.zeros((8, 4)))
    with pytest.raises(CaptureError, match="example_input"):  # apply that vmaps a batch itself
        capture_layers(model, LOSS, jnp.zeros((8, 4)), apply=lambda m, x: jax.vmap(m)(x))
    with pytest.raises(CaptureError, match="traced"):
        eqx.filter_jit(lambda m: capture_layers(m, LOSS, jnp.zeros(4)).num_uncovered)(model)
