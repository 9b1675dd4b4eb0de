"""Fixed-budget iterative solvers as lineax solvers, LiSSA, and one `SolveInfo` for every solve.

`CG` and `Neumann` are `lineax.AbstractLinearSolver`s: pass them to `lineax.linear_solve` (or to
any respax function that takes a `linear_solver`) exactly like `lx.Cholesky()` or `lx.SVD()`.
Unlike lineax's own iterative solvers they start from zero and spend exactly one operator
application (matvec) per iteration, so `max_steps=K` with no tolerance costs exactly `K` matvecs;
their `stats` hold `num_steps`, `matvecs` and `residual_norm`.

`SolveInfo.from_solution` turns any `lineax.Solution` into the one diagnostics record the respax
packages report, with a `RESULTS` enumeration that extends lineax's (`indefinite`, `diverged`).
LiSSA is stochastic over minibatches, which `AbstractLinearSolver.compute` has no place for, so it
is the function `lissa`, returning the same `SolveInfo`.
"""

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optax.tree as otu
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ._custom_types import Vector
from ._errors import check_positive, check_positive_int

__all__ = [
    "CG",
    "RESULTS",
    "Neumann",
    "SolveInfo",
    "as_operator",
    "damped",
    "default_rtol",
    "linear_solve_with_info",
    "lissa",
]


