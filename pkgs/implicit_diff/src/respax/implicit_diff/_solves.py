"""The linear solves of implicit differentiation, through lineax's solver protocol.

Every IFT solve in this package is `respax.core.linear_solve_with_info` on a matrix-free lineax
operator: any `lineax.AbstractLinearSolver` works (`respax.core.CG` / `Neumann` with exact matvec
counts, `lineax.Cholesky()`, `lineax.LU()`, `lineax.SVD()` for the minimum-norm solve, ...), and
each returns a `respax.core.SolveInfo`.
"""

from collections.abc import Callable
from typing import Any

import jax
import lineax as lx

from respax.core import SolveInfo, linear_solve_with_info


def check_linear_solver(name: str, solver: Any) -> None:
    if not isinstance(solver, lx.AbstractLinearSolver):
        raise TypeError(
            f"`{name}` must be a lineax.AbstractLinearSolver (respax.core.CG(max_steps=...), "
            "respax.core.Neumann(max_steps=..., step_size=...), lineax.Cholesky(), lineax.LU(), "
            f"lineax.SVD(), ...), got {type(solver).__name__}."
        )


def matrix_free_operator(
    matvec: Callable[[Any], Any], like: Any, *, symmetric: bool, psd: bool
) -> lx.FunctionLinearOperator:
    """`matvec` as a lineax operator over pytrees shaped like `like`, with the given tags."""
    tags = []
    if symmetric:
        tags.append(lx.symmetric_tag)
    if psd:
        tags.append(lx.positive_semidefinite_tag)
    return lx.FunctionLinearOperator(matvec, jax.eval_shape(lambda: like), frozenset(tags))


def solve(
    matvec: Callable[[Any], Any],
    b: Any,
    linear_solver: lx.AbstractLinearSolver,
    *,
    symmetric: bool,
    psd: bool = False,
    throw: bool = True,
) -> tuple[Any, SolveInfo]:
    """Solve `A x = b` for the linear map `matvec` with any lineax solver."""
    operator = matrix_free_operator(matvec, b, symmetric=symmetric, psd=psd)
    return linear_solve_with_info(operator, b, linear_solver, throw=throw)
