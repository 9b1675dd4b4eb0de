"""Running an optax optimizer on the inner objective: a fixed number of steps (differentiable,
optionally with O(log T)-memory checkpointing) or until the gradient norm reaches a tolerance."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree as otu
from jaxtyping import Array, Bool, Float, Int, PyTree

from respax.core import check_positive, check_positive_int

from ._adjoint import Adjoint, Implicit, Truncated, Unrolled
from ._root import implicit_argmin


class InnerInfo(NamedTuple):
    """Diagnostics of an inner solve."""

    steps: Int[Array, ""]  # optimizer steps taken
    grad_norm: Float[Array, ""]  # ||grad_w f(u, w)|| at the returned w
    converged: Bool[Array, ""]  # grad_norm <= tol


def check_optimizer(name: str, optimizer: Any) -> None:
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`{name}` must be an optax.GradientTransformation (e.g. optax.sgd(0.1)), "
            f"got {type(optimizer).__name__}."
        )


def _extra_args(optimizer, value, grad, value_fn) -> dict:
    if isinstance(optimizer, optax.GradientTransformationExtraArgs):
        return dict(value=value, grad=grad, value_fn=value_fn)
    return {}


def _make_step(inner_loss: Callable, optimizer, u) -> Callable:
    value_fn = lambda w: inner_loss(u, w)

    def step(carry):
        w, state = carry
        value, grad = jax.value_and_grad(value_fn)(w)
        updates, state = optimizer.update(
            grad, state, w, **_extra_args(optimizer, value, grad, value_fn)
        )
        return optax.apply_updates(w, updates), state

    return step


def _scan_steps(step: Callable, carry, num_steps: int):
    if num_steps == 0:
        return carry
    return jax.lax.scan(lambda c, _: (step(c), None), carry, None, length=num_steps)[0]


def _checkpointed_steps(step: Callable, carry, num_steps: int, branching: int):
    """`num_steps` steps as nested scans over rematerialized chunks.

    Each level keeps at most `branching` carries for the backward pass and there are
    `ceil(log_branching T)` levels, so reverse-mode memory is O(branching log T) carries for
    O(T log T) compute.
    """
    if num_steps <= branching:
        return _scan_steps(step, carry, num_steps)
    chunk = 1
    while chunk * branching < num_steps:
        chunk *= branching
    num_chunks, remainder = divmod(num_steps, chunk)

    @jax.checkpoint
    def run_chunk(c):
        return _checkpointed_steps(step, c, chunk, branching)

    carry = _scan_steps(run_chunk, carry, num_chunks)
    return _checkpointed_steps(step, carry, remainder, branching) if remainder else carry


def run_inner_optimizer(
    inner_loss: Callable[[PyTree, PyTree], Float[Array, ""]],
    outer_params: PyTree,
    inner_params: PyTree,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    *,
    checkpoint_branching: int | None = None,
) -> PyTree:
    """Run `num_steps` steps of `optimizer` on `w -> inner_loss(outer_params, w)`.

    The steps are a `lax.scan`, differentiable in `outer_params` and `inner_params` (this is what
    unrolled hypergradients backpropagate through). With `checkpoint_branching=b` the steps are
    nested rematerialized scans: reverse-mode memory grows like `b log_b(T)` instead of `T`.
    The optimizer state is initialized fresh.

    Args:
        inner_loss: `inner_loss(u, w) -> scalar`.
        outer_params: u.
        inner_params: the starting w.
        optimizer: an optax transformation (extra args `value`, `grad`, `value_fn` are passed to
            `GradientTransformationExtraArgs`).
        num_steps: T >= 0.
        checkpoint_branching: None (plain scan) or an integer >= 2.

    Returns:
        w after T steps.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from respax.implicit_diff import run_inner_optimizer
        >>> f = lambda u, w: 0.5 * jnp.sum((w - u) ** 2)
        >>> run_inner_optimizer(f, jnp.ones(2), jnp.zeros(2), optax.sgd(0.5), 2)
        Array([0.75, 0.75], dtype=float32)
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"`num_steps` must be an integer >= 0, got {num_steps!r}.")
    check_optimizer("optimizer", optimizer)
    step = _make_step(inner_loss, optimizer, outer_params)
    carry = (inner_params, optimizer.init(inner_params))
    if checkpoint_branching is None:
        carry = _scan_steps(step, carry, num_steps)
    else:
        if (
            isinstance(checkpoint_branching, bool)
            or not isinstance(checkpoint_branching, int)
            or checkpoint_branching < 2
        ):
            raise ValueError(
                f"`checkpoint_branching` must be None or an integer >= 2, got "
                f"{checkpoint_branching!r}."
            )
        carry = _checkpointed_steps(step, carry, num_steps, checkpoint_branching)
    return carry[0]


