"""The ELBO's KL term split into index-code mutual information, total correlation and
dimension-wise KL (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs").

For a factorised Gaussian posterior `q(z|n) = N(μ_n, diag(exp(logvar_n)))`, a standard normal
prior and the aggregate posterior `q(z) = (1/N) Σ_n q(z|n)`:

    E_n KL(q(z|n) ‖ p(z)) = I_q(z; n) + KL(q(z) ‖ Π_d q(z_d)) + Σ_d KL(q(z_d) ‖ p(z_d))
                           =    MI     +         TC            +        dwKL

Each term is estimated per sample `z_i ~ q(z|x_i)` from the minibatch's own posteriors, so that
the three single-sample estimates telescope exactly to `log q(z_i|x_i) − log p(z_i)`:

* `"mws"`, minibatch weighted sampling as printed in the paper and coded by the authors:
  `log q(z_i) ≈ logsumexp_j log q(z_i|x_j) − log(N M)` and the same per dimension. Its weights
  sum to `1/N`, not 1, so its TC carries a constant offset of `(D − 1) log N` nats against the
  aggregate posterior's (a constant that leaves the gradients unchanged).
* `"mss"`, minibatch stratified sampling: importance weights `1/N` on the sample's own
  posterior, `(N − M)/(N M)` on one other and `1/M` on the remaining `M − 1`, with `M = B − 1`;
  every row sums to 1. The authors' `_log_importance_weight_matrix` writes these weights into
  columns 0 and 1 instead of the diagonals (rtqichen/beta-tcvae#1); this one is the intended
  matrix, see `mss_log_weights`.

`kl_decomposition_full` is the evaluation-time estimator of the authors' `elbo_decomposition.py`:
samples against every posterior of the dataset, with the exact `1/N` mixture weights.
"""

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

Estimator = Literal["mws", "mss"]
Weight = float | Float[Array, ""]
_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(
    z: Float[Array, "..."], mu: Float[Array, "..."], logvar: Float[Array, "..."]
) -> Float[Array, "..."]:
    """Elementwise `log N(z; mu, exp(logvar))` (the arguments broadcast).

    Example:
        >>> import jax.numpy as jnp
        >>> float(gaussian_log_density(jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))).__round__(4)
        -0.9189
    """
    return -0.5 * (_LOG_2PI + logvar + (z - mu) ** 2 * jnp.exp(-logvar))


class KLDecomposition(eqx.Module):
    """The three KL terms, as batch means (nats) and as the per-sample log-densities they come from.

    `mi + tc + dwkl == kl` up to rounding: each is a difference of consecutive terms of
    `log q(z|x) ≥ log q(z) ≥ log Π_d q(z_d) ≥ log p(z)` per sample.

    Attributes:
        mi: index-code mutual information, mean of `log q(z|x) − log q(z)`.
        tc: total correlation, mean of `log q(z) − log Π_d q(z_d)`.
        dwkl: dimension-wise KL, mean of `log Π_d q(z_d) − log p(z)`.
        kl: the single-sample KL, mean of `log q(z|x) − log p(z)`.
        log_qz_given_x: `log q(z_i|x_i)` per sample.
        log_qz: the estimate of `log q(z_i)` per sample.
        log_prod_qzj: the estimate of `Σ_d log q(z_{i,d})` per sample.
        log_pz: `log p(z_i)` under the standard normal prior, per sample.
    """

    mi: Float[Array, ""]
    tc: Float[Array, ""]
    dwkl: Float[Array, ""]
    kl: Float[Array, ""]
    log_qz_given_x: Float[Array, " samples"]
    log_qz: Float[Array, " samples"]
    log_prod_qzj: Float[Array, " samples"]
    log_pz: Float[Array, " samples"]

    def weighted(self, alpha: "Weight" = 1.0, beta: "Weight" = 1.0, gamma: "Weight" = 1.0) -> Array:
        """`α·MI + β·TC + γ·dwKL`, the KL penalty of the weighted objective (batch mean).

        β-TCVAE is `α = γ = 1, β > 1`; β-VAE scales all three by β; `α = β = γ = 1` is the
        plain ELBO's single-sample KL.
        """
        return alpha * self.mi + beta * self.tc + gamma * self.dwkl

    def per_sample_weighted(
        self, alpha: "Weight" = 1.0, beta: "Weight" = 1.0, gamma: "Weight" = 1.0
    ) -> Float[Array, " samples"]:
        """`α·MI + β·TC + γ·dwKL` per sample (the batch mean is `weighted`)."""
        mi = self.log_qz_given_x - self.log_qz
        tc = self.log_qz - self.log_prod_qzj
        dwkl = self.log_prod_qzj - self.log_pz
        return alpha * mi + beta * tc + gamma * dwkl


