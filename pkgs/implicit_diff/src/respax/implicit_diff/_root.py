"""Implicit differentiation of root finders, fixed-point solvers and argmins, on a custom JVP.

`implicit_root(optimality_fn)(solver)` returns a function with the solver's values and the
implicit-function-theorem derivative of its solution: with `F(x*, theta) = 0`,
`dx* = -(d_x F)^{-1} d_theta F dtheta`. The rule is a `custom_jvp` (forward mode); reverse mode
comes from JAX transposing it, which works because the linear solve is a
`jax.lax.custom_linear_solve` (transposable, batchable, differentiable). So `jax.jvp`, `jacfwd`,
`jacrev`, `grad` and `jax.hessian` all work through the wrapped solver, at every order (the rule
calls the wrapped function again for its primal output).

The solver and the optimality function may close over traced arrays: both are closure-converted
(`eqx.filter_closure_convert`), so the closed-over arrays become explicit inputs, and derivatives
with respect to arrays the optimality function closes over are correct too.
"""

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax.tree as otu

from respax.core import CG, RESULTS, check_positive

from ._solves import check_linear_solver, solve


class _Config(eqx.Module):
    linear_solver: lx.AbstractLinearSolver
    symmetric: bool = eqx.field(static=True)
    psd: bool = eqx.field(static=True)
    damping: Any
    throw: bool = eqx.field(static=True)
    solver_has_aux: bool = eqx.field(static=True)
    check_tol: float | None = eqx.field(static=True)


def _zero_tangent(x):
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.zeros(jnp.shape(x), dtype)
    return np.zeros(jnp.shape(x), dtype=jax.dtypes.float0)


def _split_differentiated(primals, tangents):
    """The leaves of `primals` whose tangent is not None, their tangents and a rebuild function."""
    leaves, treedef = jax.tree.flatten(primals)
    tangent_leaves = treedef.flatten_up_to(tangents)
    index = [i for i, t in enumerate(tangent_leaves) if t is not None]

    def rebuild(diff_leaves):
        new = list(leaves)
        for i, leaf in zip(index, diff_leaves, strict=True):
            new[i] = leaf
        return jax.tree.unflatten(treedef, new)

    return [leaves[i] for i in index], [tangent_leaves[i] for i in index], rebuild


def _sol_of(out, config):
    return out[0] if config.solver_has_aux else out


def _call(fn, first, args):
    """`fn(first, *positional, **keywords)` for `args = (positional, keywords)`."""
    positional, keywords = args
    return fn(first, *positional, **keywords)


@eqx.filter_custom_jvp
def _root(optimality, solver, init, args, *, config: _Config):
    init, args = _normalize((init, args))
    out = _call(solver, init, args)
    if config.check_tol is not None:
        sol = _sol_of(out, config)
        residual_norm = otu.norm(_call(optimality, sol, args))
        sol = RESULTS.not_a_solution.error_if(sol, ~(residual_norm <= config.check_tol))
        out = (sol, out[1]) if config.solver_has_aux else sol
    return out


@_root.def_jvp
def _root_jvp(primals, tangents, *, config: _Config):
    optimality, solver, init, args = primals
    init, args = _normalize((init, args))
    t_optimality, _, _, t_args = tangents
    out = _root(optimality, solver, init, args, config=config)
    sol = _sol_of(out, config)

    diff, diff_tangents, rebuild = _split_differentiated((optimality, args), (t_optimality, t_args))
    if diff:

        def residual_of(diff_leaves):
            fn, fn_args = rebuild(diff_leaves)
            return _call(fn, sol, fn_args)

        _, rhs = jax.jvp(residual_of, (diff,), (diff_tangents,))

        def matvec(v):
            out = jax.jvp(lambda x: _call(optimality, x, args), (sol,), (v,))[1]
            if isinstance(config.damping, int | float) and config.damping == 0:
                return out
            return otu.add_scale(out, config.damping, v)

        def linear_solve(mv, b):
            return solve(
                mv,
                b,
                config.linear_solver,
                symmetric=config.symmetric,
                psd=config.psd,
                throw=config.throw,
            )[0]

        t_sol = jax.lax.custom_linear_solve(
            matvec,
            otu.scale(-1.0, rhs),
            solve=linear_solve,
            transpose_solve=None if config.symmetric else linear_solve,
            symmetric=config.symmetric,
        )
    else:
        t_sol = jax.tree.map(_zero_tangent, sol)
    if config.solver_has_aux:
        return out, (t_sol, jax.tree.map(_zero_tangent, out[1]))
    return out, t_sol


