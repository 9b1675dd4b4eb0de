"""Hessian-vector products and the Hessian as a lineax operator over parameter pytrees."""

from collections.abc import Callable
from typing import Any

import jax
import lineax as lx

from ._custom_types import Params, Vector


def hvp(loss_fn: Callable[..., Any], params: Params, tangent: Vector, *args: Any) -> Vector:
    """Hessian-vector product `∇²_params loss_fn(params, *args) @ tangent`, forward-over-reverse.

    Args:
        loss_fn: scalar function `loss_fn(params, *args)`.
        params: the point at which the Hessian is taken.
        tangent: a pytree with the structure of `params`.
        *args: passed through to `loss_fn` (e.g. a batch).

    Returns:
        A pytree with the structure of `params`.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.core import hvp
        >>> hvp(lambda w: 0.5 * (w**2).sum() * 3.0, jnp.ones(2), jnp.array([1.0, 2.0]))
        Array([3., 6.], dtype=float32)
    """
    grad_fn = lambda p: jax.grad(loss_fn)(p, *args)
    return jax.jvp(grad_fn, (params,), (tangent,))[1]


def hvp_operator(
    loss_fn: Callable[..., Any], params: Params, *args: Any
) -> lx.FunctionLinearOperator:
    """The Hessian of `loss_fn(params, *args)` in `params` as a symmetric lineax operator.

    `operator.mv(v)` is one Hessian-vector product; the operator works with every respax solver and
    with `lineax.linear_solve`.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.core import hvp_operator
        >>> op = hvp_operator(lambda w, a: 0.5 * a * (w**2).sum(), jnp.ones(2), 2.0)
        >>> op.mv(jnp.array([1.0, 1.0]))
        Array([2., 2.], dtype=float32)
    """
    structure = jax.eval_shape(lambda: params)
    return lx.FunctionLinearOperator(
        lambda v: hvp(loss_fn, params, v, *args), structure, lx.symmetric_tag
    )
