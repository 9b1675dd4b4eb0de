"""The Neuro# GNN, root-mode branching from its scores, ES and the families."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from respax import sat


@pytest.fixture(scope="module")
def model():
    return sat.NeuroSharpGNN(key=jax.random.PRNGKey(0), num_features=1)


@pytest.mark.slow
def test_parameter_budget(model):
    assert sat.parameter_count(model) <= 40_000


@pytest.mark.slow
def test_gnn_is_permutation_equivariant_over_clauses(model):
    inst = sat.cellular_automaton(9, 6, 3, seed=0)
    g = sat.literal_clause_graph(inst.cnf, inst.time_step)
    perm = sat.CNF.from_clauses(inst.cnf.clauses()[::-1], num_vars=inst.cnf.num_vars)
    g2 = sat.literal_clause_graph(perm, inst.time_step)
    a, b = eqx.filter_jit(lambda m, g: m(g))(model, g), model(g2)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert jnp.all(jnp.isneginf(a[2 * inst.cnf.num_vars :]))


@pytest.mark.slow
def test_learned_branching_keeps_counts_exact(model):
    for seed in range(3):
        inst = sat.cellular_automaton(30, 6, 3, seed=seed)
        lg = model(sat.literal_clause_graph(inst.cnf, inst.time_step))
        bias, pol = sat.scores_to_branching(lg, inst.cnf.num_vars)
        ref = sat.count(inst.cnf).count
        assert sat.count(inst.cnf, variable_bias=bias, polarity=pol).count == ref
        if seed == 0:  # the component-mode policy (one jit per shape bucket)
            policy = sat.GNNPolicy(model, inst.time_step)
            info = sat.count(inst.cnf, branching=policy, policy_min_vars=8)
            assert info.count == ref and info.policy_calls > 0


def test_centered_ranks():
    r = sat.centered_ranks(jnp.array([5.0, -1.0, 2.0, 9.0]))
    np.testing.assert_allclose(r, [1 / 6, -0.5, -1 / 6, 0.5], atol=1e-6)


@pytest.mark.slow
def test_es_step_moves_parameters_and_reports():
    m = sat.NeuroSharpGNN(key=jax.random.PRNGKey(1))
    cfg = sat.ESConfig(pairs=2, decision_cap=500)
    state, unflatten = sat.es_init(m, cfg)
    insts = [sat.cellular_automaton(9, 6, 3, seed=s) for s in range(2)]
    new, stats = sat.es_step(
        state,
        [(i.cnf, None) for i in insts],
        sat.make_logits_fn(unflatten),
        cfg,
        sat.SerialExecutor(),
        key=jax.random.PRNGKey(2),
    )
    assert new.iteration == 1 and not np.allclose(new.flat, state.flat)
    assert 0 < stats["decisions_center"] <= 500


def test_families_are_seeded_and_valid():
    a = sat.cellular_automaton(9, 8, 4, seed=3)
    b = sat.cellular_automaton(9, 8, 4, seed=3)
    assert a.cnf.clauses() == b.cnf.clauses() and a.cnf.num_vars == 40
    assert sat.count(a.cnf).count >= 1  # the random run's own history is a model
    assert sat.count(sat.sudoku(4, 0, seed=0).cnf).count == 288
    assert sat.count(sat.pigeonhole(4, 3).cnf).count == 0
    assert sat.count(sat.grid_colouring(1, 2, 3).cnf).count == 6
    with pytest.raises(ValueError, match="size"):
        sat.sudoku(5, 0, seed=0)
    with pytest.raises(TypeError, match="seed"):
        sat.random_kcnf(3, 5, 5, seed=1.5)


def test_td_bias_prefers_the_root_bag():
    f = sat.CNF.from_clauses([[i, i + 1] for i in range(1, 9)])
    b = sat.td_bias(f)
    assert b.shape == (9,) and b.max() == 0.0 and b.min() < 0
