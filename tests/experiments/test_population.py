"""The population helper of the experiments: vmapped and sharded trainings equal a Python loop
over the members, on 1 and on the 4 forced CPU devices, for sizes that are not a multiple of the
device count; `select_best` equals a brute-force choice; `grid` / `ungrid` are a product and its
inverse."""

import doctest
import itertools
import pathlib
import sys

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import Mesh

_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from experiments import (  # noqa: E402
    Context,
    _population,  # noqa: E402
    grid,
    population_loop,
    population_map,
    population_size,
    select_best,
    ungrid,
)

STEPS = 25


def _context(tmp_path, devices=None):
    ctx = Context(cfg=None, scale="smoke", seed=0, out_dir=tmp_path, checkpoint_every_s=0.0)
    if devices is not None:
        ctx.mesh = Mesh(np.array(jax.devices()[:devices]), ("batch",))
    return ctx


def _problem(dtype, n=12, d=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(dtype)
    y = rng.normal(size=n).astype(dtype)
    return x, y


def _members(size, d, dtype, seed=1):
    rng = np.random.default_rng(seed)
    return {
        "lr": rng.uniform(0.01, 0.2, size).astype(dtype),
        "w0": rng.normal(size=(size, d)).astype(dtype),
    }


def _train(member, x, y):
    """Full-batch gradient descent on least squares from the member's init and learning rate."""

    def body(_, w):
        return w - member["lr"] * x.T @ (x @ w - y) / x.shape[0]

    w = jax.lax.fori_loop(0, STEPS, body, member["w0"])
    return {"w": w, "loss": 0.5 * jnp.mean((x @ w - y) ** 2)}


def _numpy_train(lr, w0, x, y):
    """The same descent in numpy float64: an oracle independent of JAX."""
    x, y, w = (np.asarray(v, np.float64) for v in (x, y, w0))
    for _ in range(STEPS):
        w = w - float(lr) * x.T @ (x @ w - y) / x.shape[0]
    return w


def _python_loop(members, x, y):
    one = jax.jit(_train)
    size = population_size(members)
    rows = [one(jax.tree.map(lambda v: v[i], members), x, y) for i in range(size)]
    return jax.tree.map(lambda *v: np.stack([np.asarray(a) for a in v]), *rows)


@pytest.mark.float64
@pytest.mark.parametrize("size", [1, 4, 5, 7])
def test_map_equals_python_loop_and_numpy_oracle_float64(tmp_path, size):
    x, y = _problem(np.float64)
    members = _members(size, x.shape[1], np.float64)
    got = population_map(_context(tmp_path), _train, members, jnp.asarray(x), jnp.asarray(y))
    assert got["w"].shape == (size, 3) and got["loss"].shape == (size,)
    loop = _python_loop(members, x, y)
    np.testing.assert_allclose(got["w"], loop["w"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got["loss"], loop["loss"], rtol=1e-12)
    oracle = np.stack([_numpy_train(members["lr"][i], members["w0"][i], x, y) for i in range(size)])
    np.testing.assert_allclose(got["w"], oracle, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("size", [3, 6])
def test_map_equals_python_loop_float32(tmp_path, size):
    x, y = _problem(np.float32)
    members = _members(size, x.shape[1], np.float32)
    got = population_map(_context(tmp_path), _train, members, jnp.asarray(x), jnp.asarray(y))
    assert got["w"].dtype == np.float32
    loop = _python_loop(members, x, y)
    np.testing.assert_allclose(got["w"], loop["w"], rtol=1e-5, atol=1e-6)
    oracle = np.stack([_numpy_train(members["lr"][i], members["w0"][i], x, y) for i in range(size)])
    np.testing.assert_allclose(got["w"], oracle, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [4, 5, 2])
def test_map_shards_over_four_devices_and_agrees_with_one_device(tmp_path, monkeypatch, size):
    assert jax.device_count() == 4, "the test conftest forces 4 CPU devices"
    x, y = _problem(np.float32)
    members = _members(size, x.shape[1], np.float32)
    ctx4 = _context(tmp_path / "four")
    placed = []
    shard = ctx4.shard

    def recording_shard(tree, axis=0):
        out = shard(tree, axis)
        placed.extend(jax.tree.leaves(out))
        return out

    monkeypatch.setattr(ctx4, "shard", recording_shard)
    four = population_map(ctx4, _train, members, jnp.asarray(x), jnp.asarray(y))
    # Padded to a multiple of 4 by repeating the last member, and split over all 4 devices.
    assert placed and all(len(leaf.sharding.device_set) == 4 for leaf in placed)
    assert all(leaf.shape[0] == -(-size // 4) * 4 for leaf in placed)
    one = population_map(_context(tmp_path / "one", 1), _train, members, x, y)
    assert four["w"].shape == (size, 3)
    np.testing.assert_allclose(four["w"], one["w"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-6)


def _loop_step(state, member, x, start):
    """Two steps of w <- w - lr * (w - x) per chunk, counting the steps taken."""
    w, taken = state
    for _ in range(2):
        w = w - member["lr"] * (w - x)
    return w, taken + 2 + 0 * start


@pytest.mark.float64
@pytest.mark.parametrize("devices, size", [(1, 3), (4, 3), (4, 6)])
def test_loop_equals_closed_form(tmp_path, devices, size):
    """w_T = x + (1 - lr)^T (w_0 - x) for each member, after 10 steps in chunks of 2."""
    rng = np.random.default_rng(2)
    lrs = rng.uniform(0.05, 0.5, size)
    w0 = rng.normal(size=(size, 2))
    x = np.array([0.5, -1.0])
    ctx = _context(tmp_path, devices)
    w, taken = population_loop(
        ctx, "train", _loop_step, (w0, np.zeros(size)), {"lr": lrs}, 10, jnp.asarray(x), chunk=2
    )
    expected = x + (1 - lrs[:, None]) ** 10 * (w0 - x)
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    np.testing.assert_array_equal(taken, np.full(size, 10.0))
    assert (tmp_path / "checkpoints" / "train.eqx").exists()


def test_loop_four_devices_equals_one_device(tmp_path):
    rng = np.random.default_rng(3)
    lrs = rng.uniform(0.05, 0.5, 5).astype(np.float32)
    w0 = rng.normal(size=(5, 2)).astype(np.float32)
    x = np.array([0.5, -1.0], np.float32)
    state = (w0, np.zeros(5, np.float32))
    runs = [
        population_loop(
            _context(tmp_path / str(n), n), "t", _loop_step, state, {"lr": lrs}, 6, x, chunk=2
        )
        for n in (1, 4)
    ]
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-6)


def _brute_force_best(values, minimize):
    means = [float(np.mean(v)) for v in values]
    finite = [i for i, m in enumerate(means) if np.isfinite(m)]
    if not finite:
        return 0
    key = (lambda i: means[i]) if minimize else (lambda i: -means[i])
    return min(finite, key=key)  # min returns the first of equal keys


@settings(max_examples=50)
@given(
    values=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4),
        elements=st.one_of(st.floats(-10, 10, allow_nan=False), st.just(np.nan), st.just(np.inf)),
    ),
    minimize=st.booleans(),
)
def test_select_best_equals_brute_force(values, minimize):
    results = {"score": values, "other": np.arange(values.shape[0])}
    sel = select_best(results, "score", minimize=minimize)
    assert sel.index == _brute_force_best(values, minimize)
    assert sel.criterion == "score" and sel.best["other"] == sel.index
    np.testing.assert_array_equal(sel.best["score"], values[sel.index])


def test_select_best_errors():
    with pytest.raises(ValueError, match="criterion='loss' is not a result"):
        select_best({"outer_loss": np.zeros(2)}, "loss")
    with pytest.raises(ValueError, match="leading candidate axis"):
        select_best({"loss": np.float64(1.0)}, "loss")
    with pytest.raises(TypeError, match="criterion"):
        select_best({"loss": np.zeros(2)}, 0)


@settings(max_examples=25)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_grid_is_the_product_and_ungrid_its_inverse(sizes):
    axes = [np.arange(n) + 10 * i for i, n in enumerate(sizes)]
    flat = grid(*[{"v": a, "twice": np.stack([a, a], 1)} for a in axes])
    rows = list(itertools.product(*axes))
    for i, population in enumerate(flat):
        assert population_size(population) == len(rows)
        np.testing.assert_array_equal(population["v"], [r[i] for r in rows])
        np.testing.assert_array_equal(population["twice"][:, 1], [r[i] for r in rows])
        back = ungrid(population, tuple(sizes))
        assert back["v"].shape == tuple(sizes) and back["twice"].shape == (*sizes, 2)
        np.testing.assert_array_equal(
            np.moveaxis(back["v"], i, 0)[:, *([0] * (len(sizes) - 1))], axes[i]
        )


def test_bad_populations_are_named(tmp_path):
    with pytest.raises(ValueError, match="different population sizes"):
        population_size({"a": np.zeros(2), "b": np.zeros(3)})
    with pytest.raises(ValueError, match="scalar"):
        population_size({"a": np.float32(1.0)})
    with pytest.raises(ValueError, match="empty"):
        population_size({"a": np.zeros((0, 2))})
    with pytest.raises(ValueError, match="state has 2 members, members has 3"):
        population_loop(
            _context(tmp_path),
            "t",
            _loop_step,
            (np.zeros((2, 2)), np.zeros(2)),
            {"lr": np.ones(3)},
            2,
            np.zeros(2),
            chunk=2,
        )
    with pytest.raises(TypeError, match="fn must be callable"):
        population_map(_context(tmp_path), "train", {"lr": np.ones(2)})
    with pytest.raises(ValueError, match="shape=\\(2, 2\\) has 4 members, results have 3"):
        ungrid({"a": np.zeros(3)}, (2, 2))


def test_docstring_examples():
    result = doctest.testmod(
        _population,
        extraglobs={"np": np},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.failed == 0 and result.attempted >= 4
