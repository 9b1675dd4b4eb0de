"""Geometry metrics of Toy Models of Superposition: norms, interference, dimensionality, phases.

All metrics take one instance's ``W`` of shape ``[n_features, n_hidden]`` (row ``i`` = feature
``i``, the paper's ``W_i``) and are pure and jittable; ``jax.vmap`` them over instances.
"""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

#: Class codes of `classify_features` and `analytic_phase`.
NOT_REPRESENTED = 0
DEDICATED = 1
SUPERPOSITION = 2
PHASE_NAMES = ("not represented", "dedicated dimension", "superposition")

#: Dimensionalities ``dims / features`` of the uniform polytopes the paper finds (Fig. "sticky"):
#: dedicated dimension, tetrahedron (4 in 3-D), triangle (3 in 2-D), digon (antipodal pair),
#: pentagon (5 in 2-D), square antiprism (8 in 3-D).
POLYTOPE_FRACTIONS = {
    "dedicated (1)": 1.0,
    "tetrahedron (3/4)": 3 / 4,
    "triangle (2/3)": 2 / 3,
    "digon (1/2)": 1 / 2,
    "pentagon (2/5)": 2 / 5,
    "square antiprism (3/8)": 3 / 8,
}

_TINY = 1e-12


def feature_norms(W: Float[Array, "n m"]) -> Float[Array, " n"]:
    """``‖W_i‖`` for every feature (≈1: represented, ≈0: not represented).

    Args:
        W: ``[n_features, n_hidden]``.

    Returns:
        ``[n_features]``.

    Example:
        >>> feature_norms(jnp.eye(3, 2))
        Array([1., 1., 0.], dtype=float32)
    """
    return jnp.sqrt(jnp.sum(W**2, axis=-1))


def _unit_rows(W: Float[Array, "n m"]) -> tuple[Float[Array, "n m"], Float[Array, " n"]]:
    sq = jnp.sum(W**2, axis=-1)
    safe = jnp.where(sq > _TINY, sq, 1.0)
    return jnp.where((sq > _TINY)[:, None], W / jnp.sqrt(safe)[:, None], 0.0), sq


def superposition_interference(W: Float[Array, "n m"]) -> Float[Array, " n"]:
    """The paper's superposition measure ``Σ_{j≠i} (Ŵ_i · W_j)²`` per feature (0 for ``W_i = 0``).

    Args:
        W: ``[n_features, n_hidden]``.

    Returns:
        ``[n_features]``; 0 when feature ``i`` shares its direction with no other feature.

    Example:
        >>> superposition_interference(jnp.array([[1.0], [-1.0]]))
        Array([1., 1.], dtype=float32)
    """
    unit, _ = _unit_rows(W)
    overlaps = unit @ W.T
    overlaps = overlaps * (1.0 - jnp.eye(W.shape[0], dtype=W.dtype))
    return jnp.sum(overlaps**2, axis=-1)


def dimensions_per_feature(W: Float[Array, "n m"]) -> Float[Array, ""]:
    """``D* = m / ‖W‖_F²``: hidden dimensions per (norm-weighted) learned feature.

    Args:
        W: ``[n_features, n_hidden]``.

    Returns:
        Scalar; 1 for ``m`` orthonormal features, 1/2 for antipodal pairs, ``inf`` for ``W = 0``.

    Example:
        >>> dimensions_per_feature(jnp.array([[1.0], [-1.0]]))
        Array(0.5, dtype=float32)
    """
    return W.shape[-1] / jnp.sum(W**2)


def feature_dimensionality(W: Float[Array, "n m"]) -> Float[Array, " n"]:
    """Per-feature dimensionality ``D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)²`` (the ``j = i`` term included).

    ``D_i`` is the fraction of a dimension feature ``i`` gets: 1 for a dedicated dimension,
    ``k/N`` for ``N`` features forming a uniform polytope in ``k`` dimensions, and 0 (by convention)
    for ``W_i = 0``. It is invariant to rotations of the hidden space and to scaling ``W``.

    Args:
        W: ``[n_features, n_hidden]``.

    Returns:
        ``[n_features]`` in ``[0, 1]``.

    Example:
        >>> angles = 2 * jnp.pi * jnp.arange(5.0) / 5
        >>> pentagon = jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
        >>> feature_dimensionality(pentagon).round(3)  # 2/5 each
        Array([0.4, 0.4, 0.4, 0.4, 0.4], dtype=float32)
    """
    unit, sq = _unit_rows(W)
    denominator = jnp.sum((unit @ W.T) ** 2, axis=-1)
    return jnp.where(sq > _TINY, sq / jnp.where(sq > _TINY, denominator, 1.0), 0.0)


