"""The β-TCVAE objective (Chen et al. 2018) on the package's VAEs (`VAE`, `posterior`)."""

import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._kl_decomposition import KLDecomposition, kl_decomposition
from ._likelihoods import negative_log_likelihood
from ._vae import posterior


def tcvae_loss(
    model,
    likelihood,
    x: Float[Array, "batch ..."],
    *,
    key: PRNGKeyArray,
    dataset_size: int,
    beta: float | Float[Array, ""],
    alpha: float | Float[Array, ""] = 1.0,
    gamma: float | Float[Array, ""] = 1.0,
    estimator: str = "mss",
) -> tuple[Float[Array, ""], KLDecomposition]:
    """`mean(−log p(x|z)) + α·MI + β·TC + γ·dwKL` of a minibatch, and its decomposition.

    β-TCVAE is `α = γ = 1, β > 1` (the ELBO plus `(β − 1)·TC`); `α = β = γ` is a β-VAE with the
    single-sample Monte-Carlo KL, as in the authors' code.

    Args:
        model: a `VAE` (one-example encoder/decoder, see `mlp_vae`).
        likelihood: `respax.core.BernoulliLoss()` or `GaussianLoss(...)`.
        x: the minibatch.
        key: the reparameterization noise.
        dataset_size: the number of training examples the minibatch is drawn from.
        beta, alpha, gamma: the weights of TC, MI and dimension-wise KL.
        estimator: `"mss"` or `"mws"` (see `kl_decomposition`).

    Returns:
        `(loss, decomposition)`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import BernoulliLoss
        >>> from respax.generative import mlp_vae
        >>> vae = mlp_vae((16,), (8,), 2, key=jax.random.key(0))
        >>> loss, d = tcvae_loss(vae, BernoulliLoss(), jnp.zeros((4, 16)), key=jax.random.key(1),
        ...                      dataset_size=100, beta=6.0)
        >>> loss.shape
        ()
    """
    post = posterior(model, likelihood, x, key=key)
    nll = negative_log_likelihood(likelihood, post.outputs, x)
    dec = kl_decomposition(post.z, post.mu, post.logvar, dataset_size, estimator)
    return jnp.mean(nll) + dec.weighted(alpha, beta, gamma), dec