def _from_log_densities(log_qzx, log_qz, log_prod, log_pz) -> KLDecomposition:
    return KLDecomposition(
        mi=jnp.mean(log_qzx - log_qz),
        tc=jnp.mean(log_qz - log_prod),
        dwkl=jnp.mean(log_prod - log_pz),
        kl=jnp.mean(log_qzx - log_pz),
        log_qz_given_x=log_qzx,
        log_qz=log_qz,
        log_prod_qzj=log_prod,
        log_pz=log_pz,
    )


def mss_log_weights(batch_size: int, dataset_size: int, dtype=None) -> Float[Array, "b b"]:
    """The log importance weights of minibatch stratified sampling, one row per sample.

    With `M = batch_size − 1`: `1/N` on the diagonal (the sample's own posterior),
    `(N − M)/(N M)` at `(i, i + 1 mod B)` and `1/M` elsewhere, so every row sums to 1. The
    authors' code writes the `1/N` and `(N − M)/(N M)` entries with a flat stride of `B`, i.e.
    into columns 0 and 1; this is the matrix it meant.

    Args:
        batch_size: the minibatch size `B ≥ 2`.
        dataset_size: the number of training examples `N ≥ B`.
        dtype: the weights' dtype (default: JAX's default float).

    Returns:
        A `(B, B)` array of log-weights.

    Example:
        >>> import jax.numpy as jnp
        >>> w = jnp.exp(mss_log_weights(4, 10))
        >>> [round(float(r), 6) for r in w.sum(1)], round(float(w[2, 2]), 6)
        ([1.0, 1.0, 1.0, 1.0], 0.1)
    """
    b, n = _check_sizes(batch_size, dataset_size)
    if b < 2:
        raise ValueError(f"`batch_size` must be >= 2 for the MSS estimator, got {b}.")
    m = b - 1
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    eye = jnp.eye(b, dtype=bool)
    nxt = jnp.roll(eye, 1, axis=1)  # (i, i + 1 mod B)
    w = jnp.where(eye, 1.0 / n, jnp.where(nxt, (n - m) / (n * m), 1.0 / m))
    return jnp.log(w).astype(dtype)


def _check_sizes(batch_size, dataset_size) -> tuple[int, int]:
    if not isinstance(dataset_size, int) or isinstance(dataset_size, bool):
        raise TypeError(f"`dataset_size` must be an int, got {type(dataset_size).__name__}.")
    if dataset_size < batch_size:
        raise ValueError(
            f"`dataset_size` must be at least the batch size {batch_size}, got {dataset_size}."
        )
    return int(batch_size), int(dataset_size)


def _check_codes(z, mu, logvar) -> None:
    shapes = [jnp.shape(a) for a in (z, mu, logvar)]
    if len(shapes[0]) != 2 or len(set(shapes)) != 1:
        raise ValueError(
            f"`z`, `mu` and `logvar` must share one (batch, latent) shape, got {shapes}."
        )


