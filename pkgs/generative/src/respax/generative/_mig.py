"""Two mutual information gaps (MIG), named apart because they are different numbers.

* `mig_sampled` is Chen et al.'s (2018) metric (`disentanglement_metrics.py` of
  rtqichen/beta-tcvae): one posterior sample per example over a full factor grid, entropies
  `H(z_j)` and `H(z_j | v_k)` estimated by scoring up to 10,000 samples against the Gaussian
  mixture of all (or of the slice's) posteriors, `H(v_k) = log |V_k|`. On dSprites it scores the
  four factors scale, orientation, posX and posY (shape excluded).
* `mig_discrete` is disentanglement_lib's `discrete_mig`: encoder means, each latent cut into 20
  equal-width bins between its min and max (`np.histogram` / `np.digitize`), the plug-in mutual
  information of the binned latent with each factor in nats (`sklearn.metrics.
  mutual_info_score`), `H(v_k)` the factor's empirical entropy.

In both, MIG is the mean over factors of (largest − second largest MI over latents) / H(v_k).
"""

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray
from numpy.typing import NDArray

from ._kl_decomposition import gaussian_log_density

ArrayLike = Array | NDArray


class MIGResult(eqx.Module):
    """A MIG score and what it is made of.

    Attributes:
        mig: the mean normalised gap over the scored factors.
        gaps: per factor, (top-1 − top-2 MI over latents) / H(v_k).
        mutual_info: `(factors, latents)` MI estimates in nats (clamped at 0 by `mig_sampled`).
        factor_entropies: H(v_k) per factor (nats).
        latent_entropies: `mig_sampled`: H(z_j) per latent; `mig_discrete`: the binned
            latents' empirical entropies.
    """

    mig: Float[Array, ""]
    gaps: Float[Array, " factors"]
    mutual_info: Float[Array, "factors latents"]
    factor_entropies: Float[Array, " factors"]
    latent_entropies: Float[Array, " latents"]


def _gap_score(mutual_info, factor_entropies) -> tuple[Array, Array]:
    top2 = jnp.sort(mutual_info, axis=1)[:, ::-1][:, :2]
    second = top2[:, 1] if mutual_info.shape[1] > 1 else jnp.zeros_like(top2[:, 0])
    gaps = (top2[:, 0] - second) / factor_entropies
    return jnp.mean(gaps), gaps


def _check_finite(name: str, x):
    if isinstance(x, jax.core.Tracer):
        return eqx.error_if(x, ~jnp.all(jnp.isfinite(x)), f"`{name}` holds NaN or inf.")
    if not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"`{name}` holds NaN or inf values; expected finite codes.")
    return x


def _check_factor_sizes(factor_sizes) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in factor_sizes)
    except TypeError:
        raise TypeError(
            f"`factor_sizes` must be a sequence of ints, got {factor_sizes!r}."
        ) from None
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"`factor_sizes` must hold positive ints, got {factor_sizes!r}.")
    return sizes


