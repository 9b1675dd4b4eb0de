"""The Ray executor: the same rollouts and the same ES step as the serial executor, on a local Ray
instance (slow: starting Ray takes ~10-20 s), and clear errors for bad arguments."""

import logging
import sys

import jax
import numpy as np
import pytest

from respax import sat


def _tasks():
    """Rollout tasks on small formulas: VSADS, random root-mode biases, and a capped run."""
    rng = np.random.default_rng(0)
    insts = [sat.cellular_automaton(9, 6, 3, seed=s) for s in range(2)]
    insts += [sat.random_kcnf(3, 20, 60, seed=1), sat.sudoku(4, 4, seed=0)]
    tasks = []
    for inst in insts:
        n = inst.cnf.num_vars
        tasks.append((inst.cnf, None, None, 10_000))
        for _ in range(2):
            bias, pol = sat.scores_to_branching(rng.normal(size=2 * n), n)
            tasks.append((inst.cnf, bias, pol, 10_000))
    tasks.append((insts[0].cnf, None, None, 1))  # capped: scores the cap
    return tasks


@pytest.mark.slow
def test_ray_executor_matches_the_serial_one(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    executor = sat.ray_executor(
        num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
    )
    try:
        # (a) every rollout, in task order
        tasks = _tasks()
        serial = list(sat.SerialExecutor().map(sat.rollout_decisions, tasks))
        assert executor.map(sat.rollout_decisions, tasks) == serial
        assert serial[-1] == 1 and len(set(serial)) > 2

        # (b) one ES step, bit for bit
        cfg = sat.ESConfig(pairs=2, decision_cap=500)
        state, unflatten = sat.es_init(sat.NeuroSharpGNN(key=jax.random.PRNGKey(1)), cfg)
        forms = [(sat.cellular_automaton(9, 6, 3, seed=s).cnf, None) for s in range(2)]
        logits_fn = sat.make_logits_fn(unflatten)
        steps = [
            sat.es_step(state, forms, logits_fn, cfg, ex, key=jax.random.PRNGKey(2))
            for ex in (sat.SerialExecutor(), executor)
        ]
        (ref, ref_stats), (new, new_stats) = steps
        assert new_stats == ref_stats and new.iteration == ref.iteration == 1
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(new), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)

        # An executor on the existing connection leaves it open; arguments then are an error.
        sat.ray_executor().shutdown()
        assert ray.is_initialized()
        with pytest.raises(ValueError, match="already initialised"):
            sat.ray_executor(num_cpus=2)
    finally:
        executor.shutdown()
    assert not ray.is_initialized()


def test_ray_executor_argument_errors(monkeypatch):
    with pytest.raises(ValueError, match="address must be"):
        sat.ray_executor("")
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="num_cpus must be"):
            sat.ray_executor(num_cpus=bad)
    with pytest.raises(ValueError, match="num_cpus .* cannot be given with address='auto'"):
        sat.ray_executor("auto", num_cpus=2)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    with pytest.raises(ImportError, match=r'pip install "respax-sat\[ray\]"'):
        sat.ray_executor()


def test_a_local_instance_turns_off_the_uv_run_hook_for_ray_init_only(monkeypatch):
    """Under `uv run` Ray would start each worker with `uv run` inside a copy of the working
    directory that lacks the ignored files; `ray_executor` turns that off while it starts a local
    instance, restores it afterwards, and leaves a cluster or an explicit setting alone."""
    import types

    from respax.sat import _es

    seen = []
    constants = types.SimpleNamespace(RAY_ENABLE_UV_RUN_RUNTIME_ENV=True)
    fake = types.SimpleNamespace(
        _private=types.SimpleNamespace(ray_constants=constants),
        is_initialized=lambda: False,
        init=lambda address, **kw: seen.append((address, constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV)),
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", raising=False)
    sat.ray_executor(num_cpus=1)
    sat.ray_executor("auto")
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "1")
    sat.ray_executor()
    assert seen == [(None, False), ("auto", True), (None, True)]
    assert constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV is True
    assert isinstance(sat.ray_executor(), _es._RayExecutor)