class RESULTS(lx.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """lineax's results, plus the failures of respax's solvers (`SolveInfo.result`)."""

    indefinite = (
        "The operator is not positive definite: conjugate gradient met a direction with "
        "p^T A p <= 0 before the residual was small (A is indefinite, or singular with the "
        "right-hand side outside its range). Add damping, or use lineax.SVD (min-norm least "
        "squares) or lineax.LU."
    )
    not_a_solution = (
        "The point is not a solution: its optimality residual (an inner gradient, a root "
        "residual) is above the tolerance given, so the implicit function theorem does not apply "
        "there. Run the inner solver longer, or raise the tolerance."
    )
    diverged = (
        "The iteration diverged: the residual grew above ||b|| (the solution is worse than 0). "
        "For a Neumann series the step size must satisfy 0 < step_size < 2 / lambda_max(A) on a "
        "positive definite A."
    )


def default_rtol(dtype) -> float:
    """The default relative tolerance of respax's solvers: `sqrt(eps)` of `dtype`.

    About 3.5e-4 in float32 and 1.5e-8 in float64: tight enough to be a solve, loose enough that
    a recursively updated residual is still close to the true one.
    """
    return float(jnp.finfo(dtype).eps) ** 0.5


def as_operator(
    operator: lx.AbstractLinearOperator | Callable[[Any], Any],
    like: PyTree | None = None,
    *,
    tags: object = lx.symmetric_tag,
) -> lx.AbstractLinearOperator:
    """A lineax operator from a lineax operator (returned as is) or a matvec `v -> A v`.

    Args:
        operator: a `lineax.AbstractLinearOperator`, or a function over pytrees.
        like: a pytree with the vectors' structure; required for a function.
        tags: lineax tags for a function (symmetric by default: curvature matrices are).

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.core import as_operator
        >>> as_operator(lambda v: 2.0 * v, jnp.ones(2)).mv(jnp.ones(2))
        Array([2., 2.], dtype=float32)
    """
    if isinstance(operator, lx.AbstractLinearOperator):
        return operator
    if not callable(operator):
        raise TypeError(
            "`operator` must be a lineax.AbstractLinearOperator or a callable v -> A v, "
            f"got {type(operator).__name__}."
        )
    if like is None:
        raise ValueError(
            "`like` (a pytree with the vectors' structure) is required when `operator` is a "
            "plain matvec function."
        )
    return lx.FunctionLinearOperator(operator, jax.eval_shape(lambda: like), tags)


def damped(operator: lx.AbstractLinearOperator, damping) -> lx.AbstractLinearOperator:
    """`operator + damping * I` (the operator itself when `damping` is a Python 0).

    Example:
        >>> import jax.numpy as jnp
        >>> import lineax as lx
        >>> from respax.core import damped
        >>> damped(lx.MatrixLinearOperator(jnp.eye(2)), 0.5).mv(jnp.ones(2))
        Array([1.5, 1.5], dtype=float32)
    """
    check_positive("damping", damping, allow_zero=True)
    if isinstance(damping, int | float) and damping == 0:
        return operator
    identity = lx.IdentityLinearOperator(operator.in_structure(), operator.out_structure())
    return operator + damping * identity


def _check_square(operator, solver: str) -> None:
    if not isinstance(operator, lx.AbstractLinearOperator):
        raise TypeError(
            f"`operator` must be a lineax.AbstractLinearOperator, got {type(operator)}."
        )
    if eqx.tree_equal(operator.in_structure(), operator.out_structure()) is not True:
        raise ValueError(
            f"respax.core.{solver} needs a square operator (the same in and out structure)."
        )


def _int32(n) -> Int[Array, ""]:
    return jnp.asarray(n, jnp.int32)


def _dtype_of(vector) -> Any:
    leaves = jax.tree.leaves(vector)
    return jnp.result_type(*leaves) if leaves else jnp.float32


class CG(lx.AbstractLinearSolver):
    """Conjugate gradient from zero for symmetric positive (semi-)definite operators.

    Spends exactly one matvec per iteration (plus one with `true_residual=True`) and stops after
    `max_steps`, when `||r|| <= max(atol, rtol * ||b||)`, or at a direction of zero curvature.
    Started from zero on a singular PSD system whose right-hand side lies in the range, the
    iterates stay in the range: it converges to the minimum-norm solution. A direction of zero
    curvature (relative to the operator's scale) on such a system means the solve has converged
    and counts as success; a direction of negative curvature, or of zero curvature while the
    residual is still large, is `RESULTS.indefinite` (reported to lineax as `breakdown`).

    With `rtol=0` and `atol=0` it is a fixed-budget solve: exactly `max_steps` matvecs unless the
    residual becomes zero, and `result` is successful unless something broke down.

    Preconditioning: `options={"preconditioner": P}` in `lineax.linear_solve`, with `P` a positive
    definite lineax operator approximating `A^{-1}` (left-preconditioned CG, one `P` application
    per iteration).

    Args:
        max_steps: the iteration budget (>= 1).
        rtol: relative tolerance on `||b - A x|| / ||b||`; None is `default_rtol(dtype)` (sqrt of
            the machine epsilon of `b`).
        atol: absolute tolerance on `||b - A x||`.
        true_residual: recompute `||b - A x||` with one final matvec, so that `residual_norm` and
            the convergence decision use the true residual rather than the recursively updated
            one (which drifts below the truth in float32 on ill-conditioned systems).

    Example:
        >>> import jax.numpy as jnp
        >>> import lineax as lx
        >>> from respax.core import CG
        >>> A = lx.MatrixLinearOperator(jnp.array([[4.0, 1.0], [1.0, 3.0]]), lx.symmetric_tag)
        >>> sol = lx.linear_solve(A, jnp.array([1.0, 2.0]), CG(max_steps=2))
        >>> sol.value.round(4), int(sol.stats["matvecs"])
        (Array([0.0909, 0.6364], dtype=float32), 2)
    """

    max_steps: int = eqx.field(static=True)
    rtol: float | None = eqx.field(static=True, default=None)
    atol: float = eqx.field(static=True, default=0.0)
    true_residual: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_positive_int("max_steps", self.max_steps)
        if self.rtol is not None:
            check_positive("rtol", self.rtol, allow_zero=True)
        check_positive("atol", self.atol, allow_zero=True)

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        _check_square(operator, "CG")
        if not (lx.is_symmetric(operator) or lx.is_positive_semidefinite(operator)):
            raise ValueError(
                "respax.core.CG needs a symmetric operator: tag it (e.g. "
                "`lineax.FunctionLinearOperator(mv, structure, lineax.symmetric_tag)`), or use "
                "lineax.GMRES / lineax.LU for a general one."
            )
        return operator

    def compute(self, state, vector, options):
        operator = state
        preconditioner = options.get("preconditioner", None)
        precondition = (lambda r: r) if preconditioner is None else preconditioner.mv
        dtype = _dtype_of(vector)
        eps = jnp.finfo(dtype).eps
        rtol = default_rtol(dtype) if self.rtol is None else self.rtol
        fixed_budget = rtol == 0 and self.atol == 0
        b_norm = otu.norm(vector)
        threshold = jnp.maximum(self.atol, rtol * b_norm)
        # Below this residual a zero-curvature direction is a converged solve, not a failure.
        floor = jnp.maximum(threshold, jnp.sqrt(eps) * b_norm)

        z0 = precondition(vector)
        init = dict(
            x=otu.zeros_like(vector),
            r=vector,
            p=z0,
            rz=otu.vdot(vector, z0),
            rr=otu.vdot(vector, vector),
            k=_int32(0),
            scale=jnp.zeros((), dtype),
            stop=jnp.asarray(False),
            indefinite=jnp.asarray(False),
        )

        def cond(c):
            return (
                (c["k"] < self.max_steps)
                & (c["rr"] > 0)
                & ~c["stop"]
                & (fixed_budget | (jnp.sqrt(c["rr"]) > threshold))
            )

        def body(c):
            ap = operator.mv(c["p"])
            pap = otu.vdot(c["p"], ap)
            pp = otu.vdot(c["p"], c["p"])
            scale = jnp.maximum(c["scale"], jnp.abs(pap) / jnp.where(pp > 0, pp, 1.0))
            zero_curvature = pap <= 100 * eps * scale * pp
            indefinite = pap < -jnp.sqrt(eps) * scale * pp
            alpha = jnp.where(zero_curvature, 0.0, c["rz"] / jnp.where(zero_curvature, 1.0, pap))
            x = otu.add_scale(c["x"], alpha, c["p"])
            r = otu.add_scale(c["r"], -alpha, ap)
            z = precondition(r)
            rz = otu.vdot(r, z)
            beta = rz / jnp.where(c["rz"] != 0, c["rz"], 1.0)
            p = otu.add_scale(z, beta, c["p"])
            return dict(
                x=x,
                r=r,
                p=p,
                rz=rz,
                rr=otu.vdot(r, r),
                k=c["k"] + 1,
                scale=scale,
                stop=zero_curvature,
                indefinite=indefinite,
            )

        out = jax.lax.while_loop(cond, body, init)
        x = out["x"]
        matvecs = out["k"]
        if self.true_residual:
            residual_norm = otu.norm(otu.sub(vector, operator.mv(x)))
            matvecs = matvecs + 1
        else:
            residual_norm = jnp.sqrt(out["rr"])
        # p^T A p <= 0 before the residual is small: A is indefinite, or singular with b
        # outside its range. Either way it is not the positive definite system CG solves.
        breakdown = out["indefinite"] | (out["stop"] & (residual_norm > floor))
        unconverged = jnp.asarray(not fixed_budget) & (residual_norm > threshold)
        result = lx.RESULTS.where(
            breakdown,
            lx.RESULTS.breakdown,
            lx.RESULTS.where(unconverged, lx.RESULTS.max_steps_reached, lx.RESULTS.successful),
        )
        stats = dict(
            num_steps=out["k"],
            matvecs=matvecs,
            residual_norm=residual_norm,
            true_residual=self.true_residual,
            indefinite=breakdown,
        )
        return x, result, stats

    def transpose(self, state, options):
        transpose_options = {}
        if "preconditioner" in options:
            transpose_options["preconditioner"] = options["preconditioner"].transpose()
        return state.transpose(), transpose_options

    def conj(self, state, options):
        conj_options = {}
        if "preconditioner" in options:
            conj_options["preconditioner"] = lx.conj(options["preconditioner"])
        return lx.conj(state), conj_options

    def assume_full_rank(self):
        # CG is the min-norm solver for singular PSD systems: lineax must not assume full rank
        # when it differentiates the solve.
        return False


class Neumann(lx.AbstractLinearSolver):
    """Truncated Neumann series `x_K = a sum_{j<K} (I - a A)^j b`: exactly `K` matvecs.

    This is Richardson iteration `x <- x + a r`, `r <- r - a A r` from `x = 0`, with the exact
    residual `r_K = (I - a A)^K b` carried along at no cost. It converges when
    `0 < a < 2 / lambda_max(A)` and `A` is positive definite; a final residual above `||b||` (the
    series has made things worse than `x = 0`) is `RESULTS.diverged`, reported to lineax as
    `breakdown` (so `throw=True` raises).

    Args:
        max_steps: K >= 1, the number of series terms and of matvecs.
        step_size: a > 0.

    Example:
        >>> import jax.numpy as jnp
        >>> import lineax as lx
        >>> from respax.core import Neumann
        >>> A = lx.MatrixLinearOperator(2.0 * jnp.eye(3))
        >>> sol = lx.linear_solve(A, jnp.ones(3), Neumann(max_steps=1, step_size=0.5))
        >>> sol.value, int(sol.stats["matvecs"])
        (Array([0.5, 0.5, 0.5], dtype=float32), 1)
    """

    max_steps: int = eqx.field(static=True)
    step_size: float | Float[Array, ""]

    def __check_init__(self):
        check_positive_int("max_steps", self.max_steps)
        check_positive("step_size", self.step_size)

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        _check_square(operator, "Neumann")
        return operator

    def compute(self, state, vector, options):
        del options
        operator = state
        a = self.step_size

        def step(carry, _):
            x, r = carry
            x = otu.add_scale(x, a, r)
            r = otu.add_scale(r, -a, operator.mv(r))
            return (x, r), None

        (x, r), _ = jax.lax.scan(step, (otu.zeros_like(vector), vector), None, self.max_steps)
        residual_norm = otu.norm(r)
        diverged = ~(residual_norm <= otu.norm(vector))
        result = lx.RESULTS.where(diverged, lx.RESULTS.breakdown, lx.RESULTS.successful)
        k = _int32(self.max_steps)
        stats = dict(num_steps=k, matvecs=k, residual_norm=residual_norm, diverged=diverged)
        return x, result, stats

    def transpose(self, state, options):
        return state.transpose(), options

    def conj(self, state, options):
        return lx.conj(state), options

    def assume_full_rank(self):
        return False


ResidualKind = Literal["recursive", "true", "update", "unknown"]


class SolveInfo(eqx.Module):
    """Diagnostics of a linear solve, the same for every solver.

    Attributes:
        result: a `RESULTS` item (`RESULTS.successful`, `max_steps_reached`, `indefinite`,
            `diverged`, lineax's `singular`, ...); `RESULTS[info.result]` is its message.
        num_steps: iterations run (0 for a direct solve).
        matvecs: operator applications spent; -1 when the solver does not count them.
        residual_norm: `||b - A x||` of the kind `residual` names.
        relative_residual: `residual_norm / ||b||` (0 when `b = 0`). Above 1 the solve made
            things worse than `x = 0`.
        residual: which residual is held: "true" (recomputed), "recursive" (updated by the
            recursion: exact in exact arithmetic, drifts in floating point), "update" (LiSSA:
            the norm of the last update over its scale, a convergence signal only) or "unknown"
            (no residual: `residual_norm` is NaN).
    """

    result: RESULTS
    num_steps: Int[Array, ""]
    matvecs: Int[Array, ""]
    residual_norm: Float[Array, ""]
    relative_residual: Float[Array, ""]
    residual: ResidualKind = eqx.field(static=True, default="recursive")

    @property
    def converged(self):
        """True where `result` is `RESULTS.successful`."""
        return self.result == RESULTS.successful

    @classmethod
    def from_solution(
        cls,
        solution: lx.Solution,
        operator: lx.AbstractLinearOperator | None = None,
        vector: Vector | None = None,
    ) -> "SolveInfo":
        """The `SolveInfo` of a `lineax.linear_solve` with any solver.

        Uses the solver's `residual_norm` statistic when it has one (respax's `CG` and
        `Neumann`); otherwise, given `operator` and `vector` (the right-hand side), recomputes
        the true residual with one matvec, and reports "unknown" without them.

        Example:
            >>> import jax.numpy as jnp
            >>> import lineax as lx
            >>> from respax.core import SolveInfo
            >>> A = lx.MatrixLinearOperator(jnp.eye(2))
            >>> b = jnp.ones(2)
            >>> info = SolveInfo.from_solution(lx.linear_solve(A, b, lx.LU()), A, b)
            >>> bool(info.converged), info.residual
            (True, 'true')
        """
        stats = solution.stats
        result = RESULTS.promote(solution.result)
        num_steps = _int32(stats.get("num_steps", 0))
        matvecs = _int32(stats.get("matvecs", -1))
        dtype = _dtype_of(solution.value)
        if "residual_norm" in stats:
            residual_norm = stats["residual_norm"]
            kind = "true" if stats.get("true_residual", False) else "recursive"
        elif operator is not None and vector is not None:
            residual_norm = otu.norm(otu.sub(vector, operator.mv(solution.value)))
            kind = "true"
        else:
            residual_norm = jnp.full((), jnp.nan, dtype)
            kind = "unknown"
        if "indefinite" in stats:
            result = RESULTS.where(stats["indefinite"], RESULTS.indefinite, result)
        if "diverged" in stats:
            result = RESULTS.where(stats["diverged"], RESULTS.diverged, result)
        b_norm = otu.norm(vector) if vector is not None else None
        relative = (
            jnp.full((), jnp.nan, dtype)
            if b_norm is None
            else residual_norm / jnp.where(b_norm > 0, b_norm, 1.0)
        )
        return cls(result, num_steps, matvecs, residual_norm, relative, kind)


def linear_solve_with_info(
    operator: lx.AbstractLinearOperator,
    vector: Vector,
    solver: lx.AbstractLinearSolver,
    *,
    options: dict[str, Any] | None = None,
    throw: bool = True,
) -> tuple[Vector, SolveInfo]:
    """`lineax.linear_solve` returning `(x, SolveInfo)`: the solve every respax package runs.

    For solvers without a residual statistic (lineax's direct solvers) the true residual is
    recomputed with one extra matvec.

    Example:
        >>> import jax.numpy as jnp
        >>> import lineax as lx
        >>> from respax.core import CG, linear_solve_with_info
        >>> A = lx.MatrixLinearOperator(jnp.diag(jnp.array([2.0, 4.0])), lx.symmetric_tag)
        >>> x, info = linear_solve_with_info(A, jnp.array([2.0, 4.0]), CG(max_steps=2))
        >>> x.round(4), int(info.matvecs), bool(info.converged)
        (Array([1., 1.], dtype=float32), 2, True)
    """
    if not isinstance(solver, lx.AbstractLinearSolver):
        raise TypeError(
            "`linear_solver` must be a lineax.AbstractLinearSolver (respax.core.CG, "
            f"respax.core.Neumann, lineax.Cholesky(), ...), got {type(solver).__name__}."
        )
    # lineax does not raise here: respax's results refine lineax's `breakdown` (indefinite,
    # diverged), so the error raised names the actual failure.
    solution = lx.linear_solve(operator, vector, solver, options=options, throw=False)
    info = SolveInfo.from_solution(solution, operator, vector)
    x = solution.value
    if throw:
        x = info.result.error_if(x, ~info.converged)
    return x, info


def lissa(
    hvp: Callable[[Any, Vector], Vector],
    b: Vector,
    sample_batch: Callable[[PRNGKeyArray], Any],
    *,
    key: PRNGKeyArray,
    max_steps: int,
    scale: float | Float[Array, ""],
    damping: float | Float[Array, ""] = 0.0,
    throw: bool = True,
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
        key: PRNG key (required); step `j` uses `fold_in(key, j)`.
        max_steps: K >= 1 recursion steps (= minibatch HVPs = `info.matvecs`).
        scale: > 0, the step is `1 / scale`.
        damping: >= 0.
        throw: raise (inside jit too) when the recursion produced a non-finite value.

    Returns:
        `(x, info)`; `info.residual_norm` is the norm of the last update `v_K - v_{K-1}` over
        `scale` (`info.residual == "update"`), a convergence signal: LiSSA has no exact residual
        without a full-batch HVP.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import lissa
        >>> hvp = lambda batch, v: 2.0 * v  # every minibatch has H = 2 I
        >>> x, info = lissa(hvp, jnp.ones(2), lambda k: None, key=jax.random.key(0),
        ...                 max_steps=200, scale=4.0)
        >>> x.round(3)
        Array([0.5, 0.5], dtype=float32)
    """
    check_positive_int("max_steps", max_steps)
    check_positive("scale", scale)
    check_positive("damping", damping, allow_zero=True)

    def step(carry, j):
        v, _ = carry
        batch = sample_batch(jax.random.fold_in(key, j))
        hv = otu.add_scale(hvp(batch, v), damping, v)
        new_v = otu.add(b, otu.add_scale(v, -1.0 / scale, hv))
        return (new_v, otu.norm(otu.sub(new_v, v))), None

    b_norm = otu.norm(b)
    init = (b, jnp.zeros((), b_norm.dtype))
    (v, last_change), _ = jax.lax.scan(step, init, jnp.arange(max_steps))
    x = otu.scale(1.0 / scale, v)
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(x)]))
    result = RESULTS.where(finite, RESULTS.successful, RESULTS.diverged)
    if throw:
        x = result.error_if(x, ~finite)
    k = _int32(max_steps)
    residual_norm = last_change / scale
    relative = residual_norm / jnp.where(b_norm > 0, b_norm, 1.0)
    return x, SolveInfo(result, k, k, residual_norm, relative, "update")
