"""Input checks that raise clear errors naming the argument (outside `jit`, on static values)."""

import jax
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
