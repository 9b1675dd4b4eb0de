"""The `superposition` experiment: sharded multi-instance training equals per-instance training,
the claims hold on ideal inputs, and (slow) the whole experiment runs at smoke scale."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import superposition as exp
from experiments._context import Context
from respax.interp import superposition as sp


def _ctx(tmp_path, cfg=None, scale="smoke"):
    return Context(cfg=cfg, scale=scale, seed=0, out_dir=tmp_path, checkpoint_every_s=0.0)


def test_train_instances_pads_shards_and_matches_single_instances(tmp_path):
    ctx = _ctx(tmp_path)
    assert ctx.mesh.size == 4  # tests/conftest.py forces 4 CPU devices
    config = sp.ToyConfig(6, 2, batch_size=32)
    importance = np.stack([0.9 ** np.arange(6.0)] * 5).astype(np.float32)
    probability = np.array([1.0, 0.3, 0.1, 0.03, 0.01], np.float32)  # 5 -> padded to 8
    key = jax.random.PRNGKey(3)
    params, last = exp.train_instances(ctx, "t", config, importance, probability, 40, 20, key)
    assert params.W.shape == (5, 6, 2) and last.shape == (5,)

    @jax.jit
    def reference(k, imp, prob):
        state = sp.init_train_state(jax.random.fold_in(k, 0), config)
        return sp.train_steps(state, jax.random.fold_in(k, 1), 0, 40, imp, prob, config)

    for i in range(5):
        state, losses = reference(jax.random.fold_in(key, i), importance[i], probability[i])
        np.testing.assert_allclose(params.W[i], state.params.W, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(last[i], losses[20:].mean(), rtol=1e-5)
    assert (tmp_path / "checkpoints" / "t.eqx").exists()


def _ideal_sweep(cfg):
    """Weights of the paper's picture: top-5 orthonormal when dense, more features when sparse."""
    d, n, m = len(cfg.sweep_densities), exp.SWEEP_FEATURES, exp.SWEEP_HIDDEN
    out = {}
    for model in ("linear", "relu"):
        W = np.zeros((cfg.sweep_seeds, d, n, m), np.float32)
        W[:, :, :m, :m] = np.eye(m)
        if model == "relu":
            for j, p in enumerate(cfg.sweep_densities):
                extra = {1.0: 0, 0.3: 1, 0.1: 3, 0.03: 5, 0.01: 6, 0.003: 7, 0.001: 9}[p]
                for e in range(extra):  # antipodal partners of the first dims
                    W[:, j, m + e, e % m] = -1.0
        flat = jnp.asarray(W.reshape(-1, n, m))
        norms = np.array(jax.vmap(sp.feature_norms)(flat)).reshape(W.shape[:3])
        out[model] = {
            "W": W,
            "norms": norms,
            "interference": np.asarray(jax.vmap(sp.superposition_interference)(flat)).reshape(
                W.shape[:3]
            ),
            "dstar": np.asarray(jax.vmap(sp.dimensions_per_feature)(flat)).reshape(W.shape[:2]),
            "represented": (norms > 0.5).sum(-1),
        }
    return out


def test_sweep_claims_hold_on_ideal_weights_and_fail_on_bad_ones():
    cfg = exp.SCALES["quick"]
    sweep = _ideal_sweep(cfg)
    claims, metrics = exp.sweep_claims(cfg, sweep)
    assert [c.holds for c in claims] == [True, True, True, True], claims
    assert metrics["relu"]["represented_per_seed"][0][-1] == 14
    sweep["linear"]["norms"][0, 0, 7] = 1.0  # an extra dense feature in the linear model
    sweep["linear"]["represented"] = (sweep["linear"]["norms"] > 0.5).sum(-1)
    claims, _ = exp.sweep_claims(cfg, sweep)
    assert [c.holds for c in claims][:2] == [False, False]


