"""Linear-solve specifications for the implicit function theorem (IFT).

A solve spec is a small `eqx.Module` holding the solver's settings. Calling it as
`spec(matvec, b)` solves `A x = b` for the linear map `matvec: v -> A v` over pytrees and returns
`(x, matvecs, residual_norm)`. The same spec works inside `hypergradient` (reverse mode, explicit
adjoint solve) and inside `implicit_root` (as the `solve` of `jax.lax.custom_linear_solve`, so it
is also used, transposed, by reverse mode through a custom JVP).

Approximate solves are exactly what they claim to be: `Neumann(K, alpha)` and `CG(K)` (with
`tol=0`) spend exactly `K` matvecs (the iterative solvers of `respax.core`).
"""

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optax.tree as otu
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int

from respax.core import (
    check_positive,
    check_positive_int,
    conjugate_gradient,
    neumann_series,
)

SolveOutput = tuple[Any, Int[Array, ""], Float[Array, ""]]


def _int32(n) -> Int[Array, ""]:
    return jnp.asarray(n, jnp.int32)


def _damped(matvec: Callable, damping) -> Callable:
    if isinstance(damping, int | float) and damping == 0:
        return matvec
    return lambda v: otu.add_scale(matvec(v), damping, v)


def _true_residual_norm(matvec: Callable, x, b) -> Float[Array, ""]:
    return otu.norm(otu.sub(b, matvec(x)))


class AbstractLinearSolve(eqx.Module):
    """Base class: `spec(matvec, b) -> (x, matvecs, residual_norm)` solving `A x = b`."""

    def __call__(self, matvec: Callable, b: Any) -> SolveOutput:
        raise NotImplementedError

    def solution(self, matvec: Callable, b: Any) -> Any:
        """Only the solution `x` (the form `jax.lax.custom_linear_solve` expects)."""
        return self(matvec, b)[0]


class Neumann(AbstractLinearSolve):
    """Truncated Neumann series `x_K = alpha * sum_{j<K} (I - alpha A)^j b`, exactly `K` matvecs.

    It converges for positive definite `A` when `0 < alpha < 2 / lambda_max`; `alpha = 1/L` with
    `L >= lambda_max` is the usual choice. The residual reported is the recursive
    `||(I - alpha A)^K b||`.

    Args:
        num_iterations: K >= 1.
        alpha: step size > 0.
        damping: added to the diagonal of `A` (>= 0).

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.implicit_diff import Neumann
        >>> x, matvecs, _ = Neumann(2, 0.5)(lambda v: v, jnp.ones(2))  # 0.5 * (1 + 0.5)
        >>> x, int(matvecs)
        (Array([0.75, 0.75], dtype=float32), 2)
    """

    num_iterations: int = eqx.field(static=True)
    alpha: Any
    damping: Any = 0.0

    def __check_init__(self):
        check_positive_int("num_iterations", self.num_iterations)
        check_positive("alpha", self.alpha)
        check_positive("damping", self.damping, allow_zero=True)

    def __call__(self, matvec: Callable, b: Any) -> SolveOutput:
        x, info = neumann_series(
            matvec, b, num_iterations=self.num_iterations, alpha=self.alpha, damping=self.damping
        )
        return x, info.matvecs, info.residual_norm


class CG(AbstractLinearSolve):
    """Conjugate gradient from zero, for symmetric positive (semi-)definite `A`.

    With `tol=0` it runs exactly `max_iterations` matvecs (unless the residual is exactly zero);
    with `tol>0` it stops when `||r|| <= tol ||b||`. Started from zero on a singular PSD system with
    `b` in the range of `A`, its iterates stay in that range, so it converges to the minimum-norm
    solution (the pseudo-inverse solution) -- the min-norm option for overparameterized inner
    problems. A non-PSD system raises (via `eqx.error_if`) when `throw=True`.

    Args:
        max_iterations: the matvec budget (>= 1).
        tol: relative residual tolerance (0 runs the whole budget).
        damping: added to the diagonal (>= 0).
        throw: raise on a direction of non-positive curvature.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.implicit_diff import CG
        >>> A = jnp.array([[2.0, 0.0], [0.0, 4.0]])
        >>> x, matvecs, _ = CG(2)(lambda v: A @ v, jnp.array([2.0, 4.0]))
        >>> x.round(4), int(matvecs)
        (Array([1., 1.], dtype=float32), 2)
    """

    max_iterations: int = eqx.field(static=True)
    tol: Any = 0.0
    damping: Any = 0.0
    throw: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        check_positive_int("max_iterations", self.max_iterations)
        check_positive("tol", self.tol, allow_zero=True)
        check_positive("damping", self.damping, allow_zero=True)

    def __call__(self, matvec: Callable, b: Any) -> SolveOutput:
        x, info = conjugate_gradient(
            matvec,
            b,
            max_iterations=self.max_iterations,
            tol=self.tol,
            damping=self.damping,
            throw=self.throw,
        )
        return x, info.matvecs, info.residual_norm


