"""One hypergradient interface: full and truncated unrolling, and the implicit function theorem.

The bilevel problem: inner parameters `w*(u) in argmin_w f(u, w)`, and the total derivative of the
outer objective `F(u, w*(u))` in the outer parameters `u`:

    dF/du = d_u F - (d_u d_w f) [d_w d_w f]^{-1} d_w F          (implicit function theorem)

`hypergradient(outer_loss, inner_loss, u, w, method)` returns it by the chosen `method`:

- `FullUnroll(optimizer, T)`: run T optimizer steps on f from `w` and backpropagate through all of
  them (what the hypergradient of "T steps of training" really is, converged or not);
- `TruncatedUnroll(optimizer, T, K)`: the same T steps, backpropagating through the last K only;
- `Implicit(linear_solver)`: the IFT at `w` (taken to be the inner solution) with an inner-Hessian
  solve by any lineax solver: `respax.core.Neumann(max_steps=K, step_size=alpha)`,
  `respax.core.CG(max_steps=K, rtol=...)`, `lineax.Cholesky()`, `lineax.SVD()` (min-norm), ...
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import optax.tree as otu
from jaxtyping import Array, Bool, Float, Int, PyTree

from respax.core import (
    RESULTS,
    check_float_tree,
    check_positive,
    check_positive_int,
    is_inexact_array_like,
)

from ._adjoint import Implicit
from ._inner import check_optimizer, run_inner_optimizer, run_truncated
from ._solves import solve


class FullUnroll(eqx.Module):
    """Backpropagate through all `num_steps` steps of `optimizer` on the inner objective.

    Memory is linear in `num_steps`; `checkpoint_branching=b` (an integer >= 2) rematerializes
    nested chunks for O(b log T) memory at O(T log T) compute.

    Example:
        >>> import optax
        >>> from respax.implicit_diff import FullUnroll
        >>> method = FullUnroll(optax.sgd(0.1), num_steps=100)
    """

    optimizer: optax.GradientTransformation = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)
    checkpoint_branching: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_optimizer("optimizer", self.optimizer)
        check_positive_int("num_steps", self.num_steps)
        if self.checkpoint_branching is not None:
            check_positive_int("checkpoint_branching", self.checkpoint_branching)
            if self.checkpoint_branching < 2:
                raise ValueError("`checkpoint_branching` must be None or an integer >= 2.")


class TruncatedUnroll(eqx.Module):
    """Run `num_steps` inner steps and backpropagate through the last `backprop_steps` only.

    Example:
        >>> import optax
        >>> from respax.implicit_diff import TruncatedUnroll
        >>> method = TruncatedUnroll(optax.sgd(0.1), num_steps=100, backprop_steps=10)
    """

    optimizer: optax.GradientTransformation = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)
    backprop_steps: int = eqx.field(static=True)

    def __check_init__(self):
        check_optimizer("optimizer", self.optimizer)
        check_positive_int("num_steps", self.num_steps)
        check_positive_int("backprop_steps", self.backprop_steps)
        if self.backprop_steps > self.num_steps:
            raise ValueError(
                f"`backprop_steps` ({self.backprop_steps}) must be <= `num_steps` "
                f"({self.num_steps})."
            )


Method = FullUnroll | TruncatedUnroll | Implicit


class HypergradInfo(eqx.Module):
    """Diagnostics returned next to a hypergradient.

    Attributes:
        inner_params: w at which F was evaluated: w itself (Implicit) or w_T (unrolled).
        outer_loss: F(u, inner_params).
        inner_grad_norm: ||grad_w f(u, inner_params)||.
        linear_residual_norm: ||H v - grad_w F|| of the IFT solve (0 if unrolled), of the kind
            `linear_residual` names.
        linear_relative_residual: the same over ||grad_w F|| (0 if unrolled). Above 1 the solve
            made things worse than v = 0: e.g. a divergent Neumann series
            (step_size * lambda_max(H) >= 2) or an indefinite H.
        matvecs: inner-Hessian products spent by the solve (0 if unrolled; -1 for a lineax
            solver that does not count them).
        inner_converged: inner_grad_norm <= inner_tol (True without inner_tol).
        result: the IFT solve's `respax.core.RESULTS` (successful if unrolled).
        linear_residual: which residual `linear_residual_norm` is: "true" (recomputed with one
            extra Hessian product, for lineax's direct solvers and `CG(true_residual=True)`),
            "recursive" (respax's CG and Neumann: carried by the recursion, exact in exact
            arithmetic) or "none" (unrolled).
    """

    inner_params: PyTree
    outer_loss: Float[Array, ""]
    inner_grad_norm: Float[Array, ""]
    linear_residual_norm: Float[Array, ""]
    linear_relative_residual: Float[Array, ""]
    matvecs: Int[Array, ""]
    inner_converged: Bool[Array, ""]
    result: RESULTS
    linear_residual: str = eqx.field(static=True, default="none")


def _check_scalar_fn(name: str, fn: Callable, u, w) -> None:
    if not callable(fn):
        raise TypeError(f"`{name}` must be a callable (u, w) -> scalar, got {type(fn).__name__}.")
    try:
        out = eqx.filter_eval_shape(fn, u, w)
    except Exception as err:  # noqa: BLE001 - re-raised with the argument named
        raise ValueError(
            f"`{name}(outer_params, inner_params)` failed on the given pytrees; check that "
            f"`outer_params` and `inner_params` have the structure `{name}` expects: {err}"
        ) from err
    if not (hasattr(out, "shape") and out.shape == ()):
        raise ValueError(f"`{name}` must return a scalar, got {out}.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"`{name}` must return a floating-point scalar, got dtype {out.dtype}.")


def _inner_grad_fn(inner_loss: Callable) -> Callable:
    return jax.grad(inner_loss, argnums=1)


def _implicit(outer_loss, inner_loss, u, w, method: Implicit):
    outer_value, (grad_u, grad_w) = jax.value_and_grad(outer_loss, argnums=(0, 1))(u, w)
    grad_w_inner = _inner_grad_fn(inner_loss)
    # One linearization of w -> grad_w f(u, w) serves every matvec of the solve.
    inner_grad, hvp = jax.linearize(lambda ww: grad_w_inner(u, ww), w)
    damping = method.damping
    if not (isinstance(damping, int | float) and damping == 0):
        undamped = hvp
        hvp = lambda v: otu.add_scale(undamped(v), damping, v)
    v, info = solve(hvp, grad_w, method.linear_solver, symmetric=True, psd=True, throw=method.throw)
    _, cross_vjp = jax.vjp(lambda uu: grad_w_inner(uu, w), u)
    (cross,) = cross_vjp(v)
    hypergrad = otu.sub(grad_u, cross)
    residual = (info.residual_norm, info.relative_residual, info.result, info.residual)
    return hypergrad, w, outer_value, otu.norm(inner_grad), residual, info.matvecs


def _unrolled(outer_loss, inner_loss, u, w, method):
    if isinstance(method, FullUnroll):

        def total(uu):
            w_t = run_inner_optimizer(
                inner_loss,
                uu,
                w,
                method.optimizer,
                method.num_steps,
                checkpoint_branching=method.checkpoint_branching,
            )
            return outer_loss(uu, w_t), w_t

    else:

        def total(uu):
            w_t = _truncated(inner_loss, uu, w, method)
            return outer_loss(uu, w_t), w_t

    (outer_value, w_t), hypergrad = jax.value_and_grad(total, has_aux=True)(u)
    inner_grad_norm = otu.norm(_inner_grad_fn(inner_loss)(u, w_t))
    zero = jnp.zeros((), inner_grad_norm.dtype)
    residual = (zero, zero, RESULTS.successful, "none")
    return hypergrad, w_t, outer_value, inner_grad_norm, residual, jnp.asarray(0, jnp.int32)


def _truncated(inner_loss, u, w0, method: TruncatedUnroll):
    return run_truncated(
        inner_loss, u, w0, method.optimizer, method.num_steps, method.backprop_steps
    )


def hypergradient(
    outer_loss: Callable[[PyTree, PyTree], Float[Array, ""]],
    inner_loss: Callable[[PyTree, PyTree], Float[Array, ""]],
    outer_params: PyTree,
    inner_params: PyTree,
    method: Method,
    *,
    inner_tol: float | None = None,
    throw: bool = True,
) -> tuple[PyTree, HypergradInfo]:
    """The hypergradient `d F(u, w*(u)) / du` by unrolling or by the implicit function theorem.

    Args:
        outer_loss: `F(u, w) -> scalar` (the validation / outer objective).
        inner_loss: `f(u, w) -> scalar` (the training / inner objective), minimized over `w`.
        outer_params: u, a pytree of float arrays.
        inner_params: w. For `Implicit`, the inner solution (e.g. from `solve_inner`); for
            `FullUnroll` / `TruncatedUnroll`, the inner initialization the steps start from
            (its gradient is not taken: the result is zero in `w_init`, by construction).
        method: `FullUnroll`, `TruncatedUnroll` or `Implicit`.
        inner_tol: opt-in convergence check: when set, the inner problem counts as converged when
            `||grad_w f(u, w)|| <= inner_tol` at the w where F is evaluated.
        throw: with `inner_tol`, raise (an `eqx.error_if` runtime error, also inside jit) when
            the inner problem is not converged (`RESULTS.not_a_solution`); with `throw=False`
            it is only `info.result` and `info.inner_converged`. (The IFT solve's own failures
            follow `Implicit(throw=)`.)

    Returns:
        `(hypergrad, info)`: the hypergradient, a pytree like `outer_params` (None at the
        leaves that are not floating-point arrays, as `eqx.filter_grad` gives), and a
        `HypergradInfo` with the inner params used, F, the inner gradient norm, the IFT solve's
        residual and matvec count, and the convergence flag.

    Example:
        >>> import jax.numpy as jnp
        >>> import lineax as lx
        >>> from respax.implicit_diff import Implicit, hypergradient
        >>> inner = lambda u, w: 0.5 * jnp.sum((w - u) ** 2)  # w*(u) = u
        >>> outer = lambda u, w: 0.5 * jnp.sum(w**2)  # F(u, w*(u)) = |u|^2 / 2
        >>> g, info = hypergradient(outer, inner, jnp.ones(2), jnp.ones(2), Implicit(lx.Cholesky()))
        >>> g
        Array([1., 1.], dtype=float32)
    """
    if not isinstance(method, FullUnroll | TruncatedUnroll | Implicit):
        raise TypeError(
            "`method` must be FullUnroll, TruncatedUnroll or Implicit, got "
            f"{type(method).__name__}."
        )
    if inner_tol is not None:
        check_positive("inner_tol", inner_tol)
    check_float_tree("outer_params", outer_params)
    check_float_tree("inner_params", inner_params)
    _check_scalar_fn("outer_loss", outer_loss, outer_params, inner_params)
    _check_scalar_fn("inner_loss", inner_loss, outer_params, inner_params)

    # Whole Equinox models work: only their floating-point arrays are parameters (the rest, e.g.
    # an activation function, is static), as in `eqx.filter_grad`.
    u_dyn, u_static = eqx.partition(outer_params, is_inexact_array_like)
    w_dyn, w_static = eqx.partition(inner_params, is_inexact_array_like)

    def on_dynamic(fn):
        return lambda u, w: fn(eqx.combine(u, u_static), eqx.combine(w, w_static))

    outer_dyn, inner_dyn = on_dynamic(outer_loss), on_dynamic(inner_loss)
    if isinstance(method, Implicit):
        out = _implicit(outer_dyn, inner_dyn, u_dyn, w_dyn, method)
    else:
        out = _unrolled(outer_dyn, inner_dyn, u_dyn, w_dyn, method)
    hypergrad, w_used, outer_value, inner_grad_norm, residual, matvecs = out
    w_used = eqx.combine(w_used, w_static)
    if inner_tol is None:
        converged = jnp.asarray(True)
    else:
        converged = inner_grad_norm <= inner_tol
    # The solve's own failure (Implicit) comes first; then the inner problem's.
    result = RESULTS.where(
        (residual[2] == RESULTS.successful) & ~converged, RESULTS.not_a_solution, residual[2]
    )
    if throw and inner_tol is not None:
        hypergrad = result.error_if(hypergrad, result == RESULTS.not_a_solution)
    info = HypergradInfo(
        inner_params=w_used,
        outer_loss=outer_value,
        inner_grad_norm=inner_grad_norm,
        linear_residual_norm=residual[0],
        linear_relative_residual=residual[1],
        matvecs=jnp.asarray(matvecs, jnp.int32),
        inner_converged=converged,
        result=result,
        linear_residual=residual[3],
    )
    return hypergrad, info
