"""Property tests of the hypothesis strategies in `respax.testing`."""

import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import respax.testing as rt


def _depth(tree) -> int:
    if isinstance(tree, dict):
        return 1 + max(_depth(child) for child in tree.values())
    if isinstance(tree, list | tuple):
        return 1 + max(_depth(child) for child in tree)
    return 0


def _containers(tree) -> set[type]:
    if isinstance(tree, dict):
        return {dict}.union(*(_containers(child) for child in tree.values()))
    if isinstance(tree, list | tuple):
        return {type(tree)}.union(*(_containers(child) for child in tree))
    return set()


@given(rt.pytrees(max_depth=2, max_leaves=5, max_dims=2, max_side=3, min_value=-1.5, max_value=2.0))
def test_pytrees_respect_their_bounds(tree):
    leaves = jax.tree.leaves(tree)
    assert 1 <= len(leaves) <= 5
    assert _depth(tree) <= 2
    for leaf in leaves:
        assert isinstance(leaf, jax.Array)
        assert leaf.dtype == jnp.float32
        assert leaf.ndim <= 2
        assert all(1 <= side <= 3 for side in leaf.shape)
        assert bool(jnp.all((leaf >= -1.5) & (leaf <= 2.0)))


@pytest.mark.float64
@given(rt.pytrees(dtype=jnp.float64))
def test_pytrees_float64(tree):
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(tree))


@pytest.mark.float64
@given(rt.pytrees())
def test_pytrees_default_dtype_follows_x64(tree):
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(tree))


@given(rt.pytrees(dtype=jnp.bfloat16, max_leaves=2))
def test_pytrees_bfloat16(tree):
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(tree))


@given(rt.pytrees(max_depth=0))
def test_pytrees_depth_zero_is_a_bare_array(tree):
    assert isinstance(tree, jax.Array)


@given(rt.pytrees(containers=["dict"], max_depth=2))
def test_pytrees_containers_are_restricted(tree):
    assert _containers(tree) <= {dict}


def test_pytrees_reach_nested_mixed_structures():
    # Reachability only: no shrinking, and tiny leaves so that each draw is cheap.
    settings = hypothesis.settings(
        database=None, deadline=None, max_examples=2000, phases=[hypothesis.Phase.generate]
    )

    def mixed(tree):
        return _depth(tree) >= 2 and _containers(tree) == {dict, list, tuple}

    found = hypothesis.find(rt.pytrees(max_dims=0), mixed, settings=settings)
    assert mixed(found)

    def has_3d_leaf(tree):
        return any(leaf.ndim == 3 for leaf in jax.tree.leaves(tree))

    found = hypothesis.find(rt.pytrees(max_side=2), has_3d_leaf, settings=settings)
    assert has_3d_leaf(found)
    found = hypothesis.find(rt.pytrees(), lambda t: isinstance(t, jax.Array), settings=settings)
    assert isinstance(found, jax.Array)


def test_pytrees_float64_without_x64_is_an_error():
    if jax.config.jax_enable_x64:
        pytest.skip("x64 is on globally")
    with pytest.raises(ValueError, match="jax_enable_x64"):
        hypothesis.find(rt.pytrees(dtype=jnp.float64), lambda _: True)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"max_depth": -1}, ValueError),
        ({"max_leaves": 0}, ValueError),
        ({"max_dims": -1}, ValueError),
        ({"max_side": 0}, ValueError),
        ({"min_value": 1.0, "max_value": 0.0}, ValueError),
        ({"containers": ["set"]}, ValueError),
        ({"containers": []}, ValueError),
        ({"dtype": jnp.int32}, TypeError),
    ],
)
def test_pytrees_bad_arguments(kwargs, error):
    with pytest.raises(error):
        rt.pytrees(**kwargs)


@given(st.data())
def test_pytrees_like_copies_structure_shapes_and_dtypes(data):
    template = data.draw(rt.pytrees(max_leaves=4))
    tree = data.draw(rt.pytrees_like(template, min_value=0.5, max_value=1.0))
    assert jax.tree.structure(tree) == jax.tree.structure(template)
    for leaf, reference in zip(jax.tree.leaves(tree), jax.tree.leaves(template), strict=True):
        assert leaf.shape == reference.shape
        assert leaf.dtype == reference.dtype
        assert bool(jnp.all((leaf >= 0.5) & (leaf <= 1.0)))


@given(rt.pytrees_like({"w": jax.ShapeDtypeStruct((2, 3), jnp.float32), "b": jnp.zeros(())}))
def test_pytrees_like_accepts_shape_dtype_structs(tree):
    assert tree["w"].shape == (2, 3) and tree["b"].shape == ()


def test_pytrees_like_rejects_integer_leaves():
    with pytest.raises(TypeError, match="floating"):
        rt.pytrees_like({"n": jnp.zeros(2, dtype=jnp.int32)})


