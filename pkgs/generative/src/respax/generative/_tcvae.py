"""The β-TCVAE objective (Chen et al. 2018) on the package's VAEs (`VAE`, `posterior`), and
the Multi-Rate VAE trained on it (one β-conditioned model for the whole β range)."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._kl_decomposition import KLDecomposition, kl_decomposition
from ._likelihoods import negative_log_likelihood
from ._mrvae import sample_beta
from ._vae import MultiRateVAE, posterior


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
    single-sample Monte-Carlo KL, as in the authors' code. A `MultiRateVAE` is conditioned on
    the TC weight `beta` (encoder and decoder), as `mrvae_tcvae_loss` trains it.

    Args:
        model: a `VAE` (one-example encoder/decoder, see `mlp_vae`) or a `MultiRateVAE`.
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
    cond = beta if isinstance(model, MultiRateVAE) else None
    post = posterior(model, likelihood, x, key=key, beta=cond)
    nll = negative_log_likelihood(likelihood, post.outputs, x)
    dec = kl_decomposition(post.z, post.mu, post.logvar, dataset_size, estimator)
    return jnp.mean(nll) + dec.weighted(alpha, beta, gamma), dec


def mrvae_tcvae_loss(
    model: MultiRateVAE,
    likelihood,
    x: Float[Array, "batch ..."],
    *,
    key: PRNGKeyArray,
    dataset_size: int,
    estimator: str = "mss",
) -> tuple[Float[Array, ""], KLDecomposition]:
    """The MR-VAE on the β-TCVAE objective: one β drawn log-uniform on `model.beta_range` per
    step (the MR-VAE's Algorithm 1), the model conditioned on it, and
    `mean(−log p(x|z)) + MI + β·TC + dwKL` at that β (see `tcvae_loss`).

    Args:
        model: a `MultiRateVAE` (e.g. `mlp_vae(..., multi_rate=True, beta_range=(0.1, 10.0))`).
        likelihood: `respax.core.BernoulliLoss()` or `GaussianLoss(...)`.
        x: the minibatch.
        key: draws β and the reparameterization noise.
        dataset_size: the number of training examples the minibatch is drawn from.
        estimator: `"mss"` or `"mws"`.

    Returns:
        `(loss, decomposition)`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import BernoulliLoss
        >>> from respax.generative import mlp_vae
        >>> mr = mlp_vae((16,), (8,), 2, multi_rate=True, beta_range=(0.1, 10.0),
        ...              key=jax.random.key(0))
        >>> loss, d = mrvae_tcvae_loss(mr, BernoulliLoss(), jnp.zeros((4, 16)),
        ...                            key=jax.random.key(1), dataset_size=100)
        >>> loss.shape
        ()
    """
    if not isinstance(model, MultiRateVAE):
        raise TypeError(f"`model` must be a MultiRateVAE, got {type(model).__name__}.")
    k_beta, k_z = jax.random.split(key)
    dtype = jax.tree.leaves(model.encoder)[0].dtype
    beta = sample_beta(k_beta, model.beta_range, (), dtype)
    return tcvae_loss(
        model, likelihood, x, key=k_z, dataset_size=dataset_size, beta=beta, estimator=estimator
    )
