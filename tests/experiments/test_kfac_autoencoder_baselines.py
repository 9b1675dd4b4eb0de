"""The baseline machinery of kfac_autoencoder (experiments/_baselines.py) on a tiny quadratic:
a grid whose best value is on an edge is widened until it is inside, a diverged member is
reported and never the best, a missing optional package is None with its install command, and
`steps_to` counts updates to a target of the smoothed curve."""

import jax.numpy as jnp
import numpy as np

from experiments import _baselines as B
from experiments._context import Context


def _problem():
    params0 = {"w": jnp.ones((2, 2)) * 3.0}
    data = jnp.zeros((4, 2))
    loss = lambda p, x: jnp.sum(p["w"] ** 2) + 0.0 * jnp.sum(x)
    batch = lambda d, i: d
    return params0, data, loss, batch


def test_tune_widens_to_an_inside_best_and_reports_divergence(tmp_path):
    ctx = Context(cfg=None, scale="smoke", seed=0, out_dir=tmp_path, checkpoint_every_s=0.0)
    params0, data, loss, batch = _problem()
    opt, reason = B.make_optimizer("sgd", momentum=0.0, soap_frequency=10)
    assert reason is None
    step = B.make_step(opt, loss, batch, chunk=10, soap_frequency=None)
    # Plain gradient descent on |w|^2: lr 0.5 is exact in one step, lr > 1 diverges. The grid
    # starts below the best, so it must be widened upwards; lr 10 and beyond blow up.
    res = B.tune(ctx, "sgd", opt, step, params0, data, (1e-3, 1e-2, 1e-1), 20, 10, max_widen=3)
    assert res["widened"] >= 1 and res["inside"]
    assert 0 < res["best_index"] < len(res["lrs"]) - 1
    assert res["best_lr"] == res["lrs"][res["best_index"]]
    finals = [f for f in res["final"] if f is not None]
    assert res["final"][res["best_index"]] == min(finals)
    assert res["best_lr"] not in res["diverged"]

    res = B.tune(ctx, "sgd_div", opt, step, params0, data, (1e-1, 1.0, 1e2), 20, 10, max_widen=0)
    assert res["diverged"] == [100.0]
    assert res["final"][2] is None and res["best_lr"] == 0.1


def test_steps_to_and_unavailable_packages():
    curve = np.concatenate([np.full(10, 5.0), np.full(10, 1.0)])
    assert B.steps_to(curve, 1.0) == 20 and B.steps_to(curve, 0.5) is None
    for name in ("shampoo", "psgd_kron"):
        opt, reason = B.make_optimizer(name, momentum=0.9, soap_frequency=10)
        assert (opt is None) == (reason is not None)
        if reason is not None:
            assert B.INSTALL[name] in reason
