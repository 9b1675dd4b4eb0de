"""Statistics helpers shared by the packages that evaluate estimates: Pearson and Spearman
correlation along the last axis (ties get average ranks) and a jittable percentile bootstrap."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Real

from ._errors import check_positive_int

__all__ = ["BootstrapCI", "average_ranks", "bootstrap_ci", "pearson", "spearman"]


def _check_pair(a, b) -> tuple[Array, Array]:
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(
            "`a` and `b` must have a last axis of observations; got shapes "
            f"{a.shape} and {b.shape}."
        )
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            "`a` and `b` must have the same number of observations on the last axis; got shapes "
            f"{a.shape} and {b.shape}."
        )
    if a.shape[-1] < 2:
        raise ValueError(f"a correlation needs at least 2 observations; got shape {a.shape}.")
    return a, b


def average_ranks(x: Real[ArrayLike, "... n"]) -> Float[Array, "... n"]:
    """Ranks 1..n along the last axis, ties given their average rank (`scipy.stats.rankdata`).

    Args:
        x: values; leading axes are batch axes.

    Returns:
        The ranks, in `x`'s floating dtype (the default float for integer input).

    Example:
        >>> import jax.numpy as jnp
        >>> average_ranks(jnp.array([3.0, 1.0, 3.0, 2.0]))
        Array([3.5, 1. , 3.5, 2. ], dtype=float32)
    """
    x = jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"`x` must have at least one axis; got shape {x.shape}.")
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)

    def one(row):
        s = jnp.sort(row)
        lo = jnp.searchsorted(s, row, side="left")
        hi = jnp.searchsorted(s, row, side="right")
        return (lo + hi + 1).astype(dtype) / 2

    flat = x.reshape((-1, x.shape[-1]))
    return jax.vmap(one)(flat).reshape(x.shape)


def pearson(a: Real[ArrayLike, "... n"], b: Real[ArrayLike, "... n"]) -> Float[Array, "..."]:
    """Pearson correlation along the last axis (leading axes broadcast).

    NaN where either input is constant along the last axis.

    Args:
        a: observations, last axis of size n >= 2.
        b: observations paired with `a`.

    Returns:
        The correlations, in [-1, 1], with the broadcast leading shape.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.core import pearson
        >>> float(pearson(jnp.array([1.0, 2.0, 3.0]), jnp.array([2.0, 4.0, 7.0]))) > 0.99
        True
    """
    a, b = _check_pair(a, b)
    a = a - jnp.mean(a, axis=-1, keepdims=True)
    b = b - jnp.mean(b, axis=-1, keepdims=True)
    return jnp.sum(a * b, axis=-1) / jnp.sqrt(jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1))


def spearman(a: Real[ArrayLike, "... n"], b: Real[ArrayLike, "... n"]) -> Float[Array, "..."]:
    """Spearman rank correlation along the last axis: Pearson of the average ranks.

    Args:
        a: observations, last axis of size n >= 2.
        b: observations paired with `a`.

    Returns:
        The rank correlations, in [-1, 1], with the broadcast leading shape.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.core import spearman
        >>> float(spearman(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 10.0, 100.0])))
        1.0
    """
    a, b = _check_pair(a, b)
    return pearson(average_ranks(a), average_ranks(b))


class BootstrapCI(NamedTuple):
    """A percentile-bootstrap confidence interval; each field has the statistic's structure."""

    estimate: PyTree[Array]  # the statistic on the original data
    lower: PyTree[Array]  # the (1 - confidence) / 2 quantile of the bootstrap replicates
    upper: PyTree[Array]  # the (1 + confidence) / 2 quantile of the bootstrap replicates
    standard_error: PyTree[Array]  # the replicates' standard deviation (ddof=1)


def bootstrap_ci(
    statistic: Callable[..., Any],
    *data: PyTree[ArrayLike],
    key: PRNGKeyArray,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    batch_size: int | None = None,
) -> BootstrapCI:
    """Percentile bootstrap confidence interval of `statistic(*data)`, resampling the leading axis.

    Every array in `data` (arrays or pytrees of arrays) is resampled with the same indices, so
    paired data stay paired: replicate `r` is `statistic(*[d[idx[r]] for d in data])` with
    `idx = jax.random.randint(key, (num_resamples, n), 0, n)`. The replicates are vmapped (or,
    with `batch_size`, mapped in batches of that many to bound memory); the interval is their
    `(1 -/+ confidence) / 2` quantiles (linear interpolation, as `numpy.quantile`). Jittable with
    `num_resamples`, `confidence` and `batch_size` static.

    Args:
        statistic: a JAX function of the data returning an array or pytree of arrays.
        *data: one or more arrays (or pytrees) sharing the leading axis of n observations.
        key: PRNG key for the resample indices.
        num_resamples: the number of bootstrap replicates, >= 2.
        confidence: the nominal coverage, in (0, 1).
        batch_size: replicates computed at once; default all of them.

    Returns:
        A `BootstrapCI(estimate, lower, upper, standard_error)`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jax.random.normal(jax.random.key(0), (200,)) + 3.0
        >>> ci = bootstrap_ci(jnp.mean, x, key=jax.random.key(1), num_resamples=500)
        >>> bool(ci.lower < ci.estimate < ci.upper), bool(ci.lower < 3.0 < ci.upper)
        (True, True)
    """
    if not callable(statistic):
        raise TypeError(
            f"`statistic` must be a function of the data, got {type(statistic).__name__}."
        )
    if not data:
        raise ValueError("`data` must hold at least one array to resample.")
    check_positive_int("num_resamples", num_resamples)
    if num_resamples < 2:
        raise ValueError(f"`num_resamples` must be >= 2, got {num_resamples}.")
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise TypeError(f"`confidence` must be a float in (0, 1), got {confidence!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}.")
    data = jax.tree.map(jnp.asarray, data)
    leaves = jax.tree.leaves(data)
    if not leaves or any(leaf.ndim == 0 for leaf in leaves):
        raise ValueError("every array in `data` must have a leading axis of observations.")
    sizes = {leaf.shape[0] for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"every array in `data` must share the leading axis; got sizes {sizes}.")
    n = sizes.pop()
    if n < 1:
        raise ValueError("`data` must hold at least one observation.")

    index = jax.random.randint(key, (num_resamples, n), 0, n)

    def replicate(idx):
        return statistic(*jax.tree.map(lambda d: d[idx], data))

    if batch_size is None:
        replicates = jax.vmap(replicate)(index)
    else:
        replicates = jax.lax.map(replicate, index, batch_size=batch_size)
    alpha = (1.0 - confidence) / 2.0

    def quantile(r, q):
        return jnp.quantile(r, q, axis=0).astype(r.dtype)

    return BootstrapCI(
        estimate=statistic(*data),
        lower=jax.tree.map(lambda r: quantile(r, alpha), replicates),
        upper=jax.tree.map(lambda r: quantile(r, 1.0 - alpha), replicates),
        standard_error=jax.tree.map(lambda r: jnp.std(r, axis=0, ddof=1), replicates),
    )
