"""Influence functions: `fit_factors` -> `pairwise_scores` / `self_scores`, over every strategy.

Sign convention (kept everywhere in `respax.interp`): the influence score of a training example
`t` on a query `q` is

    score(q, t) = g_q^T (C + damping I)^{-1} g_t,

with `g = d loss / d params` of one example at the given parameters and `C` the curvature averaged
over the N fitting examples. Removing `t` from the mean training loss `(1/N) sum_i loss_i` moves the
parameters by about `(1/N) (C + damping I)^{-1} g_t` (the PBRF's first-order response), so

    query loss after removal - query loss before ~= score(q, t) / N.

A **positive** score means that removing the training example **increases** the query loss (the
example helps the query); a negative score means it harms it. `normalize=True` returns
`score / N`, the predicted change itself; the default leaves scores unnormalized (kronfluence's
scale).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from respax.core import OutputLoss, check_positive

from ._influence_layers import (
    capture_plan,
    linear_blocks,
)
from ._influence_model import BlockRule, FlatModel, batched_map, block_layout, check_data
from ._strategies import (
    EKFAC,
    STRATEGIES,
    AbstractKronecker,
    Arnoldi,
    Diagonal,
    Exact,
    Identity,
    InfluenceFactors,
    KroneckerFactors,
    Layout,
    LiSSA,
    MatrixFree,
    Strategy,
    fingerprint,
    gather,
    resolve_key,
    to_segments,
)

Measurement = Callable[[Float[Array, " k"], Any], Float[Array, ""]]


def _strategy(strategy: Strategy | str) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str) and strategy.lower() in STRATEGIES:
        return STRATEGIES[strategy.lower()]()
    raise ValueError(
        f"`strategy` must be one of {sorted(STRATEGIES)} or a Strategy instance "
        f"(Exact(...), MatrixFree(CG(...)), ...), got {strategy!r}."
    )


def fit_factors(
    apply: Callable[..., Any],
    output_loss: OutputLoss,
    params,
    train: tuple[Any, Any],
    *,
    strategy: Strategy | str = "exact",
    blocks: BlockRule = "module",
    key: PRNGKeyArray | None = None,
    batch_size: int | None = None,
) -> InfluenceFactors:
    """Fit the inverse-curvature factors of a strategy on a training set.

    The curvature is the mean over `train` of the analytic expected Gauss-Newton matrix
    `J_i^T H_i J_i` (deterministic: no label sampling unless a strategy asks for `mc_samples`).

    Args:
        apply: `apply(params, x) -> outputs` for one example (outputs of shape `(k,)`).
        output_loss: the output loss, e.g. `respax.core.SoftmaxCrossEntropy()`.
        params: the trained parameters (a pytree or Equinox module; its floating-point arrays are
            the parameters).
        train: `(inputs, targets)` with a leading batch axis, the examples the curvature averages
            over (N of them).
        strategy: a strategy configuration (`Exact`, `Identity`, `Diagonal`,
            `MatrixFree(linear_solver)` with any lineax solver, `LiSSA`, `Arnoldi`, `KFAC`,
            `EKFAC`) or its lower-case name for the defaults ("cg" and "neumann" are
            `MatrixFree(CG(max_steps=100))` and
            `MatrixFree(Neumann(max_steps=200, step_size=1.0))`).
        blocks: the layout of layers: "module" (default: the arrays sharing a parent, e.g. a
            linear layer's weight and bias), "leaf", "full" or a function `path -> label`. Used by
            block-diagonal strategies and by per-layer scores.
        key: PRNG key, required exactly when the strategy draws random numbers: Monte-Carlo
            labels (`mc_samples`, `mode="mc"`), random starts (`Arnoldi`, `LiSSA`, a `Neumann`
            solver's power iteration).
        batch_size: examples per step when mapping over `train` (bounds memory); None vmaps all.

    Returns:
        An `InfluenceFactors` pytree for `pairwise_scores` and `self_scores`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import GaussianLoss
        >>> from respax.interp import fit_factors
        >>> apply = lambda w, x: jnp.atleast_1d(x @ w)
        >>> x = jax.random.normal(jax.random.key(0), (8, 3))
        >>> factors = fit_factors(apply, GaussianLoss(), jnp.zeros(3), (x, x[:, :1]))
        >>> factors.matrices[0].shape
        (3, 3)
    """
    strategy = _strategy(strategy)
    model = FlatModel(apply, output_loss, params)
    n = check_data(model, train, "train")
    if batch_size is not None:
        _check_batch_size(batch_size)
    key = resolve_key(key, strategy.fit_needs_key(), "fit_factors", strategy)
    if isinstance(strategy, AbstractKronecker):
        return _fit_kronecker(apply, output_loss, params, train, strategy, blocks, key, n)
    linear, plan = (), None
    if isinstance(strategy, Exact) and strategy.structured and strategy.block_diagonal:
        if strategy.curvature == "ggn" and strategy.mc_samples is None:
            _, indices = block_layout(params, blocks)
            plan = capture_plan(apply, output_loss, params, train[0])
            linear = linear_blocks(params, plan, tuple(to_segments(i) for i in indices))
    return _fit(
        apply, output_loss, params, train, strategy, blocks, key, batch_size, n, linear, plan
    )


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1 or None, got {batch_size!r}.")


@eqx.filter_jit
def _kronecker_fit(plan, strategy, params, inputs, targets, key):
    """K-FAC / EK-FAC factors of the strategy; jitted once per (plan, strategy, shapes): plans
    are hashable values, so a refit on a model of the same structure reuses the program."""
    from respax import curvature  # the K-FAC/EK-FAC engine

    kw = dict(
        mode=strategy.mode,
        key=key if strategy.mode == "mc" else None,
        num_samples=strategy.num_samples,
        batch_size=strategy.batch_size,
    )
    kron = curvature.fit_kfac_factors(plan, params, inputs, targets, **kw)
    if isinstance(strategy, EKFAC):
        return curvature.fit_ekfac(plan, params, inputs, targets, factors=kron, **kw)
    return curvature.kfac_eigendecomposition(kron)


def _fit_kronecker(apply, output_loss, params, train, strategy, blocks, key, n):
    inputs, targets = train
    names, indices = block_layout(params, blocks)
    from respax import curvature

    x0 = jax.tree.map(lambda a: a[0], inputs)
    plan = curvature.capture_layers(params, output_loss, x0, apply=apply)
    # The refinement acts at scoring time only: one compiled fit for every refine_iterations.
    fit_strategy = dataclasses.replace(strategy, refine_iterations=0)
    ek = _kronecker_fit(
        plan, fit_strategy, params, inputs, targets if strategy.mode == "empirical" else None, key
    )
    segments = tuple(to_segments(i) for i in indices)
    linear, fit_fingerprint = (), None
    if strategy.refine_iterations > 0:
        linear = linear_blocks(params, ek.plan, segments)
        fit_fingerprint = jax.jit(fingerprint)(inputs)
    return KroneckerFactors(
        ekfac=ek,
        fit_fingerprint=fit_fingerprint,
        linear=linear,
        strategy=strategy,
        block_names=names,
        block_segments=segments,
        num_examples=n,
    )


@eqx.filter_jit
def _fit(
    apply, output_loss, params, train, strategy, blocks, key, batch_size, n, linear=(), plan=None
):
    model = FlatModel(apply, output_loss, params)
    names, indices = block_layout(params, blocks)
    block_segments = tuple(to_segments(i) for i in indices)
    curvature_segments = block_segments if strategy.block_diagonal else (((0, model.num_params),),)
    layout = Layout(names, block_segments, curvature_segments, n, tuple(linear), plan)
    return strategy.fit(model, train, layout, key=key, batch_size=batch_size)


def _check_damping(damping):
    check_positive("damping", damping, allow_zero=True)  # a concrete value: a clear error now
    damping = jnp.asarray(damping)
    # A traced value is checked when it runs (inside the caller's jit too).
    return eqx.error_if(
        damping, ~(damping >= 0), "`damping` must be a finite number >= 0 (got a negative or NaN)."
    )


def _check_factors(factors, model: FlatModel):
    if not isinstance(factors, InfluenceFactors):
        raise TypeError(
            "`factors` must come from fit_factors (InfluenceFactors), got "
            f"{type(factors).__name__}."
        )
    last = max(b for segs in factors.block_segments for _, b in segs)
    if last != model.num_params:
        raise ValueError(
            f"`factors` were fitted on a model with {last} parameters, but `params` has "
            f"{model.num_params}."
        )


def _fit_inputs(factors: InfluenceFactors, fit_data, default=None):
    """The fitting inputs the factors' solve needs again (None when it needs none).

    Matrix-free factors keep no copy of the fitting set: the scoring call passes it back
    (`fit_data`, else `default`, e.g. the scored `train` when it is the fitting set). A wrong
    number of examples is an error here; other data of the right shape one at run time."""
    if not factors.needs_fit_inputs():
        return None
    data = default if fit_data is None else fit_data
    name = type(factors.strategy).__name__
    if data is None:
        raise ValueError(
            f"`fit_data` is required with {name}(...) factors: they keep no copy of the "
            "fitting set; pass the `train` given to fit_factors."
        )
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise TypeError(
            "`fit_data` must be the `(inputs, targets)` given to fit_factors, got "
            f"{type(data).__name__}."
        )
    n = jax.tree.leaves(data[0])[0].shape[0]
    if n != factors.num_examples:
        where = "`fit_data`" if fit_data is not None else "`train` (used as the fitting set)"
        raise ValueError(
            f"{where} has {n} examples, but the {name}(...) factors were fitted on "
            f"{factors.num_examples}: pass `fit_data=` the `train` given to fit_factors (the "
            "scored examples may be any others)."
        )
    return data[0]


def _query_grad_fn(model: FlatModel, measurement: Measurement | None):
    if measurement is None:
        return lambda x, y: model.grad(model.flat, x, y)
    return lambda x, y: jax.grad(lambda p: measurement(model.outputs(p, x), y))(model.flat)


def inverse_curvature_product(
    factors: InfluenceFactors,
    apply: Callable[..., Any],
    output_loss: OutputLoss,
    params,
    vectors,
    *,
    damping,
    key: PRNGKeyArray | None = None,
    fit_data: tuple[Any, Any] | None = None,
):
    """`(C + damping I)^{-1} v` for a batch of parameter-space vectors, with the factors' solver.

    Args:
        factors: from `fit_factors` on the same model.
        apply, output_loss, params: the model (as for `fit_factors`).
        vectors: a pytree like the parameters' floating-point arrays with one extra leading batch
            axis (e.g. per-example gradients).
        damping: >= 0.
        key: PRNG key for stochastic solvers.
        fit_data: the `(inputs, targets)` given to `fit_factors`; required by the matrix-free
            strategies (`MatrixFree`, `LiSSA`, K-FAC / EK-FAC with `refine_iterations`), whose
            factors keep no copy of the fitting set.

    Returns:
        Parameter pytrees like `params` whose arrays have a leading batch axis.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import GaussianLoss
        >>> from respax.interp import fit_factors, inverse_curvature_product
        >>> apply = lambda w, x: jnp.atleast_1d(x @ w)
        >>> x = jnp.eye(2)
        >>> f = fit_factors(apply, GaussianLoss(), jnp.zeros(2), (x, x[:, :1]))
        >>> inverse_curvature_product(f, apply, GaussianLoss(), jnp.zeros(2), jnp.ones((1, 2)),
        ...                           damping=0.5)  # C = I/2
        Array([[1., 1.]], dtype=float32)
    """
    model = FlatModel(apply, output_loss, params)
    _check_factors(factors, model)
    damping = _check_damping(damping)
    key = resolve_key(key, factors.strategy.solve_needs_key(), "the solve", factors.strategy)
    inputs = _fit_inputs(factors, fit_data)
    return _ihvp(factors, apply, output_loss, params, vectors, damping, key, inputs)


@eqx.filter_jit
def _ihvp(factors, apply, output_loss, params, vectors, damping, key, fit_inputs):
    model = FlatModel(apply, output_loss, params)
    g = jax.vmap(model.ravel)(vectors)
    x = factors.precondition(model, g, damping, key, fit_inputs)
    return eqx.filter_vmap(model.unravel)(x)


def pairwise_scores(
    factors: InfluenceFactors,
    apply: Callable[..., Any],
    output_loss: OutputLoss,
    params,
    query: tuple[Any, Any],
    train: tuple[Any, Any],
    *,
    damping,
    normalize: bool = False,
    per_layer: bool = False,
    query_rank: int | None = None,
    measurement: Measurement | None = None,
    batch_size: int | None = None,
    key: PRNGKeyArray | None = None,
    fit_data: tuple[Any, Any] | None = None,
) -> Float[Array, "m n"] | Float[Array, "b m n"]:
    """Influence of every training example on every query: `g_q^T (C + damping I)^{-1} g_t`.

    The query gradients are preconditioned once (the m solves), then dotted with every training
    gradient, mapped over `train` in chunks of `batch_size`. See the module docstring for the
    sign convention: positive = removing the training example increases the query loss.

    Args:
        factors: from `fit_factors`.
        apply, output_loss, params: the model, as for `fit_factors`.
        query: `(inputs, targets)` of the m queries.
        train: `(inputs, targets)` of the n training examples to score (usually the fitting set).
        damping: Tikhonov damping >= 0 added to the curvature (0 needs a positive definite one).
        normalize: divide by N (the fitting set's size), giving the predicted change of the query
            loss when the example is removed.
        per_layer: return one score matrix per layout block, shape (blocks, m, n) in
            `factors.block_names` order; they sum to the total.
        query_rank: if set, replace the preconditioned query gradients by their best rank-r
            approximation (SVD), which cuts the scoring cost for many queries.
        measurement: `measurement(outputs, targets) -> scalar` scored instead of the query loss.
        batch_size: training examples per chunk (None: all at once).
        key: PRNG key for stochastic solvers (LiSSA).
        fit_data: the `(inputs, targets)` given to `fit_factors`, which the matrix-free
            strategies' solves take again (their factors keep no copy of the data). Default:
            `train`, when it is the fitting set; pass it when scoring other examples.

    Returns:
        Scores of shape (m, n), or (blocks, m, n) with `per_layer`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import GaussianLoss
        >>> from respax.interp import fit_factors, pairwise_scores
        >>> apply = lambda w, x: jnp.atleast_1d(x @ w)
        >>> x = jax.random.normal(jax.random.key(0), (8, 3)); y = x[:, :1]
        >>> f = fit_factors(apply, GaussianLoss(), jnp.zeros(3), (x, y))
        >>> pairwise_scores(f, apply, GaussianLoss(), jnp.zeros(3), (x[:2], y[:2]), (x, y),
        ...                 damping=1e-3).shape
        (2, 8)
    """
    model = FlatModel(apply, output_loss, params)
    _check_factors(factors, model)
    check_data(model, query, "query")
    check_data(model, train, "train")
    damping = _check_damping(damping)
    if batch_size is not None:
        _check_batch_size(batch_size)
    if query_rank is not None and (not isinstance(query_rank, int) or query_rank < 1):
        raise ValueError(f"`query_rank` must be an integer >= 1 or None, got {query_rank!r}.")
    key = resolve_key(key, factors.strategy.solve_needs_key(), "the solve", factors.strategy)
    return _pairwise(
        factors,
        apply,
        output_loss,
        params,
        query,
        train,
        damping,
        normalize,
        per_layer,
        query_rank,
        measurement,
        batch_size,
        key,
        _fit_inputs(factors, fit_data, train),
    )


def _finite(x, what):
    return eqx.error_if(
        x,
        ~jnp.all(jnp.isfinite(x)),
        f"influence: non-finite {what} (a non-finite loss or gradient, or a failed solve).",
    )


@eqx.filter_jit
def _pairwise(
    factors,
    apply,
    output_loss,
    params,
    query,
    train,
    damping,
    normalize,
    per_layer,
    query_rank,
    measurement,
    batch_size,
    key,
    fit_inputs,
):
    model = FlatModel(apply, output_loss, params)
    gq = batched_map(_query_grad_fn(model, measurement), query, None)
    gq = _finite(gq, "query gradients")
    pq = factors.precondition(model, gq, damping, key, fit_inputs)
    pq = _finite(pq, "preconditioned query gradients")
    grad_fn = lambda x, y: model.grad(model.flat, x, y).astype(pq.dtype)
    if query_rank is not None and query_rank < min(pq.shape):
        u, s, vt = jnp.linalg.svd(pq, full_matrices=False)
        coef, basis = u[:, :query_rank] * s[:query_rank], vt[:query_rank]
    else:
        coef, basis = None, pq

    def score_one(x, y):
        g = grad_fn(x, y)
        if per_layer:
            out = jnp.stack([gather(basis, s) @ gather(g, s) for s in factors.block_segments])
        else:
            out = basis @ g
        return out if coef is None else out @ coef.T

    scores = batched_map(score_one, train, batch_size)  # (n, m) or (n, blocks, m)
    scores = jnp.moveaxis(scores, 0, -1)
    if normalize:
        scores = scores / factors.num_examples
    return _finite(scores, "scores")


def self_scores(
    factors: InfluenceFactors,
    apply: Callable[..., Any],
    output_loss: OutputLoss,
    params,
    train: tuple[Any, Any],
    *,
    damping,
    normalize: bool = False,
    per_layer: bool = False,
    batch_size: int | None = None,
    key: PRNGKeyArray | None = None,
    fit_data: tuple[Any, Any] | None = None,
) -> Float[Array, " n"] | Float[Array, "b n"]:
    """Self-influence `g_t^T (C + damping I)^{-1} g_t` of every training example (a mislabeled
    or atypical example scores high).

    Args:
        factors, apply, output_loss, params, damping, normalize, per_layer, key, fit_data: as
            for `pairwise_scores`.
        train: `(inputs, targets)` of the examples.
        batch_size: examples per chunk when computing gradients.

    Returns:
        Shape (n,), or (blocks, n) with `per_layer`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from respax.core import GaussianLoss
        >>> from respax.interp import fit_factors, self_scores
        >>> apply = lambda w, x: jnp.atleast_1d(x @ w)
        >>> x = jax.random.normal(jax.random.key(0), (8, 3)); y = x[:, :1]
        >>> f = fit_factors(apply, GaussianLoss(), jnp.zeros(3), (x, y))
        >>> self_scores(f, apply, GaussianLoss(), jnp.zeros(3), (x, y), damping=1e-3).shape
        (8,)
    """
    model = FlatModel(apply, output_loss, params)
    _check_factors(factors, model)
    check_data(model, train, "train")
    damping = _check_damping(damping)
    if batch_size is not None:
        _check_batch_size(batch_size)
    key = resolve_key(key, factors.strategy.solve_needs_key(), "the solve", factors.strategy)
    inputs = _fit_inputs(factors, fit_data, train)
    return _self(
        factors,
        apply,
        output_loss,
        params,
        train,
        damping,
        normalize,
        per_layer,
        batch_size,
        key,
        inputs,
    )


@eqx.filter_jit
def _self(
    factors,
    apply,
    output_loss,
    params,
    train,
    damping,
    normalize,
    per_layer,
    batch_size,
    key,
    fit_inputs,
):
    model = FlatModel(apply, output_loss, params)
    g = batched_map(lambda x, y: model.grad(model.flat, x, y), train, batch_size)
    g = _finite(g, "training gradients")
    pg = factors.precondition(model, g, damping, key, fit_inputs)
    g = g.astype(pg.dtype)
    if per_layer:
        out = jnp.stack(
            [jnp.sum(gather(pg, s) * gather(g, s), axis=-1) for s in factors.block_segments]
        )
    else:
        out = jnp.sum(pg * g, axis=-1)
    if normalize:
        out = out / factors.num_examples
    return _finite(out, "self-influence scores")


def save_factors(path, factors: InfluenceFactors) -> None:
    """Save fitted factors (their arrays) with `eqx.tree_serialise_leaves`. The factors hold
    curvature only, never the fitting data.

    Example:
        >>> # save_factors("factors.eqx", factors); load_factors("factors.eqx", like=factors)
    """
    eqx.tree_serialise_leaves(path, factors)


def load_factors(path, like: InfluenceFactors) -> InfluenceFactors:
    """Load factors saved by `save_factors`; `like` is factors of the same strategy and model
    (e.g. `eqx.filter_eval_shape(fit_factors, ...)` gives one without computing anything)."""
    return eqx.tree_deserialise_leaves(path, like)


__all__ = [
    "Arnoldi",
    "Diagonal",
    "Exact",
    "Identity",
    "LiSSA",
    "MatrixFree",
    "fit_factors",
    "inverse_curvature_product",
    "load_factors",
    "pairwise_scores",
    "save_factors",
    "self_scores",
]