def classify_features(
    W: Float[Array, "n m"],
    norm_threshold: float = 0.5,
    interference_threshold: float = 0.25,
) -> Int[Array, " n"]:
    """Phase of each feature, for phase diagrams.

    - `NOT_REPRESENTED` (0): ``‖W_i‖ < norm_threshold``;
    - `DEDICATED` (1): represented and ``Σ_{j≠i} (Ŵ_i · W_j)² < interference_threshold``;
    - `SUPERPOSITION` (2): represented and sharing its direction with other features (in 1-D: an
      antipodal pair, interference ≈ 1).

    Args:
        W: ``[n_features, n_hidden]``.
        norm_threshold: below it a feature counts as not represented.
        interference_threshold: at or above it a represented feature counts as in superposition.

    Returns:
        ``[n_features]`` int codes.

    Example:
        >>> classify_features(jnp.array([[1.0], [-1.0], [0.0]]))
        Array([2, 2, 0], dtype=int32)
    """
    norms = feature_norms(W)
    interference = superposition_interference(W)
    return jnp.where(
        norms < norm_threshold,
        NOT_REPRESENTED,
        jnp.where(interference < interference_threshold, DEDICATED, SUPERPOSITION),
    ).astype(jnp.int32)


def scaled_min_count(num_values: int, base: int = 10, reference: int = 4000, floor: int = 3) -> int:
    """Scale the peak rule's minimum count to a run's size.

    The rule "≥ 10 features within ±0.005" was stated for the paper-size geometry run, 200
    features × 20 densities = 4000 features; a run with ``N`` features gets
    ``max(floor, ceil(base * N / reference))``.

    Args:
        num_values: number of ``D_i`` values the detector sees.
        base: the count at the reference size.
        reference: the reference number of features.
        floor: never ask for fewer than this.

    Returns:
        The minimum count.

    Example:
        >>> scaled_min_count(4000), scaled_min_count(800)
        (10, 3)
    """
    if num_values < 0:
        raise ValueError(f"num_values must be >= 0, got {num_values}")
    return max(floor, math.ceil(base * num_values / reference))


def density_peaks(
    dimensionalities: Float[ArrayLike, " k"],
    fractions: Float[ArrayLike, " f"] = tuple(POLYTOPE_FRACTIONS.values()),
    narrow: float = 0.005,
    wide: float = 0.0125,
    min_count: int = 10,
    contrast: float = 2.0,
) -> tuple[Bool[Array, " f"], Int[Array, " f"], Int[Array, " f"]]:
    """Does the ``D_i`` distribution have a density peak at each fraction?

    The corrected "sticky" rule: fraction ``f`` is a peak when at least ``min_count`` values lie
    within ``±narrow`` of ``f`` *and* their density there is at least ``contrast`` times the density
    in the flanks ``narrow < |D - f| <= wide`` (counts divided by window widths ``2·narrow`` and
    ``2·(wide - narrow)``). A flat distribution has contrast 1; "most features on the line" is not
    required. Use `scaled_min_count` to adapt ``min_count`` to the run size.

    Args:
        dimensionalities: ``D_i`` values (pool over instances; drop unlearned features first).
        fractions: where to look.
        narrow: half-width of the peak window.
        wide: half-width of the window whose remainder are the flanks.
        min_count: least number of values in the peak window.
        contrast: least ratio of peak density to flank density.

    Returns:
        ``(is_peak, narrow_counts, flank_counts)``, each ``[len(fractions)]``.

    Example:
        >>> d = jnp.concatenate([jnp.full(20, 0.5), jnp.linspace(0, 1, 200)])
        >>> is_peak, _, _ = density_peaks(d)  # a peak at 1/2 only
    """
    if not 0 < narrow < wide:
        raise ValueError(f"need 0 < narrow < wide, got narrow={narrow}, wide={wide}")
    d = jnp.asarray(dimensionalities)
    f = jnp.asarray(fractions, d.dtype)
    distance = jnp.abs(d[None, :] - f[:, None])
    narrow_counts = jnp.sum(distance <= narrow, axis=-1)
    flank_counts = jnp.sum((distance > narrow) & (distance <= wide), axis=-1)
    peak_density = narrow_counts.astype(d.dtype) / (2 * narrow)
    flank_density = flank_counts.astype(d.dtype) / (2 * (wide - narrow))
    is_peak = (narrow_counts >= min_count) & (peak_density >= contrast * flank_density)
    return is_peak, narrow_counts.astype(jnp.int32), flank_counts.astype(jnp.int32)


