"""Input checks that raise clear errors naming the argument (outside `jit`, on static values)."""

import jax
import jax.numpy as jnp
import numpy as np


def check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    """Raise `ValueError` unless `value` is a finite number > 0 (or >= 0 with `allow_zero`).

    Traced values are not checked (their value is unknown at trace time).
    """
    if isinstance(value, jax.core.Tracer):
        return
    v = np.asarray(value)
    if v.shape != ():
        raise ValueError(f"`{name}` must be a scalar, got shape {v.shape}.")
    ok = np.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        expected = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be a finite number {expected}, got {value!r}.")


def check_positive_int(name: str, value) -> None:
    """Raise `ValueError` unless `value` is a Python/numpy integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


def check_same_structure(name_a: str, a, name_b: str, b) -> None:
    """Raise `ValueError` unless pytrees `a` and `b` have the same structure and leaf shapes."""
    ta, tb = jax.tree.structure(a), jax.tree.structure(b)
    if ta != tb:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same pytree structure; got\n"
            f"  {name_a}: {ta}\n  {name_b}: {tb}"
        )
    for i, (x, y) in enumerate(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)):
        if np.shape(x) != np.shape(y):
            raise ValueError(
                f"`{name_a}` and `{name_b}` differ in the shape of leaf {i}: "
                f"{np.shape(x)} vs {np.shape(y)}."
            )


def is_array_like(x) -> bool:
    """A JAX or NumPy array or a Python number (what can be a parameter), tracers included."""
    return isinstance(x, jax.Array | np.ndarray | np.generic | bool | int | float | complex)


def is_inexact_array_like(x) -> bool:
    """A floating-point (or complex) `is_array_like` leaf: the parameters of a pytree."""
    return is_array_like(x) and jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def check_float_tree(name: str, tree) -> None:
    """Raise unless `tree` holds at least one floating-point array and no other kind of array.

    Leaves that are not arrays (an Equinox model's activation function, a static flag) are
    ignored: they are configuration, not parameters. `ValueError` for a tree without floating
    arrays, `TypeError` for an integer or boolean array; both name `name`.
    """
    arrays = [leaf for leaf in jax.tree.leaves(tree) if is_array_like(leaf)]
    for leaf in arrays:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"`{name}` must be a pytree of floating-point arrays, got a leaf of dtype {dtype}."
            )
    if not arrays:
        raise ValueError(f"`{name}` must contain at least one floating-point array.")
