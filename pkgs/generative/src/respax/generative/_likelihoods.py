"""Decoder likelihoods: `respax.core`'s Bernoulli and Gaussian output losses, as full negative
log-likelihoods in nats over whole examples (images are flattened)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from respax.core import BernoulliLoss, GaussianLoss

Likelihood = BernoulliLoss | GaussianLoss


def check_likelihood(likelihood) -> None:
    """Raise `TypeError` unless `likelihood` is a `BernoulliLoss` or a `GaussianLoss`."""
    if not isinstance(likelihood, BernoulliLoss | GaussianLoss):
        raise TypeError(
            "`likelihood` must be respax.core.BernoulliLoss() (binary data, logits out) or "
            f"respax.core.GaussianLoss(variance) (real data, means out), got {likelihood!r}."
        )


def check_data(likelihood, x) -> None:
    """Outside `jit`: Bernoulli data must lie in [0, 1] (a `ValueError` naming `x` otherwise)."""
    if isinstance(likelihood, BernoulliLoss) and not isinstance(x, jax.core.Tracer):
        arr = np.asarray(x)
        if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1 or np.isnan(arr).any()):
            raise ValueError(
                "`x` must lie in [0, 1] for a Bernoulli decoder (binarize or rescale the data), "
                f"got values in [{np.nanmin(arr)}, {np.nanmax(arr)}]."
            )


def negative_log_likelihood(
    likelihood: Likelihood, outputs: Float[Array, "batch ..."], x: Float[Array, "batch ..."]
) -> Float[Array, " batch"]:
    """`-log p(x | outputs)` of every example in nats, summed over the example's entries.

    Bernoulli: sigmoid cross-entropy on logits. Gaussian: `respax.core.GaussianLoss` plus its
    normalising constant `k/2 log(2π variance)`, so distortions are true nats.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.core import BernoulliLoss
        >>> nll = negative_log_likelihood(BernoulliLoss(), jnp.zeros((1, 2)), jnp.ones((1, 2)))
        >>> round(float(nll[0]), 4)  # 2 log 2
        1.3863
    """
    check_likelihood(likelihood)
    if outputs.shape != x.shape:
        raise ValueError(
            f"decoder outputs of shape {outputs.shape} do not match `x` of shape {x.shape}."
        )
    b = x.shape[0]
    flat_out, flat_x = jnp.reshape(outputs, (b, -1)), jnp.reshape(x, (b, -1)).astype(outputs.dtype)
    nll = likelihood.per_example_loss(flat_out, flat_x)
    if isinstance(likelihood, GaussianLoss):
        k = flat_x.shape[1]
        nll = nll + 0.5 * k * math.log(2 * math.pi * likelihood.variance)
    return nll
