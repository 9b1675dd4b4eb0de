"""Evaluation of influence estimates: leave-one-out correlation, the linear datamodeling score and
mislabeled-example detection, as small pure functions over arrays (ties get average ranks). The
correlations themselves are `respax.core`'s `pearson` and `spearman`."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from respax.core import average_ranks, pearson, spearman


def loo_correlation(
    predicted: Float[Array, "... n"], actual: Float[Array, "... n"]
) -> dict[str, Float[Array, "..."]]:
    """Pearson and Spearman correlation of predicted and actual leave-one-out changes (e.g. of a
    query's loss, over removed examples), along the last axis.

    Returns:
        `{"pearson": ..., "spearman": ...}`.
    """
    return {"pearson": pearson(predicted, actual), "spearman": spearman(predicted, actual)}


def linear_datamodeling_score(
    scores: Float[Array, "m n"],
    masks: Bool[Array, "s n"] | Float[Array, "s n"],
    actual: Float[Array, "s m"],
) -> Float[Array, ""]:
    """The linear datamodeling score (Park et al. 2023): for each query, the Spearman correlation
    over the s subsets between the group prediction `sum_{t in subset} score(q, t)` and the
    measurement of a model retrained on that subset; averaged over queries.

    Args:
        scores: (m queries, n train) attribution scores (any sign convention in which a larger
            score means a larger measurement when the example is kept, e.g. `-score` for
            query-loss influence).
        masks: (s, n) subset membership (1 = kept).
        actual: (s, m) the measurement of each query after retraining on each subset.

    Returns:
        The mean over queries of the per-query Spearman correlation.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.interp import linear_datamodeling_score
        >>> s = jax.random.normal(jax.random.key(0), (2, 5))
        >>> m = jax.random.bernoulli(jax.random.key(1), 0.5, (8, 5)).astype(float)
        >>> float(linear_datamodeling_score(s, m, m @ s.T))
        1.0
    """
    predicted = jnp.asarray(masks, scores.dtype) @ scores.T  # (s, m)
    return jnp.mean(spearman(predicted.T, jnp.asarray(actual).T))


def mislabel_auc(
    self_influence: Float[Array, " n"], is_mislabeled: Bool[Array, " n"]
) -> Float[Array, ""]:
    """Area under the ROC curve for detecting mislabeled examples by ranking self-influence (the
    Mann-Whitney statistic, ties counted half).

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.interp import mislabel_auc
        >>> float(mislabel_auc(jnp.array([0.1, 0.9, 0.2, 0.8]), jnp.array([0, 1, 0, 1]) > 0))
        1.0
    """
    pos = jnp.asarray(is_mislabeled, bool)
    r = average_ranks(self_influence)
    n_pos = jnp.sum(pos)
    n_neg = pos.shape[0] - n_pos
    u = jnp.sum(jnp.where(pos, r, 0.0)) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def fraction_found(
    self_influence: Float[Array, " n"], is_mislabeled: Bool[Array, " n"], inspected: float
) -> Float[Array, ""]:
    """Fraction of the mislabeled examples among the top `inspected` fraction by self-influence."""
    n = self_influence.shape[0]
    k = max(1, int(round(inspected * n)))
    top = jax.lax.top_k(self_influence, k)[1]
    return jnp.sum(jnp.asarray(is_mislabeled)[top]) / jnp.maximum(jnp.sum(is_mislabeled), 1)