def analytic_phase_losses(
    relative_importance: Float[ArrayLike, "*shape"],
    density: Float[ArrayLike, "*shape"],
    n_features: int = 2,
) -> Float[Array, "*shape 4"]:
    """Closed-form expected losses of hand-built solutions for ``n`` features in ``n-1`` dims.

    Features ``1..n-1`` have importance 1, the last ("extra") one ``r``; all have density ``p``.
    The loss is the *sum* over features of ``I_i E[(x_i - x'_i)²]`` (the training loss times
    ``n``). For a feature dropped with the optimal constant output ``ReLU(b) = p/2``:
    ``E[(x - p/2)²] = p/3 - p²/4``. For an antipodal pair ``x'_a = ReLU(x_a - x_b)``,
    ``x'_b = ReLU(x_b - x_a)`` (no bias), the error is ``(I_a + I_b) min(x_a, x_b)²`` when both are
    on, so the expected loss is ``(I_a + I_b) p² / 6``. The candidates (columns; ``inf`` where
    one does not exist):

    0. drop feature 1, extra feature dedicated: ``p/3 - p²/4``              -> `DEDICATED`
    1. drop the extra feature:                   ``r (p/3 - p²/4)``           -> `NOT_REPRESENTED`
    2. antipodal pair of features 1 and 2, extra dedicated (``n ≥ 3``): ``p²/3`` -> `DEDICATED`
    3. antipodal pair of feature 1 and the extra one: ``(1 + r) p² / 6``    -> `SUPERPOSITION`

    These are upper bounds of the true optimum (biases of the superposed pairs are fixed at 0), the
    comparison used by public reproductions of the paper's analytic phase diagram.

    Args:
        relative_importance: ``r``.
        density: ``p = 1 - S``.
        n_features: ``n ≥ 2`` (hidden size ``n - 1``).

    Returns:
        ``[..., 4]`` expected losses of the candidates.

    Example:
        >>> analytic_phase_losses(1.0, 0.01) * 1e5  # drop first, drop extra, -, superpose
        Array([330.8333..., 330.8333...,  inf, 3.3333...], dtype=float32)
    """
    if not (isinstance(n_features, int) and n_features >= 2):
        raise ValueError(f"n_features must be an int >= 2, got {n_features!r}")
    r = jnp.asarray(relative_importance, jnp.result_type(float))
    p = jnp.asarray(density, r.dtype)
    r, p = jnp.broadcast_arrays(r, p)
    dropped = p / 3 - p**2 / 4
    pair_first = jnp.full_like(p, jnp.inf) if n_features == 2 else p**2 / 3
    return jnp.stack([dropped, r * dropped, pair_first, (1 + r) * p**2 / 6], axis=-1)


_CANDIDATE_PHASE = (DEDICATED, NOT_REPRESENTED, DEDICATED, SUPERPOSITION)


def analytic_phase(
    relative_importance: Float[ArrayLike, "*shape"],
    density: Float[ArrayLike, "*shape"],
    n_features: int = 2,
) -> Int[Array, "*shape"]:
    """The extra feature's phase in the lowest-loss candidate of `analytic_phase_losses`.

    Args:
        relative_importance: ``r``.
        density: ``p``.
        n_features: ``n ≥ 2``.

    Returns:
        Class codes (`NOT_REPRESENTED`, `DEDICATED`, `SUPERPOSITION`).

    Example:
        >>> analytic_phase(10.0, 1.0)  # important and dense: dedicated
        Array(1, dtype=int32)
    """
    losses = analytic_phase_losses(relative_importance, density, n_features)
    return jnp.asarray(_CANDIDATE_PHASE, jnp.int32)[jnp.argmin(losses, axis=-1)]


