"""The committed Neuro# grid policy: it loads into the GNN, is within the parameter budget, and
beats VSADS on held-out grid worlds (seeds the training run never drew)."""

import numpy as np
import pytest

from experiments import neurosharp
from respax import sat


def test_committed_grid_policy_loads_and_beats_vsads():
    logits_fn, flat, nf = neurosharp._load_policy(neurosharp.GRID_WEIGHTS)
    assert nf == 1 and flat.size == 36_034 <= 40_000
    vsads, learned = [], []
    for seed in (100_000, 100_001, 100_002):
        inst = sat.grid_world(10, 5, seed=seed)
        g = sat.literal_clause_graph(inst.cnf, inst.time_step)
        bias, pol = sat.scores_to_branching(
            np.asarray(logits_fn(flat[None], g))[0], inst.cnf.num_vars
        )
        a = sat.count(inst.cnf)
        b = sat.count(inst.cnf, variable_bias=bias, polarity=pol)
        assert a.count == b.count == sat.grid_world_trajectories(10, 5, seed=seed)
        vsads.append(a.decisions)
        learned.append(b.decisions)
    assert sum(learned) < sum(vsads) / 2


def test_weights_of_another_shape_are_refused(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, flat=np.zeros(10, np.float32), num_features=1)
    with pytest.raises(ValueError, match="grid_weights .* 10 parameters"):
        neurosharp._load_policy(str(path))
