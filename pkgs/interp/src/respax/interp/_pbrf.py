"""The proximal Bregman response function (PBRF), leave-one-out retraining and the five-term
decomposition of the gap between leave-one-out retraining and influence (Bae et al. 2022).

For trained parameters `θˢ`, training set `{(x_i, y_i)}` of size N, damping λ and a removed
example m with weight ε (ε = 1/N is removal):

    PBRF:      argmin_θ (1/N) Σ_i D_L(h(θ, x_i), h(θˢ, x_i), y_i) − ε L(h(θ, x_m), y_m)
                         + (λ/2) ‖θ − θˢ‖²,
    D_L(h, h', y) = L(h, y) − L(h', y) − ∇_{h'} L(h', y)ᵀ (h − h'),

whose first-order response is `θˢ + ε (G + λI)⁻¹ ∇_θ L(z_m, θˢ)` (influence). Every response here
minimises its objective with an optax optimizer over full-batch steps inside one `lax.scan`,
vmapped over the removed examples, so the whole batch of responses is one jitted computation.

The five terms, each the distance between successive responses:
1. warm-start gap: cold-start LOO retraining (from the initial parameters, the training recipe)
   vs warm-start LOO retraining from θˢ;
2. proximity gap: warm-start vs the proximal response (the LOO objective plus (λ/2)‖θ − θˢ‖²);
3. non-convergence gap: the proximal response vs the PBRF (the loss replaced by its Bregman
   divergence around θˢ's outputs);
4. linearization error: the PBRF vs the linearized PBRF `θˢ + ε (G + λI)⁻¹ g_m` (exact solve);
5. solver error: the linearized PBRF vs the same with an approximate solver's `(G + λI)⁻¹ g_m`.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int

from respax.core import OutputLoss, check_positive, check_positive_int

from ._influence import _check_factors, _fit_inputs, fit_factors
from ._influence_model import FlatModel, check_data
from ._strategies import Exact, InfluenceFactors, resolve_key


def _check_optimizer(optimizer):
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`optimizer` must be an optax.GradientTransformation, got {type(optimizer).__name__}."
        )


def _minimize(objective, x0, optimizer, num_steps):
    # Extra-args transforms (optax.lbfgs's line search; chains ignore them) get the objective.
    extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def step(carry, _):
        x, state = carry
        value, g = jax.value_and_grad(objective)(x)
        if extra:
            updates, state = optimizer.update(g, state, x, value=value, grad=g, value_fn=objective)
        else:
            updates, state = optimizer.update(g, state, x)
        return (optax.apply_updates(x, updates), state), None

    (x, _), _ = jax.lax.scan(step, (x0, optimizer.init(x0)), None, length=num_steps)
    return x


def _losses(model: FlatModel, flat, inputs, targets):
    return jax.vmap(model.loss, in_axes=(None, 0, 0))(flat, inputs, targets)


def _removed(removed, n):
    removed = jnp.asarray(removed)
    if removed.ndim != 1 or not jnp.issubdtype(removed.dtype, jnp.integer):
        raise ValueError(f"`removed` must be a 1-D integer array of indices, got {removed!r}.")
    return removed


def _epsilon(epsilon, n):
    if epsilon is None:
        return 1.0 / n
    return epsilon


def _unravel_batch(model: FlatModel, flats):
    """Full parameter pytrees (static parts included) with a leading batch axis on the arrays."""
    return eqx.filter_vmap(model.unravel)(flats)


def retrain(
    apply: Callable[..., Any],
    output_loss: OutputLoss,
    start_params,
    train: tuple[Any, Any],
    weights: Float[Array, "r n"],
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    anchor=None,
    damping=0.0,
):
    """Minimise the weighted training loss `(1/N) Σ_i w_i L_i (+ (λ/2)‖θ − anchor‖²)` from
    `start_params` for every row of `weights`, vmapped (leave-one-out, subsets for LDS, ...).

    Args:
        apply, output_loss: the model contract.
        start_params: where every run starts (the initial parameters for cold-start retraining,
            the trained ones for warm-start).
        train: `(inputs, targets)`, N examples.
        weights: (r, N) example weights, one row per run (1 keeps an example, 0 removes it).
        optimizer: optax optimizer, applied to full-batch gradients.
        num_steps: optimizer steps.
        anchor: parameters of the proximity term (needs `damping > 0`); None for no term.
        damping: λ of the proximity term.

    Returns:
        Parameter pytrees like `start_params` whose arrays have a leading axis of size r.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from respax.core import GaussianLoss
        >>> from respax.interp import retrain
        >>> apply = lambda w, x: jnp.atleast_1d(x @ w)
        >>> x = jnp.eye(2); y = jnp.array([[1.0], [2.0]])
        >>> w = retrain(apply, GaussianLoss(), jnp.zeros(2), (x, y), jnp.ones((1, 2)),
        ...             optimizer=optax.sgd(1.0), num_steps=100)
        >>> jnp.round(w, 3)
        Array([[1., 2.]], dtype=float32)
    """
    _check_optimizer(optimizer)
    check_positive_int("num_steps", num_steps)
    check_positive("damping", damping, allow_zero=True)
    model = FlatModel(apply, output_loss, start_params)
    n = check_data(model, train, "train")
    weights = jnp.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != n:
        raise ValueError(f"`weights` must have shape (runs, {n}), got {weights.shape}.")
    return _retrain(
        apply,
        output_loss,
        start_params,
        train,
        weights,
        optimizer,
        num_steps,
        anchor,
        jnp.asarray(damping),
    )


@eqx.filter_jit
def _retrain(
    apply, output_loss, start_params, train, weights, optimizer, num_steps, anchor, damping
):
    model = FlatModel(apply, output_loss, start_params)
    inputs, targets = train
    n = weights.shape[1]
    anchor_flat = None if anchor is None else model.ravel(anchor)

    def run(w):
        def objective(flat):
            value = jnp.sum(w * _losses(model, flat, inputs, targets)) / n
            if anchor_flat is not None:
                value = value + 0.5 * damping * jnp.sum((flat - anchor_flat) ** 2)
            return value

        return _minimize(objective, model.flat, optimizer, num_steps)

    return _unravel_batch(model, jax.vmap(run)(weights))


def loo_retrain(
    apply: Callable[..., Any],
    output_loss: OutputLoss,
    start_params,
    train: tuple[Any, Any],
    removed: Int[Array, " r"],
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    epsilon=None,
):
    """Leave-one-out retraining, vmapped over the removed examples: minimise
    `(1/N) Σ_i L_i − ε L_m` from `start_params` (ε = 1/N removes example m).

    Cold start: pass the initial parameters and the training recipe (optimizer, steps) that
    produced θˢ. Warm start: pass θˢ.

    Returns:
        Parameter pytrees like `params` whose arrays have a leading axis over `removed`.
    """
    model = FlatModel(apply, output_loss, start_params)
    n = check_data(model, train, "train")
    removed = _removed(removed, n)
    eps = _epsilon(epsilon, n)
    weights = 1.0 - eps * n * jax.nn.one_hot(removed, n, dtype=model.flat.dtype)
    return retrain(
        apply, output_loss, start_params, train, weights, optimizer=optimizer, num_steps=num_steps
    )


def proximal_response(
    apply: Callable[..., Any],
    output_loss: OutputLoss,
    params,
    train: tuple[Any, Any],
    removed: Int[Array, " r"],
    *,
    damping,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    epsilon=None,
):
    """The proximal response: minimise `(1/N) Σ_i L_i − ε L_m + (λ/2)‖θ − θˢ‖²` from θˢ =
    `params`, vmapped over `removed`.

    Returns:
        Parameter pytrees like `params` whose arrays have a leading axis over `removed`.
    """
    check_positive("damping", damping)
    model = FlatModel(apply, output_loss, params)
    n = check_data(model, train, "train")
    removed = _removed(removed, n)
    eps = _epsilon(epsilon, n)
    weights = 1.0 - eps * n * jax.nn.one_hot(removed, n, dtype=model.flat.dtype)
    return retrain(
        apply,
        output_loss,
        params,
        train,
        weights,
        optimizer=optimizer,
        num_steps=num_steps,
        anchor=params,
        damping=damping,
    )


def pbrf(
    apply: Callable[..., Any],
    output_loss: OutputLoss,
    params,
    train: tuple[Any, Any],
    removed: Int[Array, " r"],
    *,
    damping,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    epsilon=None,
):
    """The proximal Bregman response function, solved from θˢ = `params` and vmapped over the
    removed examples (see the module docstring for the objective).

    Args:
        apply, output_loss: the model contract.
        params: the trained parameters θˢ (need not be a minimiser: θˢ minimises the PBRF
            objective at ε = 0 by construction).
        train: `(inputs, targets)`, N examples.
        removed: (r,) indices of the removed examples.
        damping: λ > 0 of the proximity term.
        optimizer: optax optimizer for the full-batch solve.
        num_steps: optimizer steps.
        epsilon: the removed example's weight (default 1/N, removal).

    Returns:
        Parameter pytrees like `params` whose arrays have a leading axis over `removed`.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from respax.core import GaussianLoss
        >>> from respax.interp import pbrf
        >>> apply = lambda w, x: jnp.atleast_1d(x @ w)
        >>> x = jnp.eye(2); y = jnp.array([[1.0], [2.0]])
        >>> theta = pbrf(apply, GaussianLoss(), jnp.array([1.0, 2.0]), (x, y), jnp.array([0]),
        ...              damping=0.5, optimizer=optax.sgd(0.5), num_steps=200)
        >>> theta.shape
        (1, 2)
    """
    _check_optimizer(optimizer)
    check_positive_int("num_steps", num_steps)
    check_positive("damping", damping)
    model = FlatModel(apply, output_loss, params)
    n = check_data(model, train, "train")
    removed = _removed(removed, n)
    eps = _epsilon(epsilon, n)
    return _pbrf(
        apply,
        output_loss,
        params,
        train,
        removed,
        jnp.asarray(damping),
        optimizer,
        num_steps,
        jnp.asarray(eps),
    )


@eqx.filter_jit
def _pbrf(apply, output_loss, params, train, removed, damping, optimizer, num_steps, eps):
    model = FlatModel(apply, output_loss, params)
    inputs, targets = train
    flat_s = model.flat
    out_s = model.batch_outputs(flat_s, inputs)
    loss_s = jax.vmap(output_loss.loss)(out_s, targets)
    dloss_s = jax.vmap(jax.grad(output_loss.loss))(out_s, targets)

    def bregman(flat):
        out = model.batch_outputs(flat, inputs)
        loss = jax.vmap(output_loss.loss)(out, targets)
        return jnp.mean(loss - loss_s - jnp.sum(dloss_s * (out - out_s), axis=-1))

    def run(m):
        x_m = jax.tree.map(lambda a: a[m], inputs)
        y_m = jax.tree.map(lambda a: a[m], targets)

        def objective(flat):
            return (
                bregman(flat)
                - eps * model.loss(flat, x_m, y_m)
                + 0.5 * damping * jnp.sum((flat - flat_s) ** 2)
            )

        return _minimize(objective, flat_s, optimizer, num_steps)

    return _unravel_batch(model, jax.vmap(run)(removed))


def linearized_pbrf(
    factors: InfluenceFactors,
    apply: Callable[..., Any],
    output_loss: OutputLoss,
    params,
    train: tuple[Any, Any],
    removed: Int[Array, " r"],
    *,
    damping,
    epsilon=None,
    key=None,
):
    """The first-order PBRF `θˢ + ε (C + λI)⁻¹ ∇_θ L(z_m, θˢ)` with the factors' solver (the
    parameter-space influence), for every removed example.

    Returns:
        Parameter pytrees like `params` whose arrays have a leading axis over `removed`.
    """
    model = FlatModel(apply, output_loss, params)
    _check_factors(factors, model)
    n = check_data(model, train, "train")
    removed = _removed(removed, n)
    check_positive("damping", damping, allow_zero=True)
    eps = _epsilon(epsilon, n)
    key = resolve_key(key, factors.strategy.solve_needs_key(), "linearized_pbrf", factors.strategy)
    return _linearized(
        factors,
        apply,
        output_loss,
        params,
        train,
        removed,
        jnp.asarray(damping),
        jnp.asarray(eps),
        key,
        _fit_inputs(factors, None, train),
    )


@eqx.filter_jit
def _linearized(factors, apply, output_loss, params, train, removed, damping, eps, key, fit_inputs):
    model = FlatModel(apply, output_loss, params)
    inputs, targets = train
    g = jax.vmap(
        lambda m: model.grad(
            model.flat, jax.tree.map(lambda a: a[m], inputs), jax.tree.map(lambda a: a[m], targets)
        )
    )(removed)
    step = factors.precondition(model, g, damping, key, fit_inputs).astype(model.flat.dtype)
    return _unravel_batch(model, model.flat + eps * step)


def response_distances(
    apply: Callable[..., Any],
    params_a,
    params_b,
    inputs,
) -> dict[str, Float[Array, " r"]]:
    """Distances between two batches of responses (a leading axis r on their arrays, as the
    response functions return them): in parameter space `‖θ_a − θ_b‖`, and in output space the
    root mean square over `inputs` of `‖h(θ_a, x) − h(θ_b, x)‖`.

    Example:
        >>> import jax.numpy as jnp
        >>> from respax.interp import response_distances
        >>> d = response_distances(lambda w, x: x * w, jnp.ones((1, 2)), jnp.zeros((1, 2)),
        ...                        jnp.ones((3, 2)))
        >>> [round(float(d[k][0]), 4) for k in ("param", "output")]
        [1.4142, 1.4142]
    """
    flat = lambda p: ravel_pytree(eqx.filter(p, eqx.is_inexact_array))[0]
    fa = eqx.filter_vmap(flat)(params_a)
    fb = eqx.filter_vmap(flat)(params_b)
    param = jnp.linalg.norm(fa - fb, axis=-1)

    def outputs(p):
        return jax.vmap(lambda x: apply(p, x))(inputs)

    oa = eqx.filter_vmap(outputs)(params_a)
    ob = eqx.filter_vmap(outputs)(params_b)
    output = jnp.sqrt(jnp.mean(jnp.sum((oa - ob) ** 2, axis=-1), axis=-1))
    return {"param": param, "output": output}


TERMS = (
    "warm_start_gap",
    "proximity_gap",
    "nonconvergence_gap",
    "linearization_error",
    "solver_error",
)


def five_terms(
    apply: Callable[..., Any],
    output_loss: OutputLoss,
    params,
    init_params,
    train: tuple[Any, Any],
    removed: Int[Array, " r"],
    *,
    damping,
    train_optimizer: optax.GradientTransformation,
    train_steps: int,
    response_optimizer: optax.GradientTransformation,
    response_steps: int,
    solver_factors: InfluenceFactors,
    exact_factors: InfluenceFactors | None = None,
    warm_optimizer: optax.GradientTransformation | None = None,
    warm_steps: int | None = None,
    eval_inputs=None,
    key=None,
) -> dict[str, Any]:
    """The five-term decomposition of cold-start LOO minus influence, per removed example.

    Args:
        apply, output_loss: the model contract.
        params: θˢ, the trained parameters (the training recipe applied to `init_params`).
        init_params: the initial parameters (cold-start retraining starts here).
        train: `(inputs, targets)`.
        removed: (r,) removed example indices.
        damping: λ > 0 (proximity weight and influence damping).
        train_optimizer, train_steps: the recipe that produced θˢ (for cold-start retraining).
        response_optimizer, response_steps: the solver of the proximal and PBRF objectives
            (from θˢ; damping keeps them well posed, so e.g. `optax.lbfgs()` fits).
        warm_optimizer, warm_steps: warm-start retraining from θˢ (default: the training
            recipe, `train_optimizer` for `train_steps`; the undamped LOO objective can be
            unbounded below, e.g. cross-entropy on separable data, so a fixed recipe, not a
            solver run to convergence, defines it).
        solver_factors: the approximate solver whose error is term 5.
        exact_factors: the exact full-GGN factors (fitted if None).
        eval_inputs: inputs of the output-space distance (default: the training inputs).
        key: PRNG key for stochastic solvers.

    Returns:
        `{"responses": {name: params batch}, "param": {term: (r,)}, "output": {term: (r,)}}`
        with responses `cold`, `warm`, `proximal`, `pbrf`, `linearized`, `solver` and the terms
        of `TERMS`.
    """
    if exact_factors is None:
        exact_factors = fit_factors(apply, output_loss, params, train, strategy=Exact())
    resp = {
        "cold": loo_retrain(
            apply,
            output_loss,
            init_params,
            train,
            removed,
            optimizer=train_optimizer,
            num_steps=train_steps,
        ),
        "warm": loo_retrain(
            apply,
            output_loss,
            params,
            train,
            removed,
            optimizer=train_optimizer if warm_optimizer is None else warm_optimizer,
            num_steps=train_steps if warm_steps is None else warm_steps,
        ),
        "proximal": proximal_response(
            apply,
            output_loss,
            params,
            train,
            removed,
            damping=damping,
            optimizer=response_optimizer,
            num_steps=response_steps,
        ),
        "pbrf": pbrf(
            apply,
            output_loss,
            params,
            train,
            removed,
            damping=damping,
            optimizer=response_optimizer,
            num_steps=response_steps,
        ),
        "linearized": linearized_pbrf(
            exact_factors, apply, output_loss, params, train, removed, damping=damping
        ),
        "solver": linearized_pbrf(
            solver_factors, apply, output_loss, params, train, removed, damping=damping, key=key
        ),
    }
    eval_inputs = train[0] if eval_inputs is None else eval_inputs
    order = ("cold", "warm", "proximal", "pbrf", "linearized", "solver")
    out: dict[str, Any] = {"responses": resp, "param": {}, "output": {}}
    for term, a, b in zip(TERMS, order[:-1], order[1:], strict=True):
        d = response_distances(apply, resp[a], resp[b], eval_inputs)
        out["param"][term] = d["param"]
        out["output"][term] = d["output"]
    return out
