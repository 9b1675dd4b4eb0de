"""Multi-Rate VAE training objective and rate-distortion evaluation (Bae et al. 2023).

Training (the paper's Algorithm 1): every minibatch step draws **one** η ~ U(log a, log b) and
takes a step on `D + e^η R` of the MR-VAE conditioned on β = e^η. `per_example_beta=True` draws
one β per example instead (what the authors' code does). Evaluation reads the whole
rate-distortion curve off the one trained model at log-spaced β.
"""

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._likelihoods import Likelihood
from ._vae import (
    VAE,
    MultiRateVAE,
    active_units,
    beta_vae_loss,
    check_beta_in_range,
    rate_distortion,
)


def _check_range(beta_range) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in beta_range)
    except (TypeError, ValueError):
        raise TypeError(f"`beta_range` must be a pair (a, b), got {beta_range!r}.") from None
    if not (0 < a < b and math.isfinite(b)):
        raise ValueError(f"`beta_range` must be (a, b) with 0 < a < b, got {beta_range!r}.")
    return a, b


def sample_beta(
    key: PRNGKeyArray, beta_range: tuple[float, float] = (0.01, 10.0), shape=(), dtype=None
) -> Array:
    """β log-uniform on `[a, b]`: `exp(η)`, `η ~ U(log a, log b)`.

    Example:
        >>> import jax
        >>> beta = sample_beta(jax.random.key(0), (0.01, 10.0), (1000,))
        >>> bool((beta >= 0.01).all() and (beta <= 10.0).all())
        True
    """
    a, b = _check_range(beta_range)
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    eta = jax.random.uniform(key, tuple(shape), dtype, math.log(a), math.log(b))
    return jnp.exp(eta)


def log_spaced_betas(n: int = 20, beta_range: tuple[float, float] = (0.01, 10.0)) -> np.ndarray:
    """`n` log-spaced β on `[a, b]` (the authors evaluate 20; the β-VAE baselines use 10).

    Example:
        >>> log_spaced_betas(4, (0.01, 10.0)).round(3).tolist()
        [0.01, 0.1, 1.0, 10.0]
    """
    a, b = _check_range(beta_range)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be an int >= 1, got {n!r}.")
    return np.geomspace(a, b, n)


def mrvae_loss(
    model: MultiRateVAE,
    likelihood: Likelihood,
    x: Float[Array, "batch ..."],
    *,
    key: PRNGKeyArray,
    per_example_beta: bool = False,
) -> Float[Array, ""]:
    """The MR-VAE objective of one minibatch: `mean(D + β R)` with β drawn log-uniform on the
    model's `beta_range`, once for the whole step (Algorithm 1) or once per example.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import BernoulliLoss
        >>> from respax.generative import mlp_vae
        >>> mr = mlp_vae((64,), (32,), 4, multi_rate=True, key=jax.random.key(0))
        >>> x = jnp.zeros((8, 64))
        >>> mrvae_loss(mr, BernoulliLoss(), x, key=jax.random.key(1)).shape
        ()
    """
    if not isinstance(model, MultiRateVAE):
        raise TypeError(f"`model` must be a MultiRateVAE, got {type(model).__name__}.")
    k_beta, k_z = jax.random.split(key)
    shape = (x.shape[0],) if per_example_beta else ()
    dtype = jax.tree.leaves(model.encoder)[0].dtype
    beta = sample_beta(k_beta, model.beta_range, shape, dtype)
    return beta_vae_loss(model, likelihood, x, key=k_z, beta=beta)


class RDCurve(NamedTuple):
    """A rate-distortion curve: one entry per β (nats; `loss = distortion + beta * rate`)."""

    beta: Float[Array, " n"]
    rate: Float[Array, " n"]
    distortion: Float[Array, " n"]
    loss: Float[Array, " n"]
    active_units: Array