class DenseSolve(AbstractLinearSolve):
    """Materialize `A` (one matvec per unknown, vectorized) and solve it exactly.

    For small problems and for oracles. `kind`:
    - `"cholesky"`: symmetric positive definite `A`;
    - `"lu"`: any non-singular `A`;
    - `"pinv"`: the Moore-Penrose pseudo-inverse (minimum-norm least-squares solution; the min-norm
      option for singular inner Hessians). Singular values below `rcond * s_max` are dropped
      (`rcond=None` uses numpy's default, `max(n) * eps`).

    The residual `||b - A x||` is recomputed with one extra matvec (not counted in `matvecs`).

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.implicit_diff import DenseSolve
        >>> A = jnp.array([[1.0, 0.0], [0.0, 0.0]])
        >>> DenseSolve("pinv")(lambda v: A @ v, jnp.array([3.0, 0.0]))[0]
        Array([3., 0.], dtype=float32)
    """

    kind: Literal["cholesky", "lu", "pinv"] = eqx.field(static=True, default="cholesky")
    damping: Any = 0.0
    rcond: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.kind not in ("cholesky", "lu", "pinv"):
            raise ValueError(f"`kind` must be one of 'cholesky', 'lu', 'pinv', got {self.kind!r}.")
        check_positive("damping", self.damping, allow_zero=True)

    def __call__(self, matvec: Callable, b: Any) -> SolveOutput:
        matvec = _damped(matvec, self.damping)
        b_flat, unravel = ravel_pytree(b)
        n = b_flat.shape[0]

        def flat_mv(v):
            return ravel_pytree(matvec(unravel(v)))[0]

        # Column j of A is A e_j; vmap over the identity builds A^T row by row.
        a = jax.vmap(flat_mv)(jnp.eye(n, dtype=b_flat.dtype)).T
        if self.kind == "cholesky":
            factor = jax.scipy.linalg.cho_factor(a, lower=True)
            x_flat = jax.scipy.linalg.cho_solve(factor, b_flat)
        elif self.kind == "lu":
            x_flat = jnp.linalg.solve(a, b_flat)
        else:
            x_flat = jnp.linalg.pinv(a, rtol=self.rcond) @ b_flat
        x = unravel(x_flat)
        return x, _int32(n), _true_residual_norm(matvec, x, b)


class LineaxSolve(AbstractLinearSolve):
    """Any `lineax` solver (`lx.SVD()`, `lx.LSMR(...)`, `lx.GMRES(...)`, `lx.CG(...)`, ...).

    The operator is a `lineax.FunctionLinearOperator` over the pytree with `tags` (by default
    symmetric and positive semidefinite, which holds for inner Hessians at a minimum; pass
    `tags=()` for a general Jacobian). `matvecs` is the solver's `num_steps` statistic when it
    reports one (-1 otherwise). The residual is recomputed with one extra matvec.

    Example:
        >>> import jax.numpy as jnp
        >>> import lineax as lx
        >>> from respax.implicit_diff import LineaxSolve
        >>> LineaxSolve(lx.SVD())(lambda v: 2.0 * v, jnp.ones(2))[0]
        Array([0.5, 0.5], dtype=float32)
    """

    solver: lx.AbstractLinearSolver
    tags: Any = eqx.field(static=True, default=(lx.symmetric_tag, lx.positive_semidefinite_tag))
    throw: bool = eqx.field(static=True, default=True)

    def __call__(self, matvec: Callable, b: Any) -> SolveOutput:
        structure = jax.eval_shape(lambda: b)
        operator = lx.FunctionLinearOperator(matvec, structure, self.tags)
        sol = lx.linear_solve(operator, b, self.solver, throw=self.throw)
        steps = sol.stats.get("num_steps", None)
        matvecs = _int32(-1) if steps is None else jnp.asarray(steps).astype(jnp.int32)
        return sol.value, matvecs, _true_residual_norm(matvec, sol.value, b)


class IdentitySolve(AbstractLinearSolve):
    """`x = scale * b`: the identity approximation `A^{-1} ~ scale * I` (zero matvecs).

    In a hypergradient this is the one-step ("T1-T2", Luketina et al. 2016) approximation. The
    residual is recomputed with one extra matvec.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.implicit_diff import IdentitySolve
        >>> IdentitySolve(0.5)(lambda v: v, jnp.ones(2))[0]
        Array([0.5, 0.5], dtype=float32)
    """

    scale: Any = 1.0

    def __check_init__(self):
        check_positive("scale", self.scale)

    def __call__(self, matvec: Callable, b: Any) -> SolveOutput:
        x = otu.scale(self.scale, b)
        return x, _int32(0), _true_residual_norm(matvec, x, b)


def check_solve(name: str, solve: Any) -> None:
    if not isinstance(solve, AbstractLinearSolve):
        raise TypeError(
            f"`{name}` must be a linear-solve spec (Neumann, CG, DenseSolve, LineaxSolve or "
            f"IdentitySolve), got {type(solve).__name__}."
        )


__all__ = [
    "AbstractLinearSolve",
    "CG",
    "DenseSolve",
    "IdentitySolve",
    "LineaxSolve",
    "Neumann",
    "check_solve",
]
