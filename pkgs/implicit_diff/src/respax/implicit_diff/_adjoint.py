"""How an inner solve is differentiated: the adjoints of `solve_inner`, as optimistix has them.

`solve_inner(f, u, w0, optimizer, max_steps=T, adjoint=...)` returns `w(u)`, differentiable in `u`
according to the adjoint, so a hypergradient is `jax.grad(lambda u: F(u, solve_inner(...)[0]))`:

- `Implicit(linear_solver)`: the implicit function theorem at the end point (forward loop only,
  any stopping rule; one linear solve with the inner Hessian in the backward pass);
- `Unrolled(checkpoint_branching=None)`: backpropagate through all T steps;
- `Truncated(backprop_steps)`: backpropagate through the last K of the T steps.
"""

import equinox as eqx
import lineax as lx
from jaxtyping import Array, Float

from respax.core import CG, check_positive, check_positive_int

from ._solves import check_linear_solver


class Implicit(eqx.Module):
    """Differentiate an inner solution by the implicit function theorem (IFT).

    As a `solve_inner` adjoint, the inner loop runs forward only and its end point `w*` is
    differentiated as the argmin (`dw*/du = -H^{-1} d_u grad_w f`); as a `hypergradient` method,
    the IFT is applied at the given inner parameters.

    `linear_solver` is any `lineax.AbstractLinearSolver`; the inner Hessian is a matrix-free
    operator tagged symmetric and positive semidefinite. `respax.core.CG` (the default, to the
    dtype's default tolerance) and `respax.core.Neumann` spend exactly their budget of Hessian
    products; `Neumann(max_steps=1, step_size=a)` is the one-step ("T1-T2") approximation
    `v = a * grad_w F`. For singular inner Hessians (overparameterized inner problems), `CG` from
    zero and `lineax.SVD()` give the minimum-norm solve; `lineax.Cholesky()` is exact on positive
    definite ones and fails (`RESULTS.singular`) on singular ones.

    Args:
        linear_solver: the solver of `(H + damping I) v = grad_w F`.
        damping: Tikhonov damping of the solve (>= 0; 0 solves with the inner Hessian itself).
        throw: raise (inside jit too) when the solve fails (CG short of its tolerance, an
            indefinite Hessian, a divergent Neumann series, a singular Cholesky); with
            `throw=False` the failure is only `info.result`.

    Example:
        >>> from respax.core import CG
        >>> from respax.implicit_diff import Implicit
        >>> method = Implicit(CG(max_steps=100))
    """

    linear_solver: lx.AbstractLinearSolver = CG(max_steps=100)
    damping: float | Float[Array, ""] = 0.0
    throw: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        check_linear_solver("linear_solver", self.linear_solver)
        check_positive("damping", self.damping, allow_zero=True)


class Unrolled(eqx.Module):
    """Backpropagate through every step of the inner optimizer (memory linear in the steps).

    Args:
        checkpoint_branching: None, or an integer b >= 2: nested rematerialized chunks for
            O(b log T) memory at O(T log T) compute.

    Example:
        >>> from respax.implicit_diff import Unrolled
        >>> adjoint = Unrolled(checkpoint_branching=4)
    """

    checkpoint_branching: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.checkpoint_branching is not None:
            check_positive_int("checkpoint_branching", self.checkpoint_branching)
            if self.checkpoint_branching < 2:
                raise ValueError("`checkpoint_branching` must be None or an integer >= 2.")


class Truncated(eqx.Module):
    """Backpropagate through the last `backprop_steps` inner steps only (the earlier ones run
    forward, so the trajectory is the full one).

    Example:
        >>> from respax.implicit_diff import Truncated
        >>> adjoint = Truncated(backprop_steps=10)
    """

    backprop_steps: int = eqx.field(static=True)

    def __check_init__(self):
        check_positive_int("backprop_steps", self.backprop_steps)


Adjoint = Implicit | Unrolled | Truncated
