"""Latent traversals: decode a code with one latent swept over a range and the others fixed
(the qualitative figures of Chen et al. 2018 and of every disentanglement paper)."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._vae import VAE, MultiRateVAE


def latent_traversal(
    model,
    z: Float[Array, " latent"],
    values: Float[Array, " steps"],
    *,
    dims: Sequence[int] | None = None,
    beta=None,
) -> Array:
    """The decoder's outputs along axis-aligned sweeps through the latent space.

    Row `i`, column `j` decodes `z` with latent `dims[i]` replaced by `values[j]` and every
    other latent left at its value in `z`. Pure and jittable (`dims` is static: a tuple of
    ints); nothing is jitted here.

    Args:
        model: a `VAE` or a `MultiRateVAE` (anything with `decode(z, beta)` for one latent).
        z: the code the sweeps start from, `(latent,)`, e.g. an image's posterior mean.
        values: the values each swept latent takes, `(steps,)`, e.g. `jnp.linspace(-2, 2, 7)`.
        dims: the latents to sweep, in the order of the rows (default: all of them).
        beta: for a `MultiRateVAE` the β it decodes at; `None` for a `VAE`.

    Returns:
        `(len(dims), steps, *output)` decoder outputs (likelihood parameters: Bernoulli logits
        for a Bernoulli decoder; apply `jax.nn.sigmoid` for pixel means).

    Raises:
        ValueError: `z` is not one code, `values` not 1-D, or `dims` outside `[0, latent)`.
        TypeError: `model` has no `decode`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.generative import mlp_vae
        >>> vae = mlp_vae((16,), (8,), 3, key=jax.random.key(0))
        >>> out = latent_traversal(vae, jnp.zeros(3), jnp.linspace(-2.0, 2.0, 5), dims=(0, 2))
        >>> out.shape
        (2, 5, 16)
    """
    if not callable(getattr(model, "decode", None)):
        raise TypeError(
            f"`model` must have a `decode(z, beta)` method, got {type(model).__name__}."
        )
    if isinstance(model, MultiRateVAE) and beta is None:
        raise TypeError("a MultiRateVAE decodes at a β: pass `beta`.")
    if isinstance(model, VAE) and beta is not None:
        raise TypeError("a VAE (β-VAE) is not conditioned on β: pass `beta=None`.")
    if jnp.ndim(z) != 1:
        raise ValueError(f"`z` must be one code of shape (latent,), got shape {jnp.shape(z)}.")
    if jnp.ndim(values) != 1 or jnp.shape(values)[0] < 1:
        raise ValueError(f"`values` must be a non-empty 1-D array, got shape {jnp.shape(values)}.")
    latent = jnp.shape(z)[0]
    if dims is None:
        dims = tuple(range(latent))
    try:
        dims = tuple(int(d) for d in dims)
    except TypeError:
        raise TypeError(f"`dims` must be a sequence of ints, got {dims!r}.") from None
    if not dims or any(not 0 <= d < latent for d in dims):
        raise ValueError(f"`dims` must be non-empty latent indices in [0, {latent}), got {dims}.")
    z = jnp.asarray(z)
    values = jnp.asarray(values, z.dtype)
    onehot = jax.nn.one_hot(jnp.asarray(dims), latent, dtype=z.dtype)[:, None, :]  # (n, 1, L)
    codes = z * (1 - onehot) + onehot * values[None, :, None]  # (n, steps, L)
    flat = codes.reshape(-1, latent)
    out = jax.vmap(lambda c: model.decode(c, beta))(flat)
    return out.reshape(codes.shape[:2] + out.shape[1:])
