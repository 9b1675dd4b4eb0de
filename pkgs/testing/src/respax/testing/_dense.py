"""Dense matrices of linear maps over pytrees, for oracle tests."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree


def dense_matrix(
    operator: lx.AbstractLinearOperator | Callable[[Any], Any],
    example_input: PyTree[Any] | None = None,
    *,
    vectorize: bool = True,
) -> Float[Array, "m n"]:
    """The dense matrix of a linear map over pytrees, built by applying it to basis vectors.

    Column `j` is the map applied to the `j`-th basis vector of the flattened input; rows
    and columns follow `jax.flatten_util.ravel_pytree` order (leaf by leaf in
    `jax.tree.leaves` order, each leaf row-major), the same order as lineax's `as_matrix`.
    Only the operator's `mv` is used, never its own `as_matrix`, so the result is an
    independent oracle for it.

    Args:
        operator: a lineax operator (its input structure is `operator.in_structure()`), or
            a function `v -> A v` over pytrees, which must be linear.
        example_input: for a function only: a pytree (arrays or `jax.ShapeDtypeStruct`s)
            with the structure, shapes and dtypes of the function's input.
        vectorize: True (default) maps over all basis vectors at once with `jax.vmap`;
            False applies them one at a time with `jax.lax.map`, for maps that cannot be
            batched or to save memory.

    Returns:
        The `(m, n)` matrix, `n` the input size and `m` the output size.

    Example:
        >>> matvec = lambda v: {"y": 2.0 * v["a"], "z": v["a"][:1] + v["b"]}
        >>> dense_matrix(matvec, {"a": jnp.zeros(2), "b": jnp.zeros(1)})
        Array([[2., 0., 0.],
               [0., 2., 0.],
               [1., 0., 1.]], dtype=float32)
    """
    if isinstance(operator, lx.AbstractLinearOperator):
        if example_input is not None:
            raise ValueError(
                "`example_input` must be None for a lineax operator; its input structure is "
                "`operator.in_structure()`."
            )
        matvec = operator.mv
        structure = operator.in_structure()
    elif callable(operator):
        if example_input is None:
            raise ValueError(
                "`example_input` is required when `operator` is a function: pass a pytree with "
                "the structure, shapes and dtypes of its input."
            )
        matvec = operator
        structure = example_input
    else:
        raise TypeError(
            "`operator` must be a lineax.AbstractLinearOperator or a callable; "
            f"got {type(operator)}."
        )

    zeros = jax.tree.map(lambda leaf: jnp.zeros(jnp.shape(leaf), leaf.dtype), structure)
    flat_zeros, unravel = ravel_pytree(zeros)
    size = flat_zeros.size

    def column(basis_vector: Float[Array, " n"]) -> Float[Array, " m"]:
        return ravel_pytree(matvec(unravel(basis_vector)))[0]

    basis = jnp.eye(size, dtype=flat_zeros.dtype)
    if vectorize:
        return jax.vmap(column, out_axes=1)(basis)
    return jax.lax.map(column, basis).T