def _as_array(x):
    # Strong-typed arrays: equinox's closure conversion compares dtypes and weak types exactly,
    # and JAX may hand Python scalars back as typed scalars inside the JVP rule.
    if isinstance(x, jax.Array | bool | int | float | complex | np.ndarray | np.generic):
        return jnp.asarray(x, dtype=jnp.result_type(x))
    return x


def _normalize(tree):
    return jax.tree.map(_as_array, tree)


def _leaf_shapes(tree):
    return [(tuple(x.shape), jnp.dtype(x.dtype)) for x in jax.tree.leaves(tree)]


def implicit_root(
    optimality_fn: Callable[..., Any],
    *,
    linear_solver: lx.AbstractLinearSolver = lx.LU(),
    symmetric: bool = False,
    psd: bool = False,
    damping: float = 0.0,
    throw: bool = True,
    has_aux: bool = False,
    solver_has_aux: bool = False,
    check_tol: float | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate `solver(init, *args, **kwargs) -> sol` so its solution is differentiated implicitly.

    The solution must satisfy `optimality_fn(sol, *args, **kwargs) == 0` (same pytree structure as
    `sol`); the wrapped solver is called with the same positional and keyword arguments as the
    optimality function. Derivatives with respect to the arguments (and to arrays `optimality_fn`
    closes over) follow from the implicit function theorem; the derivative with respect to `init`
    is zero by construction.

    Args:
        optimality_fn: `optimality_fn(sol, *args) -> residual` (or `(residual, aux)` with
            `has_aux=True`; the aux is ignored here).
        linear_solver: any `lineax.AbstractLinearSolver` for the Jacobian `d_sol optimality_fn`
            (default `lineax.LU()`, exact; `respax.core.CG` / `Neumann` only for symmetric
            positive definite Jacobians). It raises on failure (e.g. a singular Jacobian).
        symmetric: the Jacobian is symmetric (true for gradients of a scalar: argmins). Reverse mode
            then reuses the solve without transposing the matvec.
        psd: the Jacobian is also positive semidefinite (the Hessian at a minimum), which
            `lineax.Cholesky()` needs; only with `symmetric=True`.
        damping: Tikhonov damping added to the Jacobian in the solve (>= 0).
        throw: raise when the linear solve fails (see `respax.core.RESULTS`).
        has_aux: `optimality_fn` returns `(residual, aux)`.
        solver_has_aux: `solver` returns `(sol, aux)`; the wrapped function then returns
            `(sol, aux)` too, with a zero derivative for `aux`.
        check_tol: opt-in: raise (via `eqx.error_if`, also inside jit) when
            `||optimality_fn(sol, *args)|| > check_tol`, so an unconverged solve is never
            differentiated silently.

    Returns:
        A decorator.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.implicit_diff import implicit_root
        >>> def newton_sqrt(init, a):  # root of x^2 - a
        ...     return jax.lax.fori_loop(0, 30, lambda _, x: 0.5 * (x + a / x), init)
        >>> sqrt = implicit_root(lambda x, a: x**2 - a)(newton_sqrt)
        >>> float(jax.grad(sqrt, argnums=1)(1.0, 4.0))  # 1 / (2 sqrt 4)
        0.25
    """
    if not callable(optimality_fn):
        raise TypeError(f"`optimality_fn` must be callable, got {type(optimality_fn).__name__}.")
    check_linear_solver("linear_solver", linear_solver)
    if check_tol is not None:
        check_positive("check_tol", check_tol)
    if psd and not symmetric:
        raise ValueError("`psd=True` needs `symmetric=True` (a PSD Jacobian is symmetric).")
    check_positive("damping", damping, allow_zero=True)
    config = _Config(
        linear_solver,
        bool(symmetric),
        bool(psd),
        damping,
        bool(throw),
        bool(solver_has_aux),
        check_tol,
    )
    residual_fn = (lambda x, *a: optimality_fn(x, *a)[0]) if has_aux else optimality_fn

    def decorator(solver: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(solver):
            raise TypeError(f"`solver` must be callable, got {type(solver).__name__}.")

        @functools.wraps(solver)
        def wrapped(init, *args, **kwargs):
            # Python and numpy scalars/arrays become JAX arrays, so the closure-converted
            # functions see the same dynamic arguments on every call (traced or not).
            init, args = _normalize((init, (args, kwargs)))
            out_shape = jax.eval_shape(lambda i, a: _call(solver, i, a), init, args)
            if solver_has_aux:
                if not (isinstance(out_shape, tuple) and len(out_shape) == 2):
                    raise ValueError("`solver_has_aux=True` needs `solver` to return (sol, aux).")
                sol_shape = out_shape[0]
            else:
                sol_shape = out_shape
            residual_shape = jax.eval_shape(lambda x, a: _call(residual_fn, x, a), sol_shape, args)
            if jax.tree.structure(residual_shape) != jax.tree.structure(sol_shape) or (
                _leaf_shapes(residual_shape) != _leaf_shapes(sol_shape)
            ):
                raise ValueError(
                    "`optimality_fn(sol, *args)` must return a pytree with the structure, "
                    "shapes and dtypes of `sol` (the solver's output); got\n"
                    f"  sol: {sol_shape}\n  optimality_fn: {residual_shape}"
                    + ("\n(with has_aux=True only the first output counts)" if has_aux else "")
                )
            optimality = eqx.filter_closure_convert(
                lambda x, a: _call(residual_fn, x, a), sol_shape, args
            )
            solver_converted = eqx.filter_closure_convert(
                lambda i, a: _call(solver, i, a), init, args
            )
            # The converted functions take `(x, args)`; `_call` spreads a one-tuple onto them.
            return _root(optimality, solver_converted, init, ((args,), {}), config=config)

        return wrapped

    return decorator


def implicit_fixed_point(
    fixed_point_fn: Callable[..., Any],
    *,
    linear_solver: lx.AbstractLinearSolver = lx.LU(),
    has_aux: bool = False,
    solver_has_aux: bool = False,
    check_tol: float | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a solver of `x = fixed_point_fn(x, *args)`: `implicit_root` of `T(x) - x`.

    Args and returns as `implicit_root`, with `fixed_point_fn(x, *args) -> x` (or `(x, aux)`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.implicit_diff import implicit_fixed_point
        >>> T = lambda x, a: 0.5 * x + a  # fixed point x = 2a
        >>> solve = implicit_fixed_point(T)(
        ...     lambda x0, a: jax.lax.fori_loop(0, 60, lambda _, x: T(x, a), x0))
        >>> float(jax.grad(solve, argnums=1)(0.0, 1.0))
        2.0
    """
    if not callable(fixed_point_fn):
        raise TypeError(f"`fixed_point_fn` must be callable, got {type(fixed_point_fn).__name__}.")

    def optimality(x, *args, **kwargs):
        out = fixed_point_fn(x, *args, **kwargs)
        value = out[0] if has_aux else out
        return otu.sub(value, x)

    return implicit_root(
        optimality,
        linear_solver=linear_solver,
        solver_has_aux=solver_has_aux,
        check_tol=check_tol,
    )


def implicit_argmin(
    loss_fn: Callable[..., Any],
    *,
    linear_solver: lx.AbstractLinearSolver = CG(max_steps=1000),
    damping: float = 0.0,
    throw: bool = True,
    has_aux: bool = False,
    solver_has_aux: bool = False,
    check_tol: float | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a minimizer of `loss_fn(w, *args)`: `implicit_root` of its gradient (symmetric).

    The Jacobian is the Hessian of `loss_fn`, tagged symmetric and positive semidefinite, so
    `respax.core.CG` (the default, to the dtype's default tolerance; min-norm on singular PSD
    Hessians), `respax.core.Neumann`, `lineax.Cholesky()` and `lineax.SVD()` (min-norm) apply.

    Args and returns as `implicit_root`, with `loss_fn(w, *args) -> scalar` (or `(scalar, aux)`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.implicit_diff import implicit_argmin
        >>> loss = lambda w, a: 0.5 * jnp.sum((w - a) ** 2) + 0.5 * jnp.sum(w**2)  # w* = a / 2
        >>> argmin = implicit_argmin(loss)(lambda w0, a: a / 2)
        >>> jax.jacfwd(argmin, argnums=1)(jnp.zeros(2), jnp.ones(2))
        Array([[0.5, 0. ],
               [0. , 0.5]], dtype=float32)
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}.")
    grad_fn = jax.grad(loss_fn, argnums=0, has_aux=has_aux)
    return implicit_root(
        grad_fn,
        linear_solver=linear_solver,
        symmetric=True,
        psd=True,
        damping=damping,
        throw=throw,
        has_aux=has_aux,
        solver_has_aux=solver_has_aux,
        check_tol=check_tol,
    )
