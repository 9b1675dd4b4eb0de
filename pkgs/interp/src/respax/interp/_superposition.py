"""Toy Models of Superposition (Elhage et al. 2022): models, synthetic data, loss and training.

Conventions (shared by every function here and in `_superposition_metrics.py`):

- The tied-weight matrix is stored as ``W`` with shape ``[n_features, n_hidden]`` (the layout of the
  paper's notebook, ``W[instances, n, m]``): row ``W[i]`` is the direction of feature ``i`` in the
  hidden space, so the paper's ``h = W x`` (``W ∈ ℝ^{m×n}``) is ``h = x @ W`` here and the paper's
  ``W_i`` (a column of its ``W``) is our row ``W[i]``.
- One *instance* is one independent model. Every function is written for a single instance; sweeps
  over sparsity, importance and seed are ``jax.vmap`` of these functions (see `train`).
- A feature is active with probability ``p`` (the "feature probability" or density, ``1 - S``)
  and then takes a value ``U[0, 1)`` (``U[-1, 1)`` for the computation model), else it is 0.
"""

import dataclasses
import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

ModelKind = Literal["linear", "relu", "neuron", "abs"]
Correlation = Literal["independent", "correlated", "anticorrelated"]

_MODELS = ("linear", "relu", "neuron", "abs")
_GRAM_MAX_FEATURES = 64
_CORRELATIONS = ("independent", "correlated", "anticorrelated")


class ToyParams(NamedTuple):
    """Parameters of the tied-weight toy autoencoder (models ``linear``, ``relu``, ``neuron``).

    Attributes:
        W: ``[n_features, n_hidden]``; row ``i`` is feature ``i``'s embedding.
        b: ``[n_features]`` output bias.
    """

    W: Float[Array, "n m"]
    b: Float[Array, " n"]