def _mixture_entropies(z, mu, logvar, chunk_size: int) -> Float[Array, " latent"]:
    """`−mean_s log (1/N) Σ_n q(z_{s,d} | x_n)` per dimension, posteriors visited in chunks."""
    n, d = mu.shape
    chunk = min(chunk_size, n)
    steps = -(-n // chunk)
    pad = steps * chunk - n
    mu_c = jnp.pad(mu, ((0, pad), (0, 0))).reshape(steps, chunk, d)
    lv_c = jnp.pad(logvar, ((0, pad), (0, 0))).reshape(steps, chunk, d)
    ok_c = (jnp.arange(steps * chunk) < n).reshape(steps, chunk)
    neg_inf = jnp.asarray(-jnp.inf, z.dtype)

    def body(acc, xs):
        m, lv, ok = xs
        dens = gaussian_log_density(z[:, None, :], m[None], lv[None])
        dens = jnp.where(ok[None, :, None], dens, neg_inf)
        return jnp.logaddexp(acc, jax.nn.logsumexp(dens, axis=1)), None

    acc, _ = jax.lax.scan(body, jnp.full(z.shape, neg_inf), (mu_c, lv_c, ok_c))
    return jnp.asarray(math.log(n), z.dtype) - jnp.mean(acc, axis=0)


def _subset_entropies(key, z, mu, logvar, num_samples: int, chunk_size: int):
    n = z.shape[0]
    idx = jax.random.permutation(key, n)[: min(num_samples, n)]
    return _mixture_entropies(z[idx], mu, logvar, chunk_size)


def mig_sampled(
    mu: Float[ArrayLike, "n latent"],
    logvar: Float[ArrayLike, "n latent"],
    factor_sizes: Sequence[int],
    *,
    key: PRNGKeyArray,
    factors: Sequence[int] | None = None,
    num_samples: int = 10_000,
    chunk_size: int = 256,
) -> MIGResult:
    """Chen et al.'s sampled MIG over a full factor grid.

    The rows of `mu` / `logvar` are the examples in row-major order of `factor_sizes` (the last
    factor fastest, as dSprites' `latents_classes`). One `z ~ q(z|x)` is drawn per example;
    `H(z_j)` is estimated from `num_samples` random samples scored against all `N` posteriors,
    `H(z_j | v_k = v)` from up to `num_samples` samples of the slice scored against the slice's
    posteriors, averaged uniformly over `v`. `I = max(H(z_j) − H(z_j|v_k), 0)` and
    `H(v_k) = log |V_k|`.

    Args:
        mu: posterior means of every grid point, `(N, D)` with `N = prod(factor_sizes)`.
        logvar: posterior log-variances, `(N, D)`.
        factor_sizes: the grid, e.g. dSprites' `(3, 6, 40, 32, 32)` (colour dropped).
        key: draws the samples and the subsets.
        factors: the grid axes to score (default: every axis of size > 1). For dSprites
            `(1, 2, 3, 4)` scores scale, orientation, posX, posY as the paper (shape excluded).
        num_samples: samples per entropy estimate (10,000 as the authors).
        chunk_size: posteriors per step of the running logsumexp (memory
            `num_samples * chunk_size * D`).

    Returns:
        A `MIGResult` whose `mutual_info` rows follow `factors`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> v = jnp.stack(jnp.meshgrid(jnp.arange(4.0), jnp.arange(5.0), indexing="ij"), -1)
        >>> mu = v.reshape(20, 2)  # latent j copies factor j
        >>> r = mig_sampled(mu, jnp.full((20, 2), -8.0), (4, 5), key=jax.random.key(0))
        >>> round(float(r.mig), 3)
        1.0
    """
    sizes = _check_factor_sizes(factor_sizes)
    n_grid = math.prod(sizes)
    if jnp.ndim(mu) != 2 or jnp.shape(mu) != jnp.shape(logvar):
        raise ValueError(
            f"`mu` and `logvar` must share one (n, latent) shape, got {jnp.shape(mu)} and "
            f"{jnp.shape(logvar)}."
        )
    if mu.shape[0] != n_grid:
        raise ValueError(
            f"`factor_sizes` {sizes} describe {n_grid} grid points but the codes have "
            f"{mu.shape[0]} rows."
        )
    if factors is None:
        factors = tuple(i for i, s in enumerate(sizes) if s > 1)
    factors = tuple(int(f) for f in factors)
    if not factors or any(not 0 <= f < len(sizes) or sizes[f] < 2 for f in factors):
        raise ValueError(
            f"`factors` must name grid axes of size >= 2 among {sizes}, got {factors!r}."
        )
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}.")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int, got {chunk_size!r}.")
    mu = jnp.asarray(_check_finite("mu", mu))
    logvar = jnp.asarray(_check_finite("logvar", logvar))
    d = mu.shape[1]
    k_z, k_marg, k_cond = jax.random.split(key, 3)
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(k_z, mu.shape, mu.dtype)
    h_z = _subset_entropies(k_marg, z, mu, logvar, num_samples, chunk_size)

    cond = []
    for i, f in enumerate(factors):

        def slices(a, f=f):
            a = jnp.moveaxis(a.reshape(sizes + (d,)), f, 0)
            return a.reshape(sizes[f], n_grid // sizes[f], d)

        keys = jax.random.split(jax.random.fold_in(k_cond, i), sizes[f])
        h = jax.lax.map(
            lambda xs: _subset_entropies(xs[0], xs[1], xs[2], xs[3], num_samples, chunk_size),
            (keys, slices(z), slices(mu), slices(logvar)),
        )
        cond.append(jnp.mean(h, axis=0))
    mutual_info = jnp.maximum(h_z[None] - jnp.stack(cond), 0.0)
    factor_entropies = jnp.log(jnp.asarray([sizes[f] for f in factors], mu.dtype))
    mig, gaps = _gap_score(mutual_info, factor_entropies)
    return MIGResult(mig, gaps, mutual_info, factor_entropies, h_z)


def discretize(codes: Float[Array, "n latent"], num_bins: int = 20) -> Int[Array, "n latent"]:
    """Each latent cut into `num_bins` equal-width bins between its min and max, labelled
    `0 … num_bins − 1`: disentanglement_lib's `np.digitize(x, np.histogram(x, num_bins)[1][:-1])`
    minus one.

    Example:
        >>> import jax.numpy as jnp
        >>> discretize(jnp.asarray([[0.0], [0.49], [0.5], [1.0]]), 2)[:, 0].tolist()
        [0, 0, 1, 1]
    """
    if not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"`num_bins` must be a positive int, got {num_bins!r}.")
    lo, hi = jnp.min(codes, axis=0), jnp.max(codes, axis=0)
    frac = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=codes.dtype)[:-1]
    edges = lo[None] + frac[:, None] * (hi - lo)[None]  # (bins, latent)
    counts = jnp.sum(codes[None] >= edges[:, None, :], axis=0)  # digitize: edges <= x
    return jnp.clip(counts - 1, 0, num_bins - 1).astype(jnp.int32)


