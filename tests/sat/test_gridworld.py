"""The grid-world family: counts against a simulation of every action sequence, annotations,
noise and errors."""

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from respax.sat import count, grid_world, grid_world_layout, grid_world_trajectories, perlin_noise


@given(st.integers(2, 7), st.integers(1, 5), st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_count_equals_simulated_trajectories(size, horizon, seed):
    inst = grid_world(size, horizon, seed=seed)
    info = count(inst.cnf)
    assert info.status == "ok"
    assert info.count == grid_world_trajectories(size, horizon, seed=seed)


def _enumerate(size, horizon, seed):
    """Every one of the 4**horizon action sequences, simulated."""
    lava, (sx, sy) = grid_world_layout(size, seed=seed)
    moves = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])
    pos, alive = np.array([[sx, sy]]), np.array([True])
    for _ in range(horizon):
        pos = np.clip((pos[:, None, :] + moves[None]).reshape(-1, 2), 0, size - 1)
        alive = np.repeat(alive, 4) & ~lava[pos[:, 1], pos[:, 0]]
    return int(alive.sum())


@given(st.integers(2, 10), st.integers(1, 6), st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_dynamic_programme_equals_enumeration(size, horizon, seed):
    assert grid_world_trajectories(size, horizon, seed=seed) == _enumerate(size, horizon, seed)


def test_long_horizon_count_equals_dynamic_programme():
    inst = grid_world(10, 12, seed=11)
    lit_order = 1.0 - inst.time_step  # branch early steps first: fast on this family
    info = count(inst.cnf, variable_bias=1e4 * lit_order)
    assert info.status == "ok"
    assert info.count == grid_world_trajectories(10, 12, seed=11) > 0


def test_a_world_with_lava_cuts_trajectories():
    # Some 10x10 world in the first seeds has lava next to the start; there the count is
    # below 4**T, and every count stays below 4**T.
    counts = [grid_world_trajectories(10, 3, seed=s) for s in range(30)]
    assert max(counts) <= 4**3
    assert min(counts) < 4**3
    inst = grid_world(10, 3, seed=int(np.argmin(counts)))
    assert count(inst.cnf).count == min(counts)


def test_time_steps_annotate_each_unrolled_step():
    inst = grid_world(6, 4, seed=3)
    ts = inst.time_step
    assert ts.shape == (inst.cnf.num_vars,)
    assert ts.min() == 0 and ts.max() == 3 / 4
    assert np.all(np.diff(ts) >= 0)  # variables are numbered step by step
    per_step = np.bincount(np.round(ts[1:] * 4).astype(int))
    assert len(set(per_step.tolist())) == 1  # the same step circuit, copied 4 times
    assert inst.name == "grid(6,4)#3"


def test_layout_is_seeded_and_lava_fraction_is_moderate():
    lava, start = grid_world_layout(10, seed=7)
    lava2, start2 = grid_world_layout(10, seed=7)
    np.testing.assert_array_equal(lava, lava2)
    assert start == start2 and all(0 <= s < 10 for s in start)
    frac = np.mean([grid_world_layout(10, seed=s)[0].mean() for s in range(40)])
    assert 0.05 < frac < 0.35


def test_perlin_noise_range_and_seed():
    a = perlin_noise((16, 16), seed=0)
    assert a.shape == (16, 16) and np.all(np.abs(a) <= 1.0)
    assert not np.allclose(a, perlin_noise((16, 16), seed=1))
    np.testing.assert_array_equal(a, perlin_noise((16, 16), seed=0))
    # one octave at a fine scale varies smoothly: neighbours differ less than far points
    b = perlin_noise((64, 64), seed=2, scale=16.0, octaves=1)
    near = np.abs(np.diff(b, axis=0)).mean()
    far = np.abs(b[:32] - b[32:]).mean()
    assert near < far


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 1, "horizon": 3}, "size must be >= 2"),
        ({"size": 5, "horizon": 0}, "horizon must be >= 1"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grid_world(**kwargs, seed=0)
    with pytest.raises(ValueError, match="octaves"):
        perlin_noise((4, 4), seed=0, octaves=0)
    with pytest.raises(TypeError, match="seed"):
        grid_world(4, 2, seed=1.5)


@pytest.mark.slow
def test_formula_does_not_depend_on_the_string_hash_seed():
    # py-aiger's traversal follows Python's per-process string hashing; the CNF must not
    import subprocess
    import sys

    code = (
        "import hashlib; from respax.sat import grid_world; "
        "print(hashlib.sha1(grid_world(6, 3, seed=5).cnf.literals.tobytes()).hexdigest())"
    )
    out = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**__import__("os").environ, "PYTHONHASHSEED": str(h)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for h in (1, 2)
    }
    assert len(out) == 1
