"""Comparing and flattening pytrees of arrays."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float, PyTree


def _mismatch(a: PyTree[Any], b: PyTree[Any], check_dtypes: bool) -> str | None:
    """Why `a` and `b` differ in structure, shapes or dtypes; None when they agree."""
    structure_a, structure_b = jax.tree.structure(a), jax.tree.structure(b)
    if structure_a != structure_b:
        return f"tree structures differ:\n  {structure_a}\n  {structure_b}"
    for (path, leaf_a), leaf_b in zip(
        jax.tree.leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        shape_a, shape_b = jnp.shape(leaf_a), jnp.shape(leaf_b)
        if shape_a != shape_b:
            return f"leaf {jax.tree_util.keystr(path)!r}: shapes differ, {shape_a} vs {shape_b}"
        if check_dtypes:
            dtype_a, dtype_b = jnp.result_type(leaf_a), jnp.result_type(leaf_b)
            if dtype_a != dtype_b:
                return f"leaf {jax.tree_util.keystr(path)!r}: dtypes differ, {dtype_a} vs {dtype_b}"
    return None


def tree_allclose(
    a: PyTree[ArrayLike],
    b: PyTree[ArrayLike],
    *,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    equal_nan: bool = False,
    check_dtypes: bool = False,
) -> bool:
    """Whether two pytrees have the same structure and leaf shapes, and close values.

    Unlike `optax.tree.allclose` (which this uses for the values), differing structures or
    leaf shapes give False rather than an error or a silent broadcast. Values are compared
    leaf by leaf as `jnp.allclose` does: `|a - b| <= atol + rtol * |b|`. Call it outside
    `jit`: it returns a Python bool.

    Args:
        a: a pytree of arrays or scalars.
        b: a pytree of arrays or scalars.
        rtol: relative tolerance.
        atol: absolute tolerance.
        equal_nan: whether NaNs in the same place count as equal.
        check_dtypes: whether leaves must also have the same dtypes.

    Returns:
        True when the trees match in structure and shapes (and dtypes, if asked) and every
        element is close.

    Example:
        >>> tree_allclose({"w": jnp.ones(2)}, {"w": jnp.ones(2) + 1e-9})
        True
        >>> tree_allclose({"w": jnp.ones(2)}, {"w": jnp.ones(3)})
        False
    """
    if _mismatch(a, b, check_dtypes) is not None:
        return False
    # Leaves of different dtypes are compared on purpose (check_dtypes=False): promote them
    # with the standard rules even where the caller runs with strict dtype promotion.
    with jax.numpy_dtype_promotion("standard"):
        return bool(optax.tree.allclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan))


def assert_tree_allclose(
    actual: PyTree[ArrayLike],
    desired: PyTree[ArrayLike],
    *,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    equal_nan: bool = False,
    check_dtypes: bool = False,
    err_msg: str = "",
) -> None:
    """Assert `tree_allclose(actual, desired)`, saying where and by how much they differ.

    Args:
        actual: the pytree under test.
        desired: the expected pytree.
        rtol: relative tolerance (relative to `desired`).
        atol: absolute tolerance.
        equal_nan: whether NaNs in the same place count as equal.
        check_dtypes: whether leaves must also have the same dtypes.
        err_msg: text put at the start of the failure message.

    Raises:
        AssertionError: naming the first differing leaf, its largest absolute and relative
            errors, and the tolerances.

    Example:
        >>> assert_tree_allclose([jnp.zeros(2)], [jnp.zeros(2)])
    """
    prefix = f"{err_msg}\n" if err_msg else ""
    reason = _mismatch(actual, desired, check_dtypes)
    if reason is not None:
        raise AssertionError(prefix + reason)
    for (path, leaf_actual), leaf_desired in zip(
        jax.tree.leaves_with_path(actual), jax.tree.leaves(desired), strict=True
    ):
        with jax.numpy_dtype_promotion("standard"):  # as in tree_allclose
            close = jnp.allclose(
                leaf_actual, leaf_desired, rtol=rtol, atol=atol, equal_nan=equal_nan
            )
        if bool(close):
            continue
        x = np.asarray(leaf_actual, dtype=np.float64)
        y = np.asarray(leaf_desired, dtype=np.float64)
        error = np.abs(x - y)
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = error / np.abs(y)
        raise AssertionError(
            f"{prefix}leaf {jax.tree_util.keystr(path)!r} (shape {x.shape}) is not close: "
            f"max abs error {np.nanmax(error) if error.size else 0:.3e}, "
            f"max rel error {np.nanmax(relative) if relative.size else 0:.3e} "
            f"(rtol={rtol}, atol={atol}); "
            f"{int(np.sum(~np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan)))} "
            f"of {x.size} elements differ"
        )


def dense_vector(tree: PyTree[ArrayLike]) -> Float[Array, " n"]:
    """Flatten a pytree of arrays into one vector, leaf by leaf in `jax.tree.leaves` order.

    This is `jax.flatten_util.ravel_pytree(tree)[0]`, the same ordering `dense_matrix` and
    lineax's `as_matrix` use for rows and columns; use `ravel_pytree` directly to also get
    the inverse.

    Args:
        tree: a pytree of arrays.

    Returns:
        A vector of all elements, in the promoted dtype of the leaves.

    Example:
        >>> dense_vector({"a": jnp.zeros((2, 2)), "b": jnp.ones(1)})
        Array([0., 0., 0., 0., 1.], dtype=float32)
    """
    return ravel_pytree(tree)[0]