def _has_stored_value_and_grad(state) -> bool:
    try:
        value = otu.get(state, "value", default=None)
        grad = otu.get(state, "grad", default=None)
    except (KeyError, ValueError):
        return False
    return value is not None and grad is not None


def solve_inner(
    inner_loss: Callable[[PyTree, PyTree], Float[Array, ""]],
    outer_params: PyTree,
    inner_params: PyTree,
    optimizer: optax.GradientTransformation,
    *,
    max_steps: int,
    tol: float = 0.0,
    adjoint: Adjoint = Implicit(),
) -> tuple[PyTree, InnerInfo]:
    """Minimize `w -> inner_loss(outer_params, w)`; the solution is differentiable in `u`.

    How the solution `w(u)` is differentiated is the `adjoint` (as in optimistix), so a
    hypergradient is `jax.grad(lambda u: F(u, solve_inner(f, u, w0, opt, ...)[0]))(u)`:

    - `Implicit(linear_solver)` (default): the loop runs until `||grad|| <= tol` or `max_steps`
      (a `lax.while_loop`, forward only) and its end point is differentiated by the implicit
      function theorem, one inner-Hessian solve per backward pass. It assumes the end point is a
      minimum: check `info.converged` (set `tol`).
    - `Unrolled(checkpoint_branching=None)`: exactly `max_steps` steps (`tol` must be 0),
      backpropagated through.
    - `Truncated(backprop_steps)`: exactly `max_steps` steps, backpropagated through the last
      `backprop_steps`.

    Works with optax's L-BFGS: when the optimizer state stores the value and gradient of its line
    search (optax's default zoom line search, or
    `optax.scale_by_backtracking_linesearch(..., store_grad=True)`), they are reused, so each
    step costs one line search.

    Args:
        inner_loss: `inner_loss(u, w) -> scalar`.
        outer_params: u.
        inner_params: the starting w (its derivative is not taken).
        optimizer: an optax transformation, e.g. `optax.lbfgs()`.
        max_steps: the step budget (>= 1).
        tol: stop when the gradient norm is <= tol (0 runs the whole budget).
        adjoint: `Implicit(...)`, `Unrolled(...)` or `Truncated(...)`.

    Returns:
        `(w, InnerInfo(steps, grad_norm, converged))`; the info is not differentiated.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from respax.implicit_diff import solve_inner
        >>> f = lambda u, w: 0.5 * jnp.sum((w - u) ** 2)
        >>> w, info = solve_inner(f, jnp.ones(2), jnp.zeros(2), optax.lbfgs(),
        ...                       max_steps=10, tol=1e-6)
        >>> w, bool(info.converged)
        (Array([1., 1.], dtype=float32), True)
        >>> F = lambda u: jnp.sum(solve_inner(f, u, jnp.zeros(2), optax.lbfgs(),
        ...                                   max_steps=10, tol=1e-6)[0] ** 2)
        >>> jax.grad(F)(jnp.ones(2))  # w*(u) = u, so dF/du = 2u
        Array([2., 2.], dtype=float32)
    """
    check_positive_int("max_steps", max_steps)
    check_positive("tol", tol, allow_zero=True)
    check_optimizer("optimizer", optimizer)
    if not isinstance(adjoint, Implicit | Unrolled | Truncated):
        raise TypeError(
            "`adjoint` must be Implicit(...), Unrolled(...) or Truncated(...), got "
            f"{type(adjoint).__name__}."
        )
    if isinstance(adjoint, Implicit):
        solver = lambda w0, u: _solve_loop(inner_loss, u, w0, optimizer, max_steps, tol)
        wrapped = implicit_argmin(
            lambda w, u: inner_loss(u, w),
            linear_solver=adjoint.linear_solver,
            damping=adjoint.damping,
            throw=adjoint.throw,
            solver_has_aux=True,
        )(solver)
        return wrapped(inner_params, outer_params)
    if tol != 0:
        raise ValueError(
            f"`tol` must be 0 with the {type(adjoint).__name__} adjoint: it backpropagates "
            "through a fixed number of steps (`max_steps`); use Implicit() to stop at a tolerance."
        )
    if isinstance(adjoint, Unrolled):
        w = run_inner_optimizer(
            inner_loss,
            outer_params,
            inner_params,
            optimizer,
            max_steps,
            checkpoint_branching=adjoint.checkpoint_branching,
        )
    else:
        if adjoint.backprop_steps > max_steps:
            raise ValueError(
                f"`backprop_steps` ({adjoint.backprop_steps}) must be <= `max_steps` ({max_steps})."
            )
        w = run_truncated(
            inner_loss, outer_params, inner_params, optimizer, max_steps, adjoint.backprop_steps
        )
    grad_norm = jax.lax.stop_gradient(otu.norm(jax.grad(inner_loss, argnums=1)(outer_params, w)))
    steps = jnp.asarray(max_steps, jnp.int32)
    return w, InnerInfo(steps=steps, grad_norm=grad_norm, converged=grad_norm <= tol)