def test_phase_claims_and_geometry_claims_on_synthetic_results():
    cfg = dataclasses.replace(exp.SCALES["quick"], phase_grid=4)
    rel, dens = exp.phase_axes(4)
    R, P = np.meshgrid(rel, dens)
    theory = np.asarray(sp.analytic_phase(R, P, 2))
    phases = {
        2: {
            "best": theory,
            "theory": theory,
            "agreement": 1.0,
            "agreement_per_seed": [1.0],
            "dense_row_superposition": 0,
        }
    }
    claims, metrics = exp.phase_claims(cfg, phases)
    assert all(c.holds for c in claims) and metrics["2in1"]["agreement_best_seed"] == 1.0

    # geometry: D* plateau at 1/2 for two levels and many antipodal features
    density = exp.geometry_densities(cfg)
    dstar = np.linspace(1.0, 0.2, len(density))[None]
    dstar[0, 3:5] = [0.51, 0.495]
    learned = np.concatenate([np.full(50, 0.5), np.linspace(0, 1, 400)])
    is_peak, narrow, flank = (np.asarray(a) for a in sp.density_peaks(learned, min_count=3))
    geo = {
        "density": density,
        "dstar": dstar,
        "learned": learned,
        "min_count": 3,
        "is_peak": is_peak,
        "narrow": narrow,
        "flank": flank,
    }
    claims, metrics = exp.geometry_claims(cfg, geo)
    assert [c.holds for c in claims] == [True, True, None]
    assert claims[2].reason  # a paper-scale claim at quick scale says why it is not tested
    assert metrics["peaks"]["digon (1/2)"]["peak"]


def test_correlated_and_abs_claims_on_synthetic_results():
    cfg = exp.SCALES["quick"]
    pairs = {
        "density": np.array([0.05, 0.01]),
        "correlated": {"cos": np.zeros((2, 2, 2))},
        "anticorrelated": {"cos": -np.ones((2, 2, 2))},
    }
    claims, _ = exp.correlated_claims(cfg, pairs)
    assert [c.holds for c in claims] == [True, True]
    ab = {
        "density": np.array([1.0, 0.1, 0.01], np.float32),
        "loss": np.array([[1.0, 0.5, 0.4]]),
        "bound": np.array([1.0, 1.0, 1.0]),
        "ratio": np.array([[1.0, 0.5, 0.4]]),
        "polysemantic": np.array([[0.0, 0.6, 0.9]]),
    }
    claims, metrics = exp.abs_claims(cfg, ab)
    assert [c.holds for c in claims] == [True, True]
    ab["ratio"] = np.array([[1.0, 1.2, 0.4]])
    assert exp.abs_claims(cfg, ab)[0][0].holds is False


@pytest.mark.slow
def test_whole_experiment_runs_at_smoke_scale(tmp_path):
    cfg = exp.SCALES["smoke"]
    ctx = _ctx(tmp_path, cfg)
    result = exp.EXPERIMENT.run(cfg, ctx)
    json.dumps(jax.tree_util.tree_map(lambda x: np.asarray(x).tolist(), result.metrics))
    assert len(result.claims) >= 14
    for claim in result.claims:
        assert claim.holds in (True, False, None)
        assert claim.holds is not None or claim.reason
    for name in ("sweep_relu", "phase_diagrams", "geometry", "correlated_pairs", "computation"):
        assert (tmp_path / f"{name}.png").exists()


@pytest.mark.slow
def test_paper_config_runs_one_step_at_paper_shapes(tmp_path):
    cfg = exp.paper_probe(exp.SCALES["paper"])
    result = exp.EXPERIMENT.run(cfg, _ctx(tmp_path, cfg, scale="paper"))
    phase = result.metrics["phase"]["2in1"]["analytic"]
    assert np.shape(phase) == (40, 40)
    assert len(result.metrics["geometry"]["dstar_mean"]) == 20
    assert len(result.metrics["computation"]["loss"][0]) == 7
    # the polytope claim is tested only with all 20 levels and 10k steps; here it says why not
    (polytope,) = [c for c in result.claims if "polytope fractions" in c.claim]
    assert polytope.holds is None and polytope.reason
