"""`LiSSA`: the stochastic Neumann series over minibatch GGN products."""

import equinox as eqx
import jax
import jax.numpy as jnp

from respax.core import lissa

from ._base import Strategy, _check_int, check_fingerprint
from .matrix_free import AbstractMatrixFreeFactors, fit_matrix_free


class LiSSA(Strategy):
    """LiSSA: the stochastic Neumann series over minibatch GGN products (`respax.core.lissa`).

    Args:
        num_iterations: recursion depth (minibatch products).
        batch_size: examples per minibatch (sampled with replacement); a batch size >= the
            fitting set's size uses the whole set every step (deterministic).
        scale: the recursion's scale (> the largest eigenvalue of every minibatch GGN plus
            damping); None uses `scale_factor * (lambda_max + damping)` with `lambda_max` from
            power iteration.
        num_repeats: independent recursions averaged.
    """

    num_iterations: int = eqx.field(default=500, static=True)
    batch_size: int = eqx.field(default=32, static=True)
    scale: float | None = eqx.field(default=None, static=True)
    scale_factor: float = eqx.field(default=2.0, static=True)
    num_repeats: int = eqx.field(default=1, static=True)
    power_iterations: int = eqx.field(default=30, static=True)
    block_diagonal: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        for name in ("num_iterations", "batch_size", "num_repeats", "power_iterations"):
            _check_int(name, getattr(self, name))
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"`scale` must be > 0 or None, got {self.scale!r}.")
        if not self.scale_factor >= 1:
            raise ValueError(f"`scale_factor` must be >= 1, got {self.scale_factor!r}.")

    def fit_needs_key(self) -> bool:
        return True  # power iteration's start vector

    def solve_needs_key(self) -> bool:
        return True  # the minibatches

    def fit(self, model, train, layout, *, key, batch_size):
        return fit_matrix_free(self, LiSSAFactors, model, train[0], layout, key)


class LiSSAFactors(AbstractMatrixFreeFactors):
    def precondition(self, model, g, damping, key, fit_inputs):
        s = self.strategy
        inputs = check_fingerprint(fit_inputs, self.fit_fingerprint)
        n = jax.tree.leaves(inputs)[0].shape[0]
        scale = s.scale if s.scale is not None else s.scale_factor * (self.lambda_max + damping)

        if s.batch_size >= n:
            # The whole fitting set every step: deterministic (the Neumann series of C / scale).
            def hvp(batch_idx, v):
                return self.matvec(model, inputs)(v)
        else:

            def hvp(batch_idx, v):
                batch = jax.tree.map(lambda a: a[batch_idx], inputs)
                return self.matvec(model, batch)(v)

        def sample(k):
            return jax.random.randint(k, (min(s.batch_size, n),), 0, n)

        def solve(b, k):
            keys = jax.random.split(k, s.num_repeats)
            xs = jax.vmap(
                lambda kk: lissa(
                    hvp,
                    b,
                    sample,
                    key=kk,
                    max_steps=s.num_iterations,
                    scale=scale,
                    damping=damping,
                )[0]
            )(keys)
            return jnp.mean(xs, axis=0)

        return jax.vmap(solve)(g, jax.random.split(key, g.shape[0]))