def kl_decomposition(
    z: Float[Array, "batch latent"],
    mu: Float[Array, "batch latent"],
    logvar: Float[Array, "batch latent"],
    dataset_size: int,
    estimator: str = "mws",
) -> KLDecomposition:
    """Minibatch estimates of MI, TC and dimension-wise KL for samples `z_i ~ q(z|x_i)`.

    Builds the `B × B × D` matrix `log q(z_{i,d} | x_j)` once (as the authors do) and reads
    every term from it; the `log q(z_i|x_i)` term is its diagonal, so the three terms sum
    exactly to the single-sample `log q(z|x) − log p(z)`.

    Args:
        z: one posterior sample per example, `(B, D)`.
        mu: the posterior means, `(B, D)`.
        logvar: the posterior log-variances, `(B, D)`.
        dataset_size: the number of training examples `N` the minibatch is drawn from.
        estimator: `"mws"` (minibatch weighted sampling) or `"mss"` (minibatch stratified
            sampling); see the module docstring.

    Returns:
        A `KLDecomposition`; `.weighted(alpha, beta, gamma)` is the weighted penalty.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> mu, logvar = jnp.zeros((8, 2)), jnp.zeros((8, 2))
        >>> z = jax.random.normal(jax.random.key(0), (8, 2))
        >>> d = kl_decomposition(z, mu, logvar, dataset_size=100, estimator="mss")
        >>> bool(jnp.allclose(d.mi + d.tc + d.dwkl, d.kl, atol=1e-5))
        True
    """
    if estimator not in ("mws", "mss"):
        raise ValueError(f"`estimator` must be 'mws' or 'mss', got {estimator!r}.")
    _check_codes(z, mu, logvar)
    b = z.shape[0]
    _, n = _check_sizes(b, dataset_size)
    mat = gaussian_log_density(z[:, None, :], mu[None], logvar[None])  # [i, j, d]
    log_qzx = jnp.sum(jnp.diagonal(mat, axis1=0, axis2=1), axis=0)
    log_pz = jnp.sum(gaussian_log_density(z, jnp.zeros_like(z), jnp.zeros_like(z)), axis=1)
    if estimator == "mws":
        log_nm = jnp.asarray(math.log(n * b), z.dtype)
        log_qz = jax.nn.logsumexp(jnp.sum(mat, 2), axis=1) - log_nm
        log_prod = jnp.sum(jax.nn.logsumexp(mat, axis=1) - log_nm, axis=1)
    else:
        log_w = mss_log_weights(b, n, dtype=z.dtype)
        log_qz = jax.nn.logsumexp(log_w + jnp.sum(mat, 2), axis=1)
        log_prod = jnp.sum(jax.nn.logsumexp(log_w[:, :, None] + mat, axis=1), axis=1)
    return _from_log_densities(log_qzx, log_qz, log_prod, log_pz)