def pair_cosines(W: Float[Array, "n m"]) -> Float[Array, " pairs"]:
    """Cosine between the two features of each consecutive pair ``(0, 1), (2, 3), ...``.

    -1: antipodal; 0: orthogonal. Pairs with a zero feature give 0.

    Args:
        W: ``[n_features, n_hidden]`` with ``n_features`` even.

    Returns:
        ``[n_features // 2]``.

    Example:
        >>> pair_cosines(jnp.array([[1.0, 0.0], [-1.0, 0.0]]))
        Array([-1.], dtype=float32)
    """
    if W.shape[0] % 2:
        raise ValueError(f"W must have an even number of features (rows), got {W.shape[0]}")
    unit, _ = _unit_rows(W)
    return jnp.sum(unit[0::2] * unit[1::2], axis=-1)


def monosemantic_abs_losses(density: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape 3"]:
    """Expected error of one feature of the abs model when given 0, 1 or 2 dedicated neurons.

    The input is ``x ~ U[-1, 1)`` w.p. ``p`` (else 0) and the target ``|x|``; with no hidden bias a
    neuron that reads only ``x`` is ``ReLU(±a x)``. With the optimal output weight and bias:

    - 0 neurons, constant ``E|x| = p/2``: ``p/3 - p²/4``;
    - 1 neuron (say ``ReLU(x)``), output ``ReLU(α ReLU(x) + c)``: with ``q = p/2`` the least-squares
      optimum is ``c = q / (2 - 3q/2)``, ``α = 1 - 3c/2`` and the error ``q/3 - q²/(4 - 3q)``;
    - 2 neurons, ``ReLU(x) + ReLU(-x) = |x|``: 0.

    Args:
        density: ``p``.

    Returns:
        ``[..., 3]`` errors for 0, 1, 2 neurons.

    Example:
        >>> monosemantic_abs_losses(1.0)  # [1/12, 1/6 - 1/10, 0]
        Array([0.08333334, 0.06666667, 0.        ], dtype=float32)
    """
    p = jnp.asarray(density, jnp.result_type(float))
    q = p / 2
    return jnp.stack([p / 3 - p**2 / 4, q / 3 - q**2 / (4 - 3 * q), jnp.zeros_like(p)], axis=-1)


def monosemantic_abs_loss_bound(
    importance: Float[ArrayLike, " n"], density: Float[ArrayLike, ""], n_hidden: int
) -> Float[Array, ""]:
    """The least training loss of the abs model without superposition.

    Minimises ``mean_i I_i L(k_i)`` over neuron budgets ``k_i ∈ {0, 1, 2}`` with ``Σ k_i ≤ m``,
    where ``L`` is `monosemantic_abs_losses` (each neuron reads one feature and each output reads
    only its own feature's neurons), by dynamic programming over features. A trained model whose
    loss is below this bound must compute some ``|x_i|`` in superposition.

    Args:
        importance: ``[n]`` feature importances.
        density: ``p`` (shared by all features).
        n_hidden: number of neurons ``m``.

    Returns:
        Scalar loss (same normalisation as `reconstruction_loss`: mean over features).

    Example:
        >>> monosemantic_abs_loss_bound(jnp.ones(4), 1.0, 4)  # two features exact, two constant
        Array(0.04166667, dtype=float32)
    """
    if not (isinstance(n_hidden, int) and n_hidden >= 0):
        raise ValueError(f"n_hidden must be a non-negative int, got {n_hidden!r}")
    importance = jnp.asarray(importance, jnp.result_type(float))
    losses = monosemantic_abs_losses(jnp.asarray(density, importance.dtype))
    inf = jnp.asarray(jnp.inf, importance.dtype)
    # best[j] = least summed loss of the features seen so far using exactly j neurons
    best = jnp.full((n_hidden + 1,), inf).at[0].set(0.0)

    def add_feature(best, weight):
        shifted = [best] + [jnp.concatenate([jnp.full((k,), inf), best[:-k]]) for k in (1, 2)]
        candidates = jnp.stack(
            [s[: n_hidden + 1] + weight * losses[k] for k, s in enumerate(shifted)]
        )
        return jnp.min(candidates, axis=0), None

    best, _ = jax.lax.scan(add_feature, best, importance)
    return jnp.min(best) / importance.shape[0]
