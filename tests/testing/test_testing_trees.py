"""Tests of `tree_allclose`, `assert_tree_allclose` and `dense_vector`."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import respax.testing as rt


@given(rt.pytrees(), st.floats(-1e-7, 1e-7))
def test_a_tree_is_close_to_itself_and_to_tiny_perturbations(tree, shift):
    assert rt.tree_allclose(tree, tree, rtol=0.0, atol=0.0)
    shifted = jax.tree.map(lambda leaf: leaf + shift, tree)
    assert rt.tree_allclose(shifted, tree, rtol=0.0, atol=1e-6)
    rt.assert_tree_allclose(shifted, tree, rtol=0.0, atol=1e-6)


@given(rt.pytrees(min_value=-1.0, max_value=1.0), st.data())
def test_one_changed_element_is_not_close(tree, data):
    leaves, treedef = jax.tree.flatten(tree)
    which = data.draw(st.integers(0, len(leaves) - 1))
    element = data.draw(st.integers(0, leaves[which].size - 1))
    changed = leaves[which].ravel().at[element].add(0.5).reshape(leaves[which].shape)
    other = jax.tree.unflatten(treedef, leaves[:which] + [changed] + leaves[which + 1 :])
    assert not rt.tree_allclose(other, tree, rtol=1e-5, atol=1e-5)
    assert rt.tree_allclose(other, tree, atol=0.6)
    with pytest.raises(AssertionError, match="1 of"):
        rt.assert_tree_allclose(other, tree, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "a, b",
    [
        ({"a": jnp.ones(2)}, {"b": jnp.ones(2)}),  # different keys
        ({"a": jnp.ones(2)}, [jnp.ones(2)]),  # dict vs list
        ([jnp.ones(2)], (jnp.ones(2),)),  # list vs tuple
        ([jnp.ones(2)], [jnp.ones(2), jnp.ones(2)]),  # an extra leaf
        ([jnp.ones(2)], [[jnp.ones(2)]]),  # extra nesting
        ({"a": jnp.ones(3)}, {"a": jnp.ones(1)}),  # broadcastable shapes
        ({"a": jnp.ones(3)}, {"a": jnp.asarray(1.0)}),  # array vs scalar
        ({"a": jnp.ones((2, 3))}, {"a": jnp.ones((3, 2))}),  # transposed shape
        (jnp.ones(2), jnp.ones(2).at[1].set(jnp.nan)),  # a NaN
    ],
)
def test_tree_allclose_negatives(a, b):
    assert not rt.tree_allclose(a, b)
    assert not rt.tree_allclose(b, a)
    with pytest.raises(AssertionError):
        rt.assert_tree_allclose(a, b)


def test_tree_allclose_dtypes_and_nans():
    a, b = [jnp.ones(2, jnp.float32)], [jnp.ones(2, jnp.bfloat16)]
    assert rt.tree_allclose(a, b)
    assert not rt.tree_allclose(a, b, check_dtypes=True)
    with pytest.raises(AssertionError, match="dtypes differ"):
        rt.assert_tree_allclose(a, b, check_dtypes=True)
    nan = jnp.array([1.0, jnp.nan])
    assert not rt.tree_allclose(nan, nan)
    assert rt.tree_allclose(nan, nan, equal_nan=True)
    assert rt.tree_allclose({"x": 1.0, "y": np.ones(2)}, {"x": 1.0 + 1e-9, "y": jnp.ones(2)})


def test_assert_tree_allclose_names_the_leaf():
    actual = {"layer": [jnp.zeros(3), jnp.array([1.0, 2.0])]}
    desired = {"layer": [jnp.zeros(3), jnp.array([1.0, 2.5])]}
    with pytest.raises(
        AssertionError, match=r"context\n.*\['layer'\]\[1\].*max abs error 5\.000e-01"
    ):
        rt.assert_tree_allclose(actual, desired, err_msg="context")
    with pytest.raises(AssertionError, match="shapes differ"):
        rt.assert_tree_allclose({"a": jnp.ones(3)}, {"a": jnp.ones(1)})
    with pytest.raises(AssertionError, match="structures differ"):
        rt.assert_tree_allclose({"a": jnp.ones(3)}, [jnp.ones(3)])


@given(rt.pytrees())
def test_dense_vector_concatenates_leaves_in_order(tree):
    expected = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])
    np.testing.assert_array_equal(np.asarray(rt.dense_vector(tree)), expected)