def mixture_log_density(
    z: Float[Array, "samples latent"],
    mu: Float[Array, "n latent"],
    logvar: Float[Array, "n latent"],
    *,
    chunk_size: int = 256,
) -> tuple[Float[Array, " samples"], Float[Array, "samples latent"]]:
    """`log (1/N) Σ_n q(z_s|x_n)` jointly and per dimension, against all `N` posteriors.

    The `N` posteriors are visited in chunks of `chunk_size` with a running logsumexp, so the
    memory is `O(S · chunk_size · D)` however large `N` is (737,280 for dSprites).

    Args:
        z: the points to score, `(S, D)`.
        mu: the mixture's component means, `(N, D)`.
        logvar: the components' log-variances, `(N, D)`.
        chunk_size: components per step.

    Returns:
        `(log q(z_s), log q(z_{s,d}))` of shapes `(S,)` and `(S, D)`.

    Example:
        >>> import jax.numpy as jnp
        >>> joint, marg = mixture_log_density(jnp.zeros((3, 2)), jnp.zeros((5, 2)),
        ...                                   jnp.zeros((5, 2)), chunk_size=2)
        >>> [round(float(j), 4) for j in joint]
        [-1.8379, -1.8379, -1.8379]
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int, got {chunk_size!r}.")
    if jnp.ndim(mu) != 2 or jnp.shape(mu) != jnp.shape(logvar) or jnp.ndim(z) != 2:
        raise ValueError(
            "`z` must be (samples, latent) and `mu`, `logvar` one shared (n, latent) shape, got "
            f"{jnp.shape(z)}, {jnp.shape(mu)}, {jnp.shape(logvar)}."
        )
    if jnp.shape(z)[1] != jnp.shape(mu)[1]:
        raise ValueError(f"`z` has {z.shape[1]} latents but `mu` has {mu.shape[1]}.")
    n, d = mu.shape
    chunk = min(chunk_size, n)
    steps = -(-n // chunk)
    pad = steps * chunk - n
    valid = jnp.arange(steps * chunk) < n
    mu_c = jnp.pad(mu, ((0, pad), (0, 0))).reshape(steps, chunk, d)
    lv_c = jnp.pad(logvar, ((0, pad), (0, 0))).reshape(steps, chunk, d)
    ok_c = valid.reshape(steps, chunk)
    neg_inf = jnp.asarray(-jnp.inf, z.dtype)

    def body(carry, xs):
        joint, marg = carry
        m, lv, ok = xs
        dens = gaussian_log_density(z[:, None, :], m[None], lv[None])  # (S, C, D)
        dens = jnp.where(ok[None, :, None], dens, neg_inf)
        joint = jnp.logaddexp(joint, jax.nn.logsumexp(jnp.sum(dens, 2), axis=1))
        marg = jnp.logaddexp(marg, jax.nn.logsumexp(dens, axis=1))
        return (joint, marg), None

    init = (jnp.full(z.shape[:1], neg_inf), jnp.full(z.shape, neg_inf))
    (joint, marg), _ = jax.lax.scan(body, init, (mu_c, lv_c, ok_c))
    log_n = jnp.asarray(math.log(n), z.dtype)
    return joint - log_n, marg - log_n


def kl_decomposition_full(
    mu: Float[Array, "n latent"],
    logvar: Float[Array, "n latent"],
    *,
    key: PRNGKeyArray,
    num_samples: int = 10_000,
    chunk_size: int = 256,
) -> KLDecomposition:
    """The full-dataset decomposition, as the authors evaluate it (`elbo_decomposition.py`).

    Draws one `z ~ q(z|x_n)` for a random subset of `num_samples` examples (all of them when
    `N ≤ num_samples`) and scores each against the whole aggregate posterior
    `q(z) = (1/N) Σ_n q(z|x_n)` and its marginals. TC is reported in nats; unlike the minibatch
    MWS estimate it has no `log N` offset.

    Args:
        mu: every example's posterior mean, `(N, D)`.
        logvar: every example's posterior log-variance, `(N, D)`.
        key: draws the subset and the samples.
        num_samples: how many samples to score (10,000 as the authors).
        chunk_size: posteriors per step of the running logsumexp.

    Returns:
        A `KLDecomposition` over the `min(N, num_samples)` samples.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> mu = jax.random.normal(jax.random.key(0), (50, 2))
        >>> d = kl_decomposition_full(mu, jnp.zeros((50, 2)) - 2.0, key=jax.random.key(1))
        >>> bool(jnp.allclose(d.mi + d.tc + d.dwkl, d.kl, atol=1e-4))
        True
    """
    if jnp.ndim(mu) != 2 or jnp.shape(mu) != jnp.shape(logvar):
        raise ValueError(
            f"`mu` and `logvar` must share one (n, latent) shape, got {jnp.shape(mu)} and "
            f"{jnp.shape(logvar)}."
        )
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}.")
    n = mu.shape[0]
    s = min(n, num_samples)
    k_idx, k_z = jax.random.split(key)
    idx = jax.random.permutation(k_idx, n)[:s]
    m, lv = mu[idx], logvar[idx]
    z = m + jnp.exp(0.5 * lv) * jax.random.normal(k_z, m.shape, m.dtype)
    log_qzx = jnp.sum(gaussian_log_density(z, m, lv), axis=1)
    log_pz = jnp.sum(gaussian_log_density(z, jnp.zeros_like(z), jnp.zeros_like(z)), axis=1)
    log_qz, log_marg = mixture_log_density(z, mu, logvar, chunk_size=chunk_size)
    return _from_log_densities(log_qzx, log_qz, jnp.sum(log_marg, axis=1), log_pz)