def _joint_counts(a, b, a_size: int, b_size: int):
    return (
        jnp.zeros((a_size * b_size,), jnp.int32).at[a * b_size + b].add(1).reshape(a_size, b_size)
    )


def _plugin_mi(counts) -> Array:
    n = jnp.sum(counts)
    p = counts / n
    pa, pb = jnp.sum(p, 1, keepdims=True), jnp.sum(p, 0, keepdims=True)
    ratio = jnp.where(p > 0, p / jnp.where(p > 0, pa * pb, 1.0), 1.0)
    return jnp.sum(jnp.where(p > 0, p * jnp.log(ratio), 0.0))


def discrete_mutual_info(
    a: Int[ArrayLike, " n"], b: Int[ArrayLike, " n"], a_size: int, b_size: int
) -> Float[Array, ""]:
    """The plug-in mutual information (nats) of two label arrays with values in
    `[0, a_size)` and `[0, b_size)`: `sklearn.metrics.mutual_info_score(a, b)`.

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.asarray([0, 0, 1, 1])
        >>> round(float(discrete_mutual_info(x, x, 2, 2)), 4)  # log 2
        0.6931
    """
    if jnp.shape(a) != jnp.shape(b) or jnp.ndim(a) != 1:
        raise ValueError(f"`a` and `b` must be 1-D of one length, got {jnp.shape(a)}, "
                         f"{jnp.shape(b)}.")  # fmt: skip
    a, b = jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32)
    return _plugin_mi(_joint_counts(a, b, int(a_size), int(b_size)).astype(jnp.zeros(()).dtype))


def mig_discrete(
    codes: Float[ArrayLike, "n latent"],
    factor_classes: Int[ArrayLike, "n factors"],
    factor_sizes: Sequence[int],
    *,
    num_bins: int = 20,
) -> MIGResult:
    """disentanglement_lib's discrete MIG from encoder means.

    Args:
        codes: the representation (encoder means), `(N, D)`; disentanglement_lib uses
            `N = 10,000` random examples.
        factor_classes: each example's factor indices, `(N, K)`, column `k` in
            `[0, factor_sizes[k])`.
        factor_sizes: the number of values of each factor (each >= 2).
        num_bins: histogram bins per latent (20 in disentanglement_lib).

    Returns:
        A `MIGResult`: `mutual_info[k, j]` is the MI of binned latent `j` with factor `k`,
        `factor_entropies` the empirical `H(v_k)`, `latent_entropies` the binned latents'.

    Example:
        >>> import jax.numpy as jnp
        >>> f = jnp.stack([jnp.arange(40) % 4, jnp.arange(40) // 4], 1)
        >>> r = mig_discrete(f.astype(jnp.float32), f, (4, 10))
        >>> round(float(r.mig), 4)
        1.0
    """
    sizes = _check_factor_sizes(factor_sizes)
    if any(s < 2 for s in sizes):
        raise ValueError(f"`factor_sizes` must be >= 2 (a constant factor has H = 0): {sizes}.")
    if jnp.ndim(codes) != 2 or jnp.ndim(factor_classes) != 2:
        raise ValueError(
            f"`codes` must be (n, latent) and `factor_classes` (n, factors), got "
            f"{jnp.shape(codes)} and {jnp.shape(factor_classes)}."
        )
    if codes.shape[0] != factor_classes.shape[0]:
        raise ValueError(
            f"`codes` has {codes.shape[0]} rows but `factor_classes` has {factor_classes.shape[0]}."
        )
    if factor_classes.shape[1] != len(sizes):
        raise ValueError(
            f"`factor_sizes` names {len(sizes)} factors but `factor_classes` has "
            f"{factor_classes.shape[1]} columns."
        )
    codes = jnp.asarray(_check_finite("codes", codes))
    factor_classes = jnp.asarray(factor_classes)
    bins = discretize(codes, num_bins)
    d = codes.shape[1]
    dtype = codes.dtype
    mi_rows, h_v = [], []
    for k, size in enumerate(sizes):
        y = factor_classes[:, k].astype(jnp.int32)
        mi_rows.append(
            jax.vmap(
                lambda b, y=y, size=size: _plugin_mi(
                    _joint_counts(b, y, num_bins, size).astype(dtype)
                ),
                in_axes=1,
            )(bins)
        )
        h_v.append(_plugin_mi(_joint_counts(y, y, size, size).astype(dtype)))
    h_z = jnp.stack(
        [_plugin_mi(_joint_counts(bins[:, j], bins[:, j], num_bins, num_bins).astype(dtype))
         for j in range(d)]
    )  # fmt: skip
    mutual_info = jnp.stack(mi_rows)
    factor_entropies = jnp.stack(h_v)
    mig, gaps = _gap_score(mutual_info, factor_entropies)
    return MIGResult(mig, gaps, mutual_info, factor_entropies, h_z)
