"""`Flow(base, blocks)`: a normalizing flow x -> z = F(x), with log p(x) = log p_base(z) + log|det|.

Methods take one example of `event_shape` or a batch `(*batch, *event_shape)` (vmapped);
a context, when the blocks are conditional, has shape `(*batch, context_size)`.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._invertible import InvertibleBlock


class StandardNormal(eqx.Module):
    """The standard normal base distribution N(0, I) on `event_shape`.

    Example:
        >>> import jax.numpy as jnp
        >>> round(float(StandardNormal((2,)).log_prob(jnp.zeros(2))), 4)
        -1.8379
    """

    event_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, event_shape):
        self.event_shape = tuple(event_shape)

    def log_prob(self, z: Float[Array, "..."]) -> Float[Array, ""]:
        d = math.prod(self.event_shape)
        return -0.5 * jnp.sum(z**2) - 0.5 * d * jnp.log(2.0 * jnp.pi).astype(z.dtype)

    def sample(self, key: PRNGKeyArray, dtype=None) -> Float[Array, "..."]:
        return jax.random.normal(key, self.event_shape, dtype or jnp.zeros(()).dtype)


def _event_shape_out(blocks, event_shape):
    shape = tuple(event_shape)
    for i, b in enumerate(blocks):
        if tuple(b.event_shape) != shape:
            raise ValueError(
                f"`blocks[{i}]` expects event shape {tuple(b.event_shape)} but receives {shape}."
            )
        shape = tuple(getattr(b, "out_shape", shape))
    return shape


class Flow(eqx.Module):
    """A normalizing flow: blocks applied in order map data x to the base space z.

    Args:
        base: the base distribution on z (`StandardNormal(z_shape)`).
        blocks: a sequence of `InvertibleBlock`s; the first one's `event_shape` is the data's.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.generative import AffineCoupling, Permute
        >>> keys = jax.random.split(jax.random.key(0), 2)
        >>> blocks = [AffineCoupling((2,), key=keys[0]), Permute((2,)),
        ...           AffineCoupling((2,), key=keys[1])]
        >>> flow = Flow(StandardNormal((2,)), blocks)
        >>> flow.log_prob(jnp.zeros((5, 2))).shape
        (5,)
    """

    base: StandardNormal
    blocks: tuple[InvertibleBlock, ...]
    event_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, base, blocks):
        blocks = tuple(blocks)
        if not blocks:
            raise ValueError("`blocks` must contain at least one InvertibleBlock.")
        for i, b in enumerate(blocks):
            if not isinstance(b, InvertibleBlock):
                raise TypeError(
                    f"`blocks[{i}]` must be an InvertibleBlock, got {type(b).__name__}."
                )
        out = _event_shape_out(blocks, blocks[0].event_shape)
        if out != tuple(base.event_shape):
            raise ValueError(
                f"`base` has event shape {tuple(base.event_shape)}, but the blocks output {out}."
            )
        self.base = base
        self.blocks = blocks
        self.event_shape = tuple(blocks[0].event_shape)

    def _batch_ndim(self, name, x, shape):
        nd = len(shape)
        if x.ndim < nd or tuple(x.shape[x.ndim - nd :]) != tuple(shape):
            raise ValueError(
                f"`{name}` must have shape (*batch, *{tuple(shape)}), got {tuple(x.shape)}."
            )
        return x.ndim - nd

    def _map(self, fn, name, x, shape, context):
        nb = self._batch_ndim(name, x, shape)
        if context is not None and tuple(context.shape[:nb]) != tuple(x.shape[:nb]):
            raise ValueError(
                f"`context` must have the batch shape {tuple(x.shape[:nb])} of "
                f"`{name}`, got shape {tuple(context.shape)}."
            )
        for _ in range(nb):
            fn = jax.vmap(fn)
        return fn(x, context)

    def forward_and_log_det(self, x, context=None):
        """z = F(x) and log|det dF/dx| (per example)."""

        def one(x, c):
            ld = jnp.zeros((), x.dtype)
            for b in self.blocks:
                x, l_ = b.forward_and_log_det(x, c)
                ld = ld + l_
            return x, ld

        return self._map(one, "x", x, self.event_shape, context)

    def inverse_and_log_det(self, z, context=None):
        """x = F^-1(z) and log|det dF^-1/dz| (per example)."""

        def one(z, c):
            ld = jnp.zeros((), z.dtype)
            for b in reversed(self.blocks):
                z, l_ = b.inverse_and_log_det(z, c)
                ld = ld + l_
            return z, ld

        return self._map(one, "z", z, self.base.event_shape, context)

    def forward(self, x, context=None):
        """z = F(x)."""
        return self.forward_and_log_det(x, context)[0]

    def inverse(self, z, context=None):
        """x = F^-1(z)."""
        return self.inverse_and_log_det(z, context)[0]

    def log_prob(self, x, context=None):
        """log p(x) = log p_base(F(x)) + log|det dF/dx| (per example)."""
        z, ld = self.forward_and_log_det(x, context)
        nb = z.ndim - len(self.base.event_shape)
        lp = self.base.log_prob
        for _ in range(nb):
            lp = jax.vmap(lp)
        return lp(z) + ld

    def sample(self, *, key: PRNGKeyArray, sample_shape: tuple[int, ...] = (), context=None):
        """x = F^-1(z) with z ~ base, of shape `(*sample_shape, *event_shape)`."""
        n = math.prod(sample_shape)
        z = jax.vmap(self.base.sample)(jax.random.split(key, n))
        z = z.reshape(*sample_shape, *self.base.event_shape)
        return self.inverse(z, context)

    def lipschitz_bound(self):
        """Products of the blocks' declared bounds `(Lip(F), Lip(F^-1))` (inf if any is inf)."""
        fwd, inv = 1.0, 1.0
        for b in self.blocks:
            f, i = b.lipschitz_bound()
            fwd, inv = fwd * f, inv * i
        return fwd, inv
