"""Multi-scale factor-out (RealNVP / Glow): part of the features leaves the flow early, the rest
goes on through further blocks.

`FactorOut(factored, blocks)` keeps the first `factored` entries of the last axis as they are
(they go to the base distribution: RealNVP's N(0, I) prior on the factored-out variables) and
applies `blocks` to the remaining ones. Nesting FactorOut blocks gives the usual levels, e.g.
`[Squeeze, level-1 steps, FactorOut(2 * C, [level-2 steps, FactorOut(...)])]`. The inner blocks
must keep their event shape (put a `Squeeze` before a `FactorOut`, not inside it).
"""

import equinox as eqx
import jax.numpy as jnp

from ._flow_scan import Chain
from ._invertible import InvertibleBlock, _check_shape


class FactorOut(InvertibleBlock):
    """Factor out the first `factored` entries of the last axis; transform the rest by `blocks`.

    log|det| is the inner blocks' (the factored part is the identity); Lipschitz bounds are the
    inner ones' (the identity has bound 1), and so is the context.

    Args:
        factored: how many entries of the last axis leave the flow here (>= 1).
        blocks: invertible blocks on the remaining `(..., c - factored)` event shape.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.generative import AffineCoupling
        >>> b = FactorOut(2, [AffineCoupling((2,), key=jax.random.key(0), zero_init=False)])
        >>> y, ld = b.forward_and_log_det(jnp.arange(4.0))
        >>> y[:2], bool(jnp.allclose(b.inverse_and_log_det(y)[0], jnp.arange(4.0), atol=1e-5))
        (Array([0., 1.], dtype=float32), True)
    """

    inner: Chain
    factored: int = eqx.field(static=True)
    event_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, factored: int, blocks):
        inner = Chain(blocks)
        if not isinstance(factored, int) or factored < 1:
            raise ValueError(f"`factored` must be an int >= 1, got {factored!r}.")
        if inner.out_shape != inner.event_shape:
            raise ValueError(
                "`blocks` must keep their event shape inside FactorOut (squeeze before it); "
                f"they map {inner.event_shape} to {inner.out_shape}."
            )
        self.inner = inner
        self.factored = factored
        self.event_shape = (*inner.event_shape[:-1], inner.event_shape[-1] + factored)

    @property
    def context_shape(self):
        shapes = [getattr(b, "context_shape", None) for b in self.inner.blocks]
        return next((s for s in shapes if s is not None), None)

    def forward_and_log_det(self, x, context=None):
        _check_shape("x", x, self.event_shape)
        kept, rest = x[..., : self.factored], x[..., self.factored :]
        rest, ld = self.inner.forward_and_log_det(rest, context)
        return jnp.concatenate([kept, rest], axis=-1), ld

    def inverse_and_log_det(self, y, context=None):
        _check_shape("y", y, self.event_shape)
        kept, rest = y[..., : self.factored], y[..., self.factored :]
        rest, ld = self.inner.inverse_and_log_det(rest, context)
        return jnp.concatenate([kept, rest], axis=-1), ld

    def lipschitz_bound(self):
        fwd, inv = self.inner.lipschitz_bound()
        return jnp.maximum(1.0, fwd), jnp.maximum(1.0, inv)
