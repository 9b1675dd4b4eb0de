"""Finite-difference checks of forward- and reverse-mode derivatives over pytrees."""

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, PyTree

# Default tolerances by the (widest) floating dtype of `x`: central differences in float64
# are good to ~1e-10 relative on smooth functions, in float32 to ~1e-4.
_DEFAULT_RTOL = {8: 1e-6, 4: 1e-2, 2: 1e-1}
_DEFAULT_ATOL = {8: 1e-10, 4: 1e-5, 2: 1e-2}
# Stencils: offsets in units of the step and their weights, for f'(x) ~ sum w f(x + k h) / h.
_STENCILS = {
    2: ((-1.0, -0.5), (1.0, 0.5)),
    4: ((-2.0, 1 / 12), (-1.0, -8 / 12), (1.0, 8 / 12), (2.0, -1 / 12)),
}


class DirectionalDerivativeCheck(NamedTuple):
    """What `check_directional_derivative` compared, as numpy float64 values.

    In "jvp" mode `derivative` and `finite_difference` are pytrees shaped like `f(x)`; in
    "vjp" mode they are the scalars `<J^T u, v>` and `<u, FD(f)(x; v)>`.
    """

    mode: str
    derivative: PyTree[Any]
    finite_difference: PyTree[Any]
    error: float  # largest absolute difference between the two
    tolerance: float  # the error allowed
    step: float  # the finite-difference step along `v`


def _float_leaves_dtype(x: PyTree[Any], argument: str) -> np.dtype:
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError(f"`{argument}` must have at least one array leaf.")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(
                f"`{argument}` must have real floating leaves only; "
                f"got a {jnp.result_type(leaf)} leaf."
            )
    return np.dtype(jnp.result_type(*leaves))


# The bookkeeping below is numpy on host copies: eager JAX would compile every small
# operation afresh for every new leaf shape, which dominates property tests that draw shapes.
def _to_numpy64(tree: PyTree[Any]) -> PyTree[Any]:
    return jax.tree.map(lambda leaf: np.asarray(leaf, dtype=np.float64), tree)


def _inf_norm(tree: PyTree[Any]) -> float:
    return max(
        (float(np.max(np.abs(leaf))) for leaf in jax.tree.leaves(tree) if leaf.size), default=0.0
    )


def _two_norm(tree: PyTree[Any]) -> float:
    return float(np.sqrt(sum(np.sum(np.square(leaf)) for leaf in jax.tree.leaves(tree))))


