"""`Identity`: curvature `I`, scores are gradient dot products over `1 + damping`."""

import equinox as eqx

from ._base import InfluenceFactors, Strategy


class Identity(Strategy):
    """Curvature `I`: scores are gradient dot products over `1 + damping`."""

    block_diagonal: bool = eqx.field(default=False, static=True)

    def fit(self, model, train, layout, *, key, batch_size):
        return IdentityFactors(**layout.common(self))


class IdentityFactors(InfluenceFactors):
    def precondition(self, model, g, damping, key, fit_inputs):
        return g / (1.0 + damping)
