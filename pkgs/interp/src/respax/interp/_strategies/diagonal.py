"""`Diagonal`: the exact diagonal of the analytic expected GGN (or of the sampled Fisher)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._influence_model import FlatModel, batched_map
from ._base import InfluenceFactors, Strategy, _check_int
from .exact import curvature_rows


class Diagonal(Strategy):
    """The exact diagonal of the analytic expected GGN (deterministic, no label sampling).

    Args:
        mc_samples: None (analytic) or the number of sampled targets per example.
    """

    mc_samples: int | None = eqx.field(default=None, static=True)
    block_diagonal: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        _check_int("mc_samples", self.mc_samples, allow_none=True)

    def fit_needs_key(self) -> bool:
        return self.mc_samples is not None

    def fit(self, model, train, layout, *, key, batch_size):
        d = diagonal_ggn(
            model, train[0], mc_samples=self.mc_samples, key=key, batch_size=batch_size
        )
        d = eqx.error_if(d, ~jnp.all(jnp.isfinite(d)), "fit_factors: non-finite curvature.")
        return DiagonalFactors(diagonal=d, **layout.common(self))


class DiagonalFactors(InfluenceFactors):
    diagonal: Float[Array, " p"]

    def precondition(self, model, g, damping, key, fit_inputs):
        d = self.diagonal + damping
        d = eqx.error_if(
            d, jnp.any(d <= 0), "diagonal influence: a zero curvature entry needs damping > 0."
        )
        return g / d


def diagonal_ggn(
    model: FlatModel, inputs, *, mc_samples: int | None = None, key=None, batch_size=None
) -> Float[Array, " p"]:
    """The exact diagonal of the analytic GGN (or of the sampled Fisher)."""
    n = jax.tree.leaves(inputs)[0].shape[0]
    if key is None and mc_samples is not None:
        raise ValueError("`key` is required with `mc_samples` (it draws the sampled targets).")
    key = jax.random.key(0) if key is None else key  # unused without mc_samples
    rows_fn = curvature_rows(model, inputs, mc_samples, key)
    sq = batched_map(
        lambda x, i: jnp.sum(rows_fn(x, i) ** 2, axis=0), (inputs, jnp.arange(n)), batch_size
    )
    return jnp.mean(sq, axis=0)