def run_truncated(
    inner_loss: Callable, outer_params, inner_params, optimizer, num_steps: int, backprop_steps: int
) -> PyTree:
    """`num_steps` optimizer steps from `inner_params`; gradients flow through the last
    `backprop_steps` only. The optimizer state of the first steps is carried on
    (stop-gradiented), so the forward trajectory is exactly that of the full run."""
    carry = (inner_params, optimizer.init(inner_params))
    prefix = num_steps - backprop_steps
    if prefix > 0:
        step = _make_step(inner_loss, optimizer, jax.lax.stop_gradient(outer_params))
        carry = jax.lax.stop_gradient(_scan_steps(step, carry, prefix))
    step = _make_step(inner_loss, optimizer, outer_params)
    return _scan_steps(step, carry, backprop_steps)[0]


def _solve_loop(inner_loss, outer_params, inner_params, optimizer, max_steps, tol):
    value_fn = lambda w: inner_loss(outer_params, w)
    value_and_grad = jax.value_and_grad(value_fn)
    state0 = optimizer.init(inner_params)
    # A line search that stores the value and gradient at the new iterate (optax's zoom, or
    # backtracking with `store_grad=True`) saves one evaluation per step. They are read from the
    # state directly (what `optax.value_and_grad_from_state` returns after the first update,
    # without its fallback branch): one compiled copy of the objective fewer, no `cond` per step.
    from_state = _has_stored_value_and_grad(state0)

    value0, grad0 = value_and_grad(inner_params)

    def vg(w, state):
        if from_state:  # same dtypes as the loop carry
            value = jnp.asarray(otu.get(state, "value"), value0.dtype)
            grad = jax.tree.map(
                lambda g, g0: jnp.asarray(g, g0.dtype), otu.get(state, "grad"), grad0
            )
            return value, grad
        return value_and_grad(w)

    def cond(carry):
        _, _, _, grad, k = carry
        return (k < max_steps) & (otu.norm(grad) > tol)

    def body(carry):
        w, state, value, grad, k = carry
        updates, state = optimizer.update(
            grad, state, w, **_extra_args(optimizer, value, grad, value_fn)
        )
        w = optax.apply_updates(w, updates)
        value, grad = vg(w, state)
        return w, state, value, grad, k + 1

    init = (inner_params, state0, value0, grad0, jnp.asarray(0, jnp.int32))
    w, _, _, grad, k = jax.lax.while_loop(cond, body, init)
    grad_norm = otu.norm(grad)
    return w, InnerInfo(steps=k, grad_norm=grad_norm, converged=grad_norm <= tol)