def _vdot(a: PyTree[Any], b: PyTree[Any]) -> float:
    return float(
        sum(np.vdot(u, w) for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    )


def _finite_difference(
    f: Callable[[Any], Any], x: PyTree[Any], v: PyTree[Any], step: float, order: int
) -> PyTree[Any]:
    """`sum_k w_k f(x + k h v) / h`: the points in `x`'s dtypes, the sum in float64."""
    total = None
    for offset, weight in _STENCILS[order]:
        shifted = jax.tree.map(
            lambda xi, vi: jnp.asarray(xi + xi.dtype.type(offset * step) * vi), x, v
        )
        term = jax.tree.map(lambda y: weight * y, _to_numpy64(f(shifted)))
        total = term if total is None else jax.tree.map(np.add, total, term)
    return jax.tree.map(lambda y: y / step, total)


def check_directional_derivative(
    f: Callable[[Any], Any],
    x: PyTree[Float[ArrayLike, "..."]],
    v: PyTree[Float[ArrayLike, "..."]],
    *,
    mode: Literal["jvp", "vjp", "both"] = "jvp",
    cotangent: PyTree[Any] | None = None,
    seed: int = 0,
    step: float | None = None,
    order: Literal[2, 4] = 2,
    rtol: float | None = None,
    atol: float | None = None,
) -> DirectionalDerivativeCheck:
    """Check JAX's derivative of `f` at `x` along `v` against central finite differences.

    "jvp" mode compares `jax.jvp(f, (x,), (v,))` with the finite difference
    `FD = sum_k w_k f(x + k h v) / h` leaf by leaf. "vjp" mode (for `custom_vjp` functions,
    which have no JVP) compares the scalars `<vjp(u), v>` and `<u, FD>` for a cotangent `u`.
    The check passes when the largest absolute error is at most
    `atol + rtol * scale + noise`, where `scale` is `max|FD|` ("jvp") or `|u| |FD|`
    ("vjp"), and `noise = 10 eps max|f(x)| / h` bounds the rounding error of the finite
    difference itself (times `|u| sqrt(size of f(x))` in "vjp" mode).

    `f` is called eagerly; pass a jitted `f` (`jax.jit`, `equinox.filter_jit`) when checking
    many points, so that each new input shape compiles once.

    Args:
        f: a function from pytrees of float arrays to pytrees of float arrays.
        x: the point, a pytree of float arrays.
        v: the direction, a pytree with the structure and shapes of `x` (cast to its dtypes).
        mode: "jvp" (forward mode), "vjp" (reverse mode) or "both".
        cotangent: for "vjp": the cotangent `u`, shaped like `f(x)`; by default standard
            normal numbers drawn with numpy from `seed`.
        seed: the seed of the default cotangent.
        step: the step `h` along `v`; by default `eps^(1/3)` (order 2) or `eps^(1/5)`
            (order 4) of `x`'s dtype, times `max(1, max|x|) / max|v|`.
        order: the accuracy order of the stencil, 2 (`(f(x+hv) - f(x-hv)) / 2h`) or 4.
        rtol: relative tolerance; default 1e-6 for float64 `x`, 1e-2 for float32.
        atol: absolute tolerance; default 1e-10 for float64 `x`, 1e-5 for float32.

    Returns:
        The last `DirectionalDerivativeCheck` made (the "vjp" one in "both" mode).

    Raises:
        AssertionError: when the derivative and the finite difference disagree.

    Example:
        >>> f = lambda x: {"y": jnp.sin(x["a"]) * x["b"]}
        >>> x = {"a": jnp.array([0.1, 0.2]), "b": jnp.array(3.0)}
        >>> v = {"a": jnp.array([1.0, -1.0]), "b": jnp.array(0.5)}
        >>> check_directional_derivative(f, x, v).error < 1e-3
        True
    """
    if mode not in ("jvp", "vjp", "both"):
        raise ValueError(f'`mode` must be "jvp", "vjp" or "both"; got {mode!r}.')
    if order not in _STENCILS:
        raise ValueError(f"`order` must be 2 or 4; got {order!r}.")
    dtype = _float_leaves_dtype(x, "x")
    _float_leaves_dtype(v, "v")
    if jax.tree.structure(x) != jax.tree.structure(v):
        raise ValueError(
            f"`v` must have the structure of `x`; got {jax.tree.structure(v)} "
            f"and {jax.tree.structure(x)}."
        )
    for leaf_x, leaf_v in zip(jax.tree.leaves(x), jax.tree.leaves(v), strict=True):
        if jnp.shape(leaf_x) != jnp.shape(leaf_v):
            raise ValueError(
                f"`v` must have the leaf shapes of `x`; got {jnp.shape(leaf_v)} for a leaf of "
                f"shape {jnp.shape(leaf_x)}."
            )
    # Host copies in JAX's dtypes (python floats become float32 unless x64 is on).
    x_host = jax.tree.map(lambda leaf: np.asarray(jnp.asarray(leaf)), x)
    v_host = jax.tree.map(lambda leaf, xi: np.asarray(leaf).astype(xi.dtype), v, x_host)
    x = jax.tree.map(jnp.asarray, x_host)
    v = jax.tree.map(jnp.asarray, v_host)

    eps = float(jnp.finfo(dtype).eps)
    width = min(dtype.itemsize, 8)
    rtol = _DEFAULT_RTOL[width] if rtol is None else rtol
    atol = _DEFAULT_ATOL[width] if atol is None else atol
    if step is None:
        v_norm = _inf_norm(v_host)
        scale = max(1.0, _inf_norm(x_host)) / (v_norm if v_norm > 0 else 1.0)
        step = eps ** (1 / (order + 1)) * scale
    if not step > 0:
        raise ValueError(f"`step` must be > 0; got {step}.")

    y = f(x)
    finite_difference = _finite_difference(f, x_host, v_host, step, order)
    noise = 10 * eps * _inf_norm(_to_numpy64(y)) / step

    checks = []
    if mode in ("jvp", "both"):
        derivative = _to_numpy64(jax.jvp(f, (x,), (v,))[1])
        error = _inf_norm(jax.tree.map(np.subtract, derivative, finite_difference))
        tolerance = atol + rtol * _inf_norm(finite_difference) + noise
        checks.append(
            DirectionalDerivativeCheck("jvp", derivative, finite_difference, error, tolerance, step)
        )
    if mode in ("vjp", "both"):
        if cotangent is None:
            rng = np.random.default_rng(seed)
            cotangent = jax.tree.map(
                lambda leaf: jnp.asarray(rng.standard_normal(jnp.shape(leaf)).astype(leaf.dtype)), y
            )
        (pullback,) = jax.vjp(f, x)[1](cotangent)
        derivative = _vdot(_to_numpy64(pullback), _to_numpy64(v))
        estimate = _vdot(_to_numpy64(cotangent), finite_difference)
        # Cauchy-Schwarz: |<u, J v>| <= |u| |J v|, so errors are measured against that scale.
        cotangent_norm = _two_norm(_to_numpy64(cotangent))
        size = max(sum(np.size(leaf) for leaf in jax.tree.leaves(y)), 1)
        tolerance = atol + cotangent_norm * (
            rtol * _two_norm(finite_difference) + noise * np.sqrt(size)
        )
        error = abs(derivative - estimate)
        checks.append(
            DirectionalDerivativeCheck("vjp", derivative, estimate, error, tolerance, step)
        )

    for check in checks:
        if not check.error <= check.tolerance:
            raise AssertionError(
                f"{check.mode} of `f` disagrees with central finite differences along `v`: "
                f"max abs error {check.error:.3e} > tolerance {check.tolerance:.3e} "
                f"(step {step:.3e}, order {order}, rtol {rtol}, atol {atol}).\n"
                f"derivative: {check.derivative}\nfinite difference: {check.finite_difference}"
            )
    return checks[-1]
