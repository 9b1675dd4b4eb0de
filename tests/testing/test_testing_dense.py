"""Oracle tests of `dense_matrix`: known matrices, lineax's own `as_matrix`, and Hessians."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from hypothesis import given
from jax.flatten_util import ravel_pytree

import respax.testing as rt


@pytest.mark.float64
@given(rt.spd_matrices(st.integers(1, 6), condition_number=1.0) | rt.spd_matrices(5))
def test_dense_matrix_of_a_matrix_operator_is_the_matrix(matrix):
    operator = lx.MatrixLinearOperator(matrix)
    np.testing.assert_array_equal(rt.dense_matrix(operator), matrix)
    np.testing.assert_array_equal(
        rt.dense_matrix(lambda v: matrix @ v, jnp.zeros(len(matrix))), matrix
    )


@jax.jit
def _dense_matrix_of_flat_matrix(matrix, tree):
    """`dense_matrix` of the map that multiplies the flattened `tree` by `matrix`."""
    unravel = ravel_pytree(tree)[1]

    def matvec(v):
        return unravel(matrix @ ravel_pytree(v)[0])

    return (
        rt.dense_matrix(matvec, tree),
        rt.dense_matrix(matvec, tree, vectorize=False),
        rt.dense_matrix(lambda v: v, tree),
    )


@pytest.mark.float64
@hypothesis.settings(max_examples=10)
@given(rt.pytrees(max_leaves=4, max_dims=2, max_side=3), st.integers(0, 2**32 - 1))
def test_dense_matrix_recovers_any_matrix_over_a_pytree(tree, seed):
    """A map defined by a matrix M on the flattened pytree has dense matrix M."""
    size = ravel_pytree(tree)[0].size
    matrix = jnp.asarray(np.random.default_rng(seed).standard_normal((size, size)))
    vectorized, one_at_a_time, identity = _dense_matrix_of_flat_matrix(matrix, tree)
    np.testing.assert_allclose(vectorized, matrix, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(one_at_a_time, matrix, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(identity, jnp.eye(size))


@pytest.mark.float64
def test_dense_matrix_of_a_block_operator_between_different_pytrees():
    rng = np.random.default_rng(0)
    a, b, c = (jnp.asarray(rng.standard_normal(shape)) for shape in [(2, 3), (2, 4), (1, 3)])

    def matvec(v):
        # input {"p": (3,), "q": (2, 2)}, output {"y": (2,), "z": (1,)}
        return {"y": a @ v["p"] + b @ v["q"].ravel(), "z": c @ v["p"]}

    example = {"p": jnp.zeros(3), "q": jnp.zeros((2, 2))}
    expected = jnp.block([[a, b], [c, jnp.zeros((1, 4))]])
    np.testing.assert_array_equal(rt.dense_matrix(matvec, example), expected)
    # The same map as a lineax operator; lineax's own as_matrix is a second, independent oracle.
    structure = jax.eval_shape(lambda: example)
    operator = lx.FunctionLinearOperator(matvec, structure)
    np.testing.assert_array_equal(rt.dense_matrix(operator), expected)
    np.testing.assert_allclose(rt.dense_matrix(operator), operator.as_matrix(), rtol=1e-15)
    # ShapeDtypeStructs are a valid example input too.
    np.testing.assert_array_equal(rt.dense_matrix(matvec, structure), expected)


def _loss(params):
    leaves = jax.tree.leaves(params)
    total = sum(jnp.sum(jnp.sin(leaf) * leaf**2) for leaf in leaves)
    return total + sum(jnp.sum(leaf) for leaf in leaves) ** 3


@jax.jit
def _hessians(params):
    """The Hessian of `_loss` three ways: jax.hessian, and dense_matrix of two HVP operators."""

    def hvp(v):
        return jax.jvp(jax.grad(_loss), (params,), (v,))[1]

    flat, unravel = ravel_pytree(params)
    hessian = jax.hessian(lambda f: _loss(unravel(f)))(flat)
    operator = lx.JacobianLinearOperator(lambda p, _: jax.grad(_loss)(p), params)
    return hessian, rt.dense_matrix(hvp, params), rt.dense_matrix(operator)


@pytest.mark.float64
@hypothesis.settings(max_examples=10)
@given(rt.pytrees(max_leaves=3, max_dims=2, max_side=2, min_value=-1.0, max_value=1.0))
def test_dense_matrix_of_a_hessian_vector_product_is_the_hessian(params):
    hessian, from_function, from_operator = _hessians(params)
    np.testing.assert_allclose(from_function, hessian, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(from_operator, hessian, rtol=1e-10, atol=1e-10)


def test_dense_matrix_float32_and_inside_jit():
    matrix = jnp.arange(6.0).reshape(2, 3)
    operator = lx.MatrixLinearOperator(matrix)
    dense = jax.jit(rt.dense_matrix)(operator)
    assert dense.dtype == jnp.float32
    np.testing.assert_array_equal(dense, matrix)
    tridiagonal = lx.TridiagonalLinearOperator(jnp.ones(4), 2 * jnp.ones(3), 3 * jnp.ones(3))
    np.testing.assert_array_equal(rt.dense_matrix(tridiagonal), tridiagonal.as_matrix())


def test_dense_matrix_bad_arguments():
    with pytest.raises(ValueError, match="example_input"):
        rt.dense_matrix(lambda v: v)
    with pytest.raises(ValueError, match="example_input"):
        rt.dense_matrix(
            lx.IdentityLinearOperator(jax.ShapeDtypeStruct((2,), jnp.float32)), jnp.ones(2)
        )
    with pytest.raises(TypeError, match="operator"):
        rt.dense_matrix(jnp.eye(2), jnp.ones(2))