def rate_distortion_curve(
    model: MultiRateVAE,
    likelihood: Likelihood,
    x: Float[Array, "batch ..."],
    betas,
    *,
    key: PRNGKeyArray,
    active_threshold: float = 0.01,
) -> RDCurve:
    """Evaluate a trained MR-VAE at every β of `betas` on the batch `x` (the same reparameterized
    noise at every β). A warning if a β lies outside the model's training range.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import BernoulliLoss
        >>> from respax.generative import mlp_vae
        >>> mr = mlp_vae((64,), (32,), 4, multi_rate=True, key=jax.random.key(0))
        >>> curve = rate_distortion_curve(
        ...     mr, BernoulliLoss(), jnp.zeros((8, 64)), [0.1, 1.0], key=jax.random.key(1)
        ... )
        >>> curve.rate.shape
        (2,)
    """
    if not isinstance(model, MultiRateVAE):
        raise TypeError(f"`model` must be a MultiRateVAE, got {type(model).__name__}.")
    given = betas
    betas = jnp.asarray(betas, dtype=jax.tree.leaves(model.encoder)[0].dtype)
    if betas.ndim != 1 or betas.shape[0] < 1:
        raise ValueError(f"`betas` must be a non-empty 1-D array, got shape {betas.shape}.")
    check_beta_in_range(given, model.beta_range)  # skipped for traced β (inside jit)

    def one(beta):
        rd = rate_distortion(model, likelihood, x, key=key, beta=beta)
        au = active_units(model, x, beta=beta, threshold=active_threshold)
        r, d = jnp.mean(rd.rate), jnp.mean(rd.distortion)
        return r, d, d + beta * r, au

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # checked above, once for all β
        r, d, loss, au = jax.lax.map(one, betas)
    return RDCurve(betas, r, d, loss, au)


def beta_vae_rate_distortion(
    model: VAE,
    likelihood: Likelihood,
    x: Float[Array, "batch ..."],
    beta,
    *,
    key: PRNGKeyArray,
    active_threshold: float = 0.01,
) -> RDCurve:
    """The one-point `RDCurve` of a β-VAE trained at `beta` (vmap it over a population).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import BernoulliLoss
        >>> from respax.generative import mlp_vae
        >>> vae = mlp_vae((64,), (32,), 4, key=jax.random.key(0))
        >>> p = beta_vae_rate_distortion(vae, BernoulliLoss(), jnp.zeros((8, 64)), 1.0,
        ...                              key=jax.random.key(1))
        >>> p.rate.shape
        (1,)
    """
    rd = rate_distortion(model, likelihood, x, key=key)
    r, d = jnp.mean(rd.rate), jnp.mean(rd.distortion)
    beta = jnp.asarray(beta, r.dtype)
    au = active_units(model, x, threshold=active_threshold)
    return RDCurve(*(jnp.reshape(v, (1,)) for v in (beta, r, d, d + beta * r, au)))


def distortion_at_rate(rates, distortions, query_rates) -> np.ndarray:
    """Piecewise-linear interpolation of a rate-distortion curve at `query_rates`; NaN outside
    the curve's rate range (no extrapolation). The curve's points are sorted by rate first.

    This compares two curves at *matched rate* (curve dominance), the comparison that does not
    mislead, unlike distortion at equal β.

    Example:
        >>> distortion_at_rate([0.0, 10.0], [50.0, 30.0], [5.0, 20.0]).tolist()
        [40.0, nan]
    """
    r, d = np.asarray(rates, np.float64), np.asarray(distortions, np.float64)
    if r.shape != d.shape or r.ndim != 1 or r.size < 2:
        raise ValueError(
            f"`rates` and `distortions` must be 1-D of one length >= 2, got {r.shape}, {d.shape}."
        )
    order = np.argsort(r)
    r, d = r[order], d[order]
    q = np.asarray(query_rates, np.float64)
    out = np.interp(q, r, d)
    return np.where((q < r[0]) | (q > r[-1]), np.nan, out)
