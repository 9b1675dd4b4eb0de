"""Iterative inverse solvers over pytrees with exact matvec counts.

Every solver here starts from zero and spends exactly one operator application (matvec) per
iteration, so `K` iterations cost exactly `K` matvecs. They return the solution together with a
`SolveInfo` of diagnostics: iterations run, matvecs spent and the norm of the recursive residual
`b - (A + damping I) x` (updated by the recursion, not recomputed, so it costs no extra matvec).
All of them are jittable and vmappable.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optax.tree as otu
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._custom_types import Operator, ScalarLike, Vector
from ._errors import check_positive, check_positive_int


class SolveInfo(NamedTuple):
    """Diagnostics of an iterative solve."""

    iterations: Int[Array, ""]  # int32 scalar: iterations actually run
    matvecs: Int[Array, ""]  # int32 scalar: operator applications spent (== iterations here)
    residual_norm: Float[Array, ""]  # ||b - (A + damping I) x||, from the recursion
    converged: Bool[Array, ""]  # residual_norm <= tol * ||b|| (always False when tol == 0)
    indefinite: Bool[Array, ""]  # CG met a direction with p^T A p <= 0 (not positive definite)


def as_matvec(operator: Operator, damping: ScalarLike = 0.0) -> Callable[[Any], Any]:
    """Turn a lineax operator or a matvec function into `v -> (A + damping I) v`."""
    if isinstance(operator, lx.AbstractLinearOperator):
        mv = operator.mv
    elif callable(operator):
        mv = operator
    else:
        raise TypeError(
            "`operator` must be a lineax.AbstractLinearOperator or a callable v -> A v, "
            f"got {type(operator).__name__}."
        )
    if isinstance(damping, int | float) and damping == 0:
        return mv
    return lambda v: otu.add_scale(mv(v), damping, v)


def _norm(tree) -> Float[Array, ""]:
    return otu.norm(tree)


def conjugate_gradient(
    operator: Operator,
    b: Vector,
    *,
    max_iterations: int,
    tol: ScalarLike = 0.0,
    damping: ScalarLike = 0.0,
    throw: bool = True,
) -> tuple[Vector, SolveInfo]:
    """Conjugate gradient for `(A + damping I) x = b` with `A` symmetric positive (semi-)definite.

    Starts from `x = 0` (so on a singular PSD system it converges to the minimum-norm solution
    when `b` lies in the range of `A`) and spends exactly one matvec per iteration. It stops after
    `max_iterations`, when `||r|| <= tol ||b||`, or when the residual is exactly zero.

    Args:
        operator: a lineax operator or a function `v -> A v` over pytrees.
        b: right-hand side, a pytree.
        max_iterations: the iteration (and matvec) budget, >= 1. With `tol=0` exactly this many
            iterations run unless CG converges exactly.
        tol: relative residual tolerance; 0 runs the full budget.
        damping: added to the diagonal.
        throw: raise (inside jit, via `eqx.error_if`) when a direction of non-positive curvature is
            met, i.e. the system is not positive definite. With `throw=False` the solve stops there
            and `info.indefinite` is set.

    Returns:
        `(x, info)`.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.core import conjugate_gradient
        >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
        >>> x, info = conjugate_gradient(lambda v: A @ v, jnp.array([1.0, 2.0]), max_iterations=2)
        >>> bool(jnp.allclose(A @ x, jnp.array([1.0, 2.0]), atol=1e-5)), int(info.matvecs)
        (True, 2)
    """
    check_positive_int("max_iterations", max_iterations)
    check_positive("tol", tol, allow_zero=True)
    check_positive("damping", damping, allow_zero=True)
    matvec = as_matvec(operator, damping)
    b_norm = _norm(b)
    threshold = tol * b_norm
    zero = otu.zeros_like(b)
    r0 = b
    rr0 = otu.vdot(r0, r0)

    def cond(carry):
        _, _, _, rr, k, indefinite = carry
        return (k < max_iterations) & (jnp.sqrt(rr) > threshold) & (rr > 0) & ~indefinite

    def body(carry):
        x, r, p, rr, k, _ = carry
        ap = matvec(p)
        pap = otu.vdot(p, ap)
        indefinite = pap <= 0
        alpha = jnp.where(indefinite, 0.0, rr / jnp.where(indefinite, 1.0, pap))
        x = otu.add_scale(x, alpha, p)
        r = otu.add_scale(r, -alpha, ap)
        rr_new = otu.vdot(r, r)
        beta = rr_new / rr
        p = otu.add_scale(r, beta, p)
        return x, r, p, rr_new, k + 1, indefinite

    init = (zero, r0, r0, rr0, jnp.asarray(0, jnp.int32), jnp.asarray(False))
    x, _, _, rr, k, indefinite = jax.lax.while_loop(cond, body, init)
    residual_norm = jnp.sqrt(rr)
    if throw:
        x = eqx.error_if(
            x,
            indefinite,
            "conjugate_gradient: the operator is not positive definite (p^T A p <= 0 was met); "
            "add damping or use a solver for indefinite systems.",
        )
    info = SolveInfo(
        iterations=k,
        matvecs=k,
        residual_norm=residual_norm,
        converged=residual_norm <= threshold,
        indefinite=indefinite,
    )
    return x, info


def neumann_series(
    operator: Operator,
    b: Vector,
    *,
    num_iterations: int,
    alpha: ScalarLike,
    damping: ScalarLike = 0.0,
) -> tuple[Vector, SolveInfo]:
    """Truncated Neumann series `x_K = alpha * sum_{j<K} (I - alpha A)^j b` for `A x = b`.

    This is Richardson iteration `x <- x + alpha r`, `r <- r - alpha A r` from `x = 0`: exactly
    `num_iterations` matvecs, and the recursive residual `r_K = (I - alpha A)^K b`. It converges
    when `0 < alpha < 2 / lambda_max(A + damping I)` and `A` is positive definite.

    Args:
        operator: a lineax operator or a function `v -> A v` over pytrees.
        b: right-hand side.
        num_iterations: K >= 1, the number of series terms and of matvecs.
        alpha: the step size (> 0).
        damping: added to the diagonal of A.

    Returns:
        `(x, info)`.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.core import neumann_series
        >>> x, info = neumann_series(lambda v: 2.0 * v, jnp.ones(3), num_iterations=1, alpha=0.5)
        >>> x, int(info.matvecs)
        (Array([0.5, 0.5, 0.5], dtype=float32), 1)
    """
    check_positive_int("num_iterations", num_iterations)
    check_positive("alpha", alpha)
    check_positive("damping", damping, allow_zero=True)
    matvec = as_matvec(operator, damping)

    def step(carry, _):
        x, r = carry
        x = otu.add_scale(x, alpha, r)
        r = otu.add_scale(r, -alpha, matvec(r))
        return (x, r), None

    (x, r), _ = jax.lax.scan(step, (otu.zeros_like(b), b), None, length=num_iterations)
    k = jnp.asarray(num_iterations, jnp.int32)
    info = SolveInfo(k, k, _norm(r), jnp.asarray(False), jnp.asarray(False))
    return x, info


def lissa(
    hvp: Callable[[Any, Vector], Vector],
    b: Vector,
    sample_batch: Callable[[PRNGKeyArray], Any],
    key: PRNGKeyArray,
    *,
    num_iterations: int,
    scale: ScalarLike,
    damping: ScalarLike = 0.0,
) -> tuple[Vector, SolveInfo]:
    """LiSSA: a stochastic Neumann series for `(H + damping I)^{-1} b` over minibatch HVPs.

    Recursion (Agarwal et al. 2017; Koh & Liang 2017), with a fresh minibatch `B_j` each step:
    `v_0 = b`, `v_j = b + v_{j-1} - (H_{B_j} v_{j-1} + damping v_{j-1}) / scale`, and the estimate
    `v_K / scale`. In expectation it is the Neumann series of `(H + damping I) / scale`, so `scale`
    must exceed the largest eigenvalue of `H + damping I`. `damping` here means exactly the
    Tikhonov damping of the system solved (some implementations scale it by `scale`).

    Args:
        hvp: `hvp(batch, v) -> H_batch v`, a minibatch Hessian (or GGN) vector product.
        b: right-hand side.
        sample_batch: `sample_batch(key) -> batch`, drawing one minibatch.
        key: PRNG key; step `j` uses `fold_in(key, j)`.
        num_iterations: K >= 1 recursion steps (= minibatch HVPs).
        scale: > 0, the step is `1 / scale`.
        damping: >= 0.

    Returns:
        `(x, info)`; `info.residual_norm` is the norm of the last update `v_K - v_{K-1}` over
        `scale`, a cheap convergence signal (LiSSA has no exact residual without a full-batch HVP).
    """
    check_positive_int("num_iterations", num_iterations)
    check_positive("scale", scale)
    check_positive("damping", damping, allow_zero=True)

    def step(carry, j):
        v, _ = carry
        batch = sample_batch(jax.random.fold_in(key, j))
        hv = otu.add_scale(hvp(batch, v), damping, v)
        new_v = otu.add(b, otu.add_scale(v, -1.0 / scale, hv))
        return (new_v, _norm(otu.sub(new_v, v))), None

    init = (b, jnp.zeros((), _norm(b).dtype))
    (v, last_change), _ = jax.lax.scan(step, init, jnp.arange(num_iterations))
    k = jnp.asarray(num_iterations, jnp.int32)
    info = SolveInfo(k, k, last_change / scale, jnp.asarray(False), jnp.asarray(False))
    return otu.scale(1.0 / scale, v), info
