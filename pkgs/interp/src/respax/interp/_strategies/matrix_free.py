"""`MatrixFree`: matrix-free GGN products over the fitting set, solved by any lineax solver."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from respax.core import CG, Neumann, as_operator, linear_solve_with_info, power_iteration

from .._influence_model import FlatModel
from ._base import (
    InfluenceFactors,
    Strategy,
    _check_int,
    check_fingerprint,
    fingerprint,
    gather,
    scatter,
)


class MatrixFree(Strategy):
    """Matrix-free GGN products over the fitting set, solved by any lineax solver.

    The operator is `(C + damping I)` with `C` the mean GGN (block-diagonal with
    `block_diagonal=True`), one product per block per matvec; each query row is solved on its
    own (vmapped). `respax.core.CG` and `respax.core.Neumann` spend exactly `max_steps` products
    (CG may stop earlier at its tolerance); lineax's direct solvers materialize the operator.

    A `respax.core.Neumann` solver runs on the operator divided by `lambda_max + damping`, with
    `lambda_max` estimated at fit time by `power_iterations` steps of power iteration, so its
    `step_size` is a fraction of `1 / (lambda_max + damping)` (the series converges for
    `0 < step_size < 2`). Other solvers see the operator itself.

    Args:
        linear_solver: a `lineax.AbstractLinearSolver`; default `CG(max_steps=100)` (to the
            dtype's default `rtol`, sqrt(eps)).
        block_diagonal: use the block-diagonal GGN.
        power_iterations: power-iteration steps for a Neumann solver's scale.
        throw: raise when a solve fails (e.g. CG short of its tolerance); False returns the
            approximate solution as it is.

    Example:
        >>> from respax.core import CG, Neumann
        >>> from respax.interp import MatrixFree
        >>> cg = MatrixFree(CG(max_steps=200, rtol=1e-8), block_diagonal=True)
        >>> neumann = MatrixFree(Neumann(max_steps=200, step_size=1.0))
    """

    linear_solver: lx.AbstractLinearSolver = CG(max_steps=100)
    block_diagonal: bool = eqx.field(default=False, static=True)
    power_iterations: int = eqx.field(default=30, static=True)
    throw: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        if not isinstance(self.linear_solver, lx.AbstractLinearSolver):
            raise TypeError(
                "`linear_solver` must be a lineax.AbstractLinearSolver (respax.core.CG, "
                f"respax.core.Neumann, lineax.Cholesky(), ...), got "
                f"{type(self.linear_solver).__name__}."
            )
        _check_int("power_iterations", self.power_iterations)

    @property
    def needs_lambda_max(self) -> bool:
        return isinstance(self.linear_solver, Neumann)

    def fit_needs_key(self) -> bool:
        return self.needs_lambda_max

    def fit(self, model, train, layout, *, key, batch_size):
        return fit_matrix_free(self, MatrixFreeFactors, model, train[0], layout, key)


class AbstractMatrixFreeFactors(InfluenceFactors):
    """Factors of matrix-free strategies: a power-iteration `lambda_max` and the fitting set's
    fingerprint (the products take the fitting inputs at scoring time; no copy is kept)."""

    lambda_max: Float[Array, ""]
    fit_fingerprint: Float[Array, "2"]

    def needs_fit_inputs(self) -> bool:
        return True

    def matvec(self, model: FlatModel, inputs):
        flat = model.flat
        if not self.strategy.block_diagonal:
            return lambda v: model.ggn_matvec(flat, inputs, v)
        segs = self.block_segments

        def mv(v):
            out = jnp.zeros_like(v)
            for seg in segs:
                vb = scatter(jnp.zeros_like(v), seg, gather(v, seg))
                out = scatter(out, seg, gather(model.ggn_matvec(flat, inputs, vb), seg))
            return out

        return mv


class MatrixFreeFactors(AbstractMatrixFreeFactors):
    def precondition(self, model, g, damping, key, fit_inputs):
        s = self.strategy
        mv = self.matvec(model, check_fingerprint(fit_inputs, self.fit_fingerprint))
        scale = self.lambda_max + damping if s.needs_lambda_max else 1.0
        like = jnp.zeros(g.shape[1:], g.dtype)
        operator = as_operator(lambda v: (mv(v) + damping * v) / scale, like)

        def solve(b):
            return linear_solve_with_info(operator, b / scale, s.linear_solver, throw=s.throw)[0]

        return jax.vmap(solve)(g)


def fit_matrix_free(strategy, factors_class, model, inputs, layout, key):
    """Factors with the fitting set's fingerprint, and `lambda_max` by power iteration when the
    strategy needs the operator's scale (a Neumann solver, LiSSA)."""
    dtype = model.flat.dtype
    factors = factors_class(
        lambda_max=jnp.zeros((), dtype),
        fit_fingerprint=fingerprint(inputs),
        **layout.common(strategy),
    )
    if strategy.fit_needs_key():
        v0 = jnp.zeros((model.num_params,), dtype)
        mv = factors.matvec(model, inputs)
        lam = power_iteration(mv, key=key, max_steps=strategy.power_iterations, like=v0).eigenvalue
        factors = eqx.tree_at(lambda f: f.lambda_max, factors, lam)
    return factors