@pytest.mark.float64
@given(
    st.integers(2, 7).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.floats(1.0, 1e6),
            st.floats(1e-3, 1e3),
        )
    ),
    st.data(),
)
def test_spd_matrices_have_the_requested_condition_number_float64(params, data):
    n, condition, smallest = params
    matrix = data.draw(rt.spd_matrices(n, condition_number=condition, min_eigenvalue=smallest))
    assert matrix.shape == (n, n) and matrix.dtype == jnp.float64
    a = np.asarray(matrix)
    np.testing.assert_array_equal(a, a.T)
    eigenvalues = np.linalg.eigvalsh(a)
    np.testing.assert_allclose(eigenvalues.min(), smallest, rtol=1e-9)
    np.testing.assert_allclose(eigenvalues.max(), smallest * condition, rtol=1e-9)
    np.testing.assert_allclose(np.linalg.cond(a), condition, rtol=1e-9)
    # the Cholesky factorization exists exactly when the matrix is SPD
    np.linalg.cholesky(a)


@given(rt.spd_matrices(st.integers(2, 5), condition_number=st.floats(1.0, 1e3)))
def test_spd_matrices_float32(matrix):
    assert matrix.dtype == jnp.float32
    a = np.asarray(matrix, dtype=np.float64)
    np.testing.assert_array_equal(a, a.T)
    assert np.linalg.eigvalsh(a).min() > 0


@pytest.mark.float64
@given(rt.spd_matrices(st.just(4), condition_number=st.sampled_from([3.0, 30.0])))
def test_spd_matrices_condition_number_strategy(matrix):
    condition = float(np.linalg.cond(np.asarray(matrix)))
    assert min(abs(condition - 3.0), abs(condition - 30.0)) < 1e-9


@pytest.mark.float64
def test_spd_matrices_one_by_one():
    one = hypothesis.find(rt.spd_matrices(1, condition_number=1.0, min_eigenvalue=2.5), bool)
    np.testing.assert_array_equal(np.asarray(one), [[2.5]])
    with pytest.raises(ValueError, match="1x1"):
        hypothesis.find(rt.spd_matrices(1, condition_number=10.0), lambda _: True)


@pytest.mark.float64
def test_spd_matrices_are_not_diagonal():
    # A Haar-random eigenbasis almost never aligns with the axes.
    matrix = hypothesis.find(
        rt.spd_matrices(3, condition_number=10.0),
        lambda m: np.abs(np.asarray(m) - np.diag(np.diag(np.asarray(m)))).max() > 1e-3,
    )
    assert matrix.shape == (3, 3)


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"condition_number": 0.5}, {"min_eigenvalue": 0.0}, {"dtype": jnp.int32}],
)
def test_spd_matrices_bad_arguments(kwargs):
    with pytest.raises((ValueError, TypeError)):
        rt.spd_matrices(**kwargs)


@given(rt.prng_keys(), rt.prng_keys(typed=False))
def test_prng_keys(typed_key, raw_key):
    assert jnp.issubdtype(typed_key.dtype, jax.dtypes.prng_key)
    assert raw_key.dtype == jnp.uint32 and raw_key.shape == (2,)
    assert jax.random.normal(typed_key, (3,)).shape == (3,)
    assert jax.random.normal(raw_key, (3,)).shape == (3,)


def test_prng_keys_differ():
    keys = hypothesis.find(
        st.tuples(rt.prng_keys(), rt.prng_keys()),
        lambda pair: (
            not bool(jnp.all(jax.random.key_data(pair[0]) == jax.random.key_data(pair[1])))
        ),
    )
    assert len(keys) == 2


@hypothesis.settings(max_examples=10)
@given(rt.small_mlps(in_size=st.integers(1, 3), out_size="scalar", max_width=5, max_depth=2))
def test_small_mlps(mlp):
    assert isinstance(mlp, eqx.nn.MLP)
    assert 1 <= mlp.width_size <= 5 and 0 <= mlp.depth <= 2
    x = jnp.linspace(-1.0, 1.0, mlp.in_size)
    y = mlp(x)
    assert y.shape == () and y.dtype == jnp.float32
    for layer in mlp.layers:
        bound = 1 / np.sqrt(layer.in_features)
        assert bool(jnp.all(jnp.abs(layer.weight) <= bound))
        assert bool(jnp.all(jnp.abs(layer.bias) <= bound))


@pytest.mark.float64
@hypothesis.settings(max_examples=10)
@given(rt.small_mlps(in_size="scalar", out_size=2, dtype=jnp.float64))
def test_small_mlps_float64_scalar_input(mlp):
    y = mlp(jnp.asarray(0.3))
    assert y.shape == (2,) and y.dtype == jnp.float64
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(eqx.filter(mlp, eqx.is_array)))