class ComputationParams(NamedTuple):
    """Parameters of the computation-in-superposition model ``y' = ReLU(W2 ReLU(W1 x) + b)``.

    Attributes:
        W1: ``[n_features, n_hidden]``; ``h = ReLU(x @ W1)``; row ``i`` = feature ``i``'s inputs.
        W2: ``[n_hidden, n_features]``; column ``i`` is feature ``i``'s output weights.
        b: ``[n_features]`` output bias.
    """

    W1: Float[Array, "n m"]
    W2: Float[Array, "m n"]
    b: Float[Array, " n"]


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Static description of one toy model and its optimiser (hashable: usable as a static jit arg).

    Attributes:
        n_features: number of input features ``n``.
        n_hidden: hidden width ``m``.
        model: ``"linear"`` (``x' = WᵀW x + b``), ``"relu"`` (``x' = ReLU(WᵀW x + b)``),
            ``"neuron"`` (privileged basis: ``h = ReLU(W x)``, ``x' = ReLU(Wᵀh + b)``) or ``"abs"``
            (computation in superposition: target ``|x|``, ``y' = ReLU(W2 ReLU(W1 x) + b)``).
        batch_size: examples per step (the paper uses 1024).
        learning_rate: AdamW learning rate, constant (the paper uses 1e-3).
        weight_decay: AdamW decoupled weight decay. The default 0.01 is PyTorch's ``AdamW``
            default, which the paper's notebook used (optax's own ``adamw`` default is 1e-4). As in
            PyTorch it is applied to every parameter, biases included, scaled by the learning rate.
        correlation: ``"independent"`` features, or consecutive pairs ``(0, 1), (2, 3), ...`` that
            are ``"correlated"`` (always active together) or ``"anticorrelated"`` (never together);
            see `sample_batch`.
    """

    n_features: int
    n_hidden: int
    model: ModelKind = "relu"
    batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    correlation: Correlation = "independent"

    def __post_init__(self):
        if not (isinstance(self.n_features, int) and self.n_features >= 1):
            raise ValueError(f"n_features must be a positive int, got {self.n_features!r}")
        if not (isinstance(self.n_hidden, int) and self.n_hidden >= 1):
            raise ValueError(f"n_hidden must be a positive int, got {self.n_hidden!r}")
        if self.model not in _MODELS:
            raise ValueError(f"model must be one of {_MODELS}, got {self.model!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _check_correlation(self.correlation, self.n_features)


def _check_correlation(correlation: str, n_features: int) -> None:
    if correlation not in _CORRELATIONS:
        raise ValueError(f"correlation must be one of {_CORRELATIONS}, got {correlation!r}")
    if correlation != "independent" and n_features % 2:
        raise ValueError(
            f"correlation={correlation!r} pairs consecutive features, so n_features must be even, "
            f"got {n_features}"
        )


def xavier_normal(
    key: PRNGKeyArray, shape: tuple[int, int], dtype=jnp.float32
) -> Float[Array, "a b"]:
    """Xavier/Glorot normal init of a 2-D weight: ``N(0, 2 / (fan_in + fan_out))``.

    The paper's notebook called PyTorch's ``xavier_normal_`` on the stacked ``[instances, n, m]``
    tensor, whose fans then read ``n*m`` and ``instances*m``; we use the 2-D fans ``n`` and ``m``
    of one instance so an instance's init does not depend on how many instances train beside it.

    Args:
        key: PRNG key.
        shape: ``(a, b)``.
        dtype: floating dtype.

    Returns:
        The ``[a, b]`` weight.

    Example:
        >>> W = xavier_normal(jax.random.key(0), (20, 5))
    """
    std = (2.0 / (shape[0] + shape[1])) ** 0.5
    return std * jax.random.normal(key, shape, dtype)


def init_toy_params(
    key: PRNGKeyArray, n_features: int, n_hidden: int, dtype=jnp.float32
) -> ToyParams:
    """Xavier-normal ``W`` (``[n_features, n_hidden]``) and zero bias.

    Args:
        key: PRNG key.
        n_features: ``n``.
        n_hidden: ``m``.
        dtype: floating dtype.

    Returns:
        `ToyParams`.

    Example:
        >>> params = init_toy_params(jax.random.key(0), 20, 5)
        >>> params.W.shape
        (20, 5)
    """
    return ToyParams(
        W=xavier_normal(key, (n_features, n_hidden), dtype), b=jnp.zeros((n_features,), dtype)
    )


def init_computation_params(
    key: PRNGKeyArray, n_features: int, n_hidden: int, dtype=jnp.float32
) -> ComputationParams:
    """Xavier-normal ``W1`` ``[n, m]`` and ``W2`` ``[m, n]``, zero bias.

    Args:
        key: PRNG key.
        n_features: ``n``.
        n_hidden: number of neurons ``m``.
        dtype: floating dtype.

    Returns:
        `ComputationParams`.

    Example:
        >>> params = init_computation_params(jax.random.key(0), 100, 40)
    """
    k1, k2 = jax.random.split(key)
    return ComputationParams(
        W1=xavier_normal(k1, (n_features, n_hidden), dtype),
        W2=xavier_normal(k2, (n_hidden, n_features), dtype),
        b=jnp.zeros((n_features,), dtype),
    )


def init_params(key: PRNGKeyArray, config: ToyConfig, dtype=jnp.float32):
    """`init_computation_params` for ``config.model == "abs"``, else `init_toy_params`.

    Args:
        key: PRNG key.
        config: the model description.
        dtype: floating dtype.

    Returns:
        `ToyParams` or `ComputationParams`.

    Example:
        >>> params = init_params(jax.random.key(0), ToyConfig(20, 5))
    """
    if config.model == "abs":
        return init_computation_params(key, config.n_features, config.n_hidden, dtype)
    return init_toy_params(key, config.n_features, config.n_hidden, dtype)


def hidden(
    params: ToyParams, x: Float[Array, "*batch n"], model: ModelKind = "relu"
) -> Float[Array, "*batch m"]:
    """The hidden activation: ``h = x @ W`` (``ReLU(x @ W)`` for the ``neuron`` model).

    Args:
        params: `ToyParams`.
        x: inputs ``[..., n]``.
        model: ``"linear"``, ``"relu"`` or ``"neuron"``.

    Returns:
        ``[..., m]``.

    Example:
        >>> h = hidden(init_toy_params(jax.random.key(0), 5, 2), jnp.ones((3, 5)))
    """
    h = x @ params.W
    return jax.nn.relu(h) if model == "neuron" else h


def reconstruct(
    params: ToyParams | ComputationParams, x: Float[Array, "*batch n"], model: ModelKind = "relu"
) -> Float[Array, "*batch n"]:
    """The model's output for inputs ``x`` (a single example ``[n]`` or a batch ``[..., n]``).

    - ``"linear"``: ``x' = WᵀW x + b``;
    - ``"relu"``: ``x' = ReLU(WᵀW x + b)`` (the paper's main model);
    - ``"neuron"``: ``h = ReLU(W x)``, ``x' = ReLU(Wᵀh + b)`` (privileged hidden basis);
    - ``"abs"``: ``y' = ReLU(W2 ReLU(W1 x) + b)`` with `ComputationParams` (its target is ``|x|``).

    Args:
        params: `ToyParams` (or `ComputationParams` for ``"abs"``).
        x: inputs.
        model: which variant.

    Returns:
        Outputs of the same shape as ``x``.

    Example:
        >>> params = init_toy_params(jax.random.key(0), 20, 5)
        >>> reconstruct(params, jnp.ones((8, 20)), "relu").shape
        (8, 20)
    """
    if model not in _MODELS:
        raise ValueError(f"model must be one of {_MODELS}, got {model!r}")
    if model == "abs":
        if not isinstance(params, ComputationParams):
            raise TypeError("model='abs' expects ComputationParams")
        return jax.nn.relu(jax.nn.relu(x @ params.W1) @ params.W2 + params.b)
    if not isinstance(params, ToyParams):
        raise TypeError(f"model={model!r} expects ToyParams")
    n_features = params.W.shape[0]
    if model != "neuron" and n_features <= _GRAM_MAX_FEATURES:
        # x @ (W Wᵀ) passes the batch through one small matmul instead of two; measured 3x faster
        # on CPU for n <= 20 and slower for n = 200. Same function, different rounding.
        out = x @ (params.W @ params.W.T) + params.b
    else:
        out = hidden(params, x, model) @ params.W.T + params.b
    return out if model == "linear" else jax.nn.relu(out)


def target(x: Float[Array, "*batch n"], model: ModelKind = "relu") -> Float[Array, "*batch n"]:
    """What the model is trained to output: ``|x|`` for ``"abs"``, else ``x`` itself.

    Args:
        x: inputs.
        model: which variant.

    Returns:
        The regression target.

    Example:
        >>> target(jnp.array([-0.5, 0.25]), "abs")
        Array([0.5 , 0.25], dtype=float32)
    """
    return jnp.abs(x) if model == "abs" else x


def sample_batch(
    key: PRNGKeyArray,
    batch_size: int,
    n_features: int,
    feature_probability: float | Float[ArrayLike, ""] | Float[ArrayLike, " n"],
    correlation: Correlation = "independent",
    signed: bool = False,
    dtype=jnp.float32,
) -> Float[Array, "batch n"]:
    """Sparse synthetic features: each is active w.p. ``p`` with value ``U[0, 1)``, else exactly 0.

    Correlation structures act on consecutive pairs ``(0, 1), (2, 3), ...`` and keep every feature's
    marginal probability equal to ``p`` (the pair's first feature's ``p`` is used for the pair):

    - ``"correlated"``: one Bernoulli(``p``) draw switches the whole pair on; values independent.
    - ``"anticorrelated"``: the pair is on w.p. ``min(2p, 1)`` and then exactly one of its features,
      chosen uniformly, is active (marginal ``p`` for ``p <= 1/2``). The paper zeroes the pair w.p.
      ``1 - p`` and then activates one, a marginal of ``p/2``; rescaling to ``2p`` follows ARENA.

    Args:
        key: PRNG key.
        batch_size: number of examples.
        n_features: ``n``.
        feature_probability: ``p``, a scalar or one value per feature.
        correlation: ``"independent"``, ``"correlated"`` or ``"anticorrelated"``.
        signed: values ``U[-1, 1)`` instead of ``U[0, 1)`` (the computation model's inputs).
        dtype: floating dtype.

    Returns:
        ``[batch_size, n_features]``.

    Example:
        >>> x = sample_batch(jax.random.key(0), 1024, 20, 0.05)
        >>> x.shape
        (1024, 20)
    """
    _check_correlation(correlation, n_features)
    p = jnp.broadcast_to(jnp.asarray(feature_probability, dtype), (n_features,))
    shape = (batch_size, n_features)
    if correlation == "independent":
        # One uniform per entry serves as both the coin and the value: given u < p, u / p ~ U[0, 1).
        # Random numbers dominate a step's cost on CPU, so this halves it; the values keep a
        # resolution of 2^-23 / p (about 1e-4 at p = 1e-3).
        u = jax.random.uniform(key, shape, dtype)
        active = u < p
        values = u / jnp.where(p > 0, p, 1.0)
    else:
        k_mask, k_value, k_which = jax.random.split(key, 3)
        values = jax.random.uniform(k_value, shape, dtype)
        pair_p = p[0::2]
        pair_u = jax.random.uniform(k_mask, (batch_size, n_features // 2), dtype)
        if correlation == "correlated":
            pair_on = pair_u < pair_p
            active = jnp.repeat(pair_on, 2, axis=-1)
        else:
            pair_on = pair_u < jnp.minimum(2.0 * pair_p, 1.0)
            first = jax.random.bernoulli(k_which, 0.5, (batch_size, n_features // 2))
            active = jnp.stack([pair_on & first, pair_on & ~first], axis=-1).reshape(shape)
    if signed:
        values = 2.0 * values - 1.0
    return jnp.where(active, values, jnp.zeros((), dtype))


def reconstruction_loss(
    params: ToyParams | ComputationParams,
    x: Float[Array, "batch n"],
    importance: Float[ArrayLike, ""] | Float[ArrayLike, " n"],
    model: ModelKind = "relu",
) -> Float[Array, ""]:
    """Importance-weighted squared error, averaged over the batch and the features.

    ``mean_{b, i} I_i (t_i - x'_i)²`` with target ``t = x`` (``|x|`` for ``"abs"``): the paper's
    per-instance loss (its notebook sums this over instances, which changes no instance's gradient).

    Args:
        params: `ToyParams` or `ComputationParams`.
        x: a batch ``[batch, n]``.
        importance: ``I``, a scalar or one value per feature.
        model: which variant.

    Returns:
        Scalar loss.

    Example:
        >>> params = init_toy_params(jax.random.key(0), 20, 5)
        >>> x = sample_batch(jax.random.key(1), 1024, 20, 0.1)
        >>> loss = reconstruction_loss(params, x, 0.7 ** jnp.arange(20))
    """
    error = (target(x, model) - reconstruct(params, x, model)) ** 2
    return jnp.mean(jnp.asarray(importance, error.dtype) * error)


class TrainState(NamedTuple):
    """One instance's training state.

    Attributes:
        params: `ToyParams` or `ComputationParams`.
        opt_state: the AdamW state of `make_optimizer`.
    """

    params: ToyParams | ComputationParams
    opt_state: optax.OptState


def make_optimizer(config: ToyConfig) -> optax.GradientTransformation:
    """AdamW with a constant learning rate and PyTorch's decoupled weight decay (see `ToyConfig`).

    Args:
        config: the model description.

    Returns:
        An optax transform.

    Example:
        >>> opt = make_optimizer(ToyConfig(20, 5))
    """
    return optax.adamw(config.learning_rate, weight_decay=config.weight_decay)


def init_train_state(key: PRNGKeyArray, config: ToyConfig, dtype=jnp.float32) -> TrainState:
    """Fresh parameters (see `init_params`) and optimiser state.

    Args:
        key: PRNG key for the initial weights.
        config: the model description.
        dtype: floating dtype.

    Returns:
        `TrainState`.

    Example:
        >>> state = init_train_state(jax.random.key(0), ToyConfig(20, 5))
    """
    params = init_params(key, config, dtype)
    return TrainState(params, make_optimizer(config).init(params))


def train_step(
    state: TrainState,
    key: PRNGKeyArray,
    importance: Float[ArrayLike, ""] | Float[ArrayLike, " n"],
    feature_probability: Float[ArrayLike, ""] | Float[ArrayLike, " n"],
    config: ToyConfig,
) -> tuple[TrainState, Float[Array, ""]]:
    """One AdamW step on a fresh batch drawn from ``key``.

    Args:
        state: `TrainState`.
        key: PRNG key for this step's batch.
        importance: ``I`` (scalar or ``[n]``).
        feature_probability: ``p`` (scalar or ``[n]``).
        config: the model description (static).

    Returns:
        ``(new_state, loss)`` where ``loss`` is the batch loss before the step.

    Example:
        >>> config = ToyConfig(5, 2)
        >>> state = init_train_state(jax.random.key(0), config)
        >>> state, loss = train_step(state, jax.random.key(1), 1.0, 0.1, config)
    """
    dtype = jax.tree_util.tree_leaves(state.params)[0].dtype
    x = sample_batch(
        key,
        config.batch_size,
        config.n_features,
        feature_probability,
        config.correlation,
        signed=config.model == "abs",
        dtype=dtype,
    )
    loss, grads = jax.value_and_grad(reconstruction_loss)(state.params, x, importance, config.model)
    updates, opt_state = make_optimizer(config).update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state), loss


def train_steps(
    state: TrainState,
    key: PRNGKeyArray,
    start: int | Int[ArrayLike, ""],
    num_steps: int,
    importance: Float[ArrayLike, ""] | Float[ArrayLike, " n"],
    feature_probability: Float[ArrayLike, ""] | Float[ArrayLike, " n"],
    config: ToyConfig,
) -> tuple[TrainState, Float[Array, " steps"]]:
    """``num_steps`` steps in a ``lax.scan``; step ``t``'s batch comes from ``fold_in(key, t)``.

    Because the batch of global step ``t = start + i`` depends only on ``key`` and ``t``, running
    ``[0, a)`` then ``[a, b)`` gives exactly the same result as ``[0, b)`` (checkpoint/resume safe).

    Args:
        state: `TrainState`.
        key: the instance's data key.
        start: global index of the first step (may be traced).
        num_steps: number of steps (static).
        importance: ``I``.
        feature_probability: ``p``.
        config: the model description (static).

    Returns:
        ``(new_state, losses)`` with ``losses[i]`` the batch loss of step ``start + i``.

    Example:
        >>> config = ToyConfig(5, 2)
        >>> state = init_train_state(jax.random.key(0), config)
        >>> state, losses = train_steps(state, jax.random.key(1), 0, 10, 1.0, 0.1, config)
    """

    def body(state, t):
        step_key = jax.random.fold_in(key, t)
        return train_step(state, step_key, importance, feature_probability, config)

    steps = jnp.asarray(start, jnp.int32) + jnp.arange(num_steps, dtype=jnp.int32)
    return jax.lax.scan(body, state, steps)


@functools.partial(jax.jit, static_argnames=("config", "num_steps"))
def train(
    key: PRNGKeyArray,
    config: ToyConfig,
    num_steps: int,
    importance: Float[ArrayLike, ""] | Float[ArrayLike, " n"],
    feature_probability: Float[ArrayLike, ""] | Float[ArrayLike, " n"],
) -> tuple[ToyParams | ComputationParams, Float[Array, " steps"]]:
    """Train one instance from scratch; ``jax.vmap`` it over keys, importances and probabilities.

    Args:
        key: PRNG key (split into an init key and a data key).
        config: the model description (static).
        num_steps: number of AdamW steps (static; the paper uses 10,000).
        importance: ``I`` (scalar or ``[n]``).
        feature_probability: ``p`` (scalar or ``[n]``).

    Returns:
        ``(params, losses)``.

    Example:
        >>> config = ToyConfig(20, 5)
        >>> p = jnp.array([1.0, 0.1, 0.01])
        >>> keys = jax.random.split(jax.random.key(0), 3)
        >>> params, losses = jax.vmap(train, in_axes=(0, None, None, None, 0))(
        ...     keys, config, 10, 0.7 ** jnp.arange(20), p)
        >>> params.W.shape
        (3, 20, 5)
    """
    if not (isinstance(num_steps, int) and num_steps >= 0):
        raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
    init_key, data_key = jax.random.split(key)
    state = init_train_state(init_key, config)
    state, losses = train_steps(
        state, data_key, 0, num_steps, importance, feature_probability, config
    )
    return state.params, losses
