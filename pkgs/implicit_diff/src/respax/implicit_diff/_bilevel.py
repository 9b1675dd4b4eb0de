"""Cold-start and warm-start bilevel optimization as `lax.scan`s (Vicol et al. 2022, Alg. 1-2).

Each outer step runs the inner optimizer for T steps, computes a hypergradient and applies the
outer optimizer:

- cold start re-initializes the inner parameters at every outer step: to the fixed `w_init`, or,
  with `BilevelConfig(inner_sampler=...)`, to a fresh random draw `inner_sampler(key_t)` (so the
  outer parameters must work for any initialization, as in dataset distillation);
- warm start carries the inner parameters over from the previous outer step.

With an unrolled method (`FullUnroll` / `TruncatedUnroll`) the T inner steps are those of the
method (its optimizer and `num_steps`) and the hypergradient backpropagates through them; with
`Implicit` the T steps of `inner_optimizer` run first (not differentiated) and the IFT is applied
at their end point. Everything is pure: wrap `bilevel_run` in `jax.jit`, and `jax.vmap` it over
seeds or hyperparameter batches.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import optax.tree as otu
from jaxtyping import Array, Float, Int, PyTree

from respax.core import check_positive_int

from ._hypergradient import FullUnroll, Implicit, TruncatedUnroll, hypergradient
from ._inner import check_optimizer, run_inner_optimizer


class BilevelConfig(eqx.Module):
    """Every algorithmic choice of a bilevel run.

    Args:
        method: `FullUnroll`, `TruncatedUnroll` or `Implicit`.
        outer_optimizer: optax transformation for u.
        warm_start: carry w across outer steps (True) or restart from `w_init` (False).
        inner_optimizer: optax transformation for w; required with `Implicit`, must be None with
            the unrolled methods (they carry their own).
        num_inner_steps: T; required with `Implicit`, must be None with the unrolled methods.
        inner_sampler: cold start only: `inner_sampler(key) -> w` draws a new inner
            initialization at every outer step, with `key = jax.random.fold_in(state.key, t)` at
            outer step t (`bilevel_init(..., key=...)` sets `state.key`). None reuses the fixed
            `inner_init`.

    Example:
        >>> import optax
        >>> from respax.core import CG
        >>> from respax.implicit_diff import BilevelConfig, Implicit
        >>> config = BilevelConfig(Implicit(CG(50)), optax.sgd(0.1), warm_start=True,
        ...                        inner_optimizer=optax.sgd(0.1), num_inner_steps=10)
    """

    method: FullUnroll | TruncatedUnroll | Implicit
    outer_optimizer: optax.GradientTransformation = eqx.field(static=True)
    warm_start: bool = eqx.field(static=True, default=False)
    inner_optimizer: optax.GradientTransformation | None = eqx.field(static=True, default=None)
    num_inner_steps: int | None = eqx.field(static=True, default=None)
    inner_sampler: Callable[[Any], PyTree] | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not isinstance(self.method, FullUnroll | TruncatedUnroll | Implicit):
            raise TypeError(
                "`method` must be FullUnroll, TruncatedUnroll or Implicit, got "
                f"{type(self.method).__name__}."
            )
        check_optimizer("outer_optimizer", self.outer_optimizer)
        if self.inner_sampler is not None:
            if not callable(self.inner_sampler):
                raise TypeError(
                    "`inner_sampler` must be None or a callable key -> inner params, got "
                    f"{type(self.inner_sampler).__name__}."
                )
            if self.warm_start:
                raise ValueError(
                    "`inner_sampler` is for cold start (a new inner initialization every outer "
                    "step); warm start carries w, so pass its initial value as `inner_init`."
                )
        if isinstance(self.method, Implicit):
            if self.inner_optimizer is None or self.num_inner_steps is None:
                raise ValueError(
                    "With `method=Implicit(...)`, `inner_optimizer` and `num_inner_steps` are "
                    "required (the inner steps that run before the implicit hypergradient)."
                )
            check_optimizer("inner_optimizer", self.inner_optimizer)
            check_positive_int("num_inner_steps", self.num_inner_steps)
        elif self.inner_optimizer is not None or self.num_inner_steps is not None:
            raise ValueError(
                "With an unrolled `method`, the inner optimizer and step count are the method's "
                "own: leave `inner_optimizer` and `num_inner_steps` as None."
            )


class BilevelState(NamedTuple):
    """The carry of a bilevel run."""

    outer_params: PyTree  # u
    inner_params: PyTree  # w after the last outer step's inner run
    inner_init: PyTree  # the fixed w_init of cold start (and the first warm-start step)
    outer_opt_state: PyTree
    step: Int[Array, ""]  # outer steps done
    key: Any = None  # PRNG key of `BilevelConfig.inner_sampler` (None without a sampler)


class BilevelHistory(NamedTuple):
    """Per-outer-step traces (leading axis = outer step)."""

    outer_loss: Float[Array, " steps"]  # F(u_t, w_t) at the hypergradient's w
    hypergrad_norm: Float[Array, " steps"]
    inner_grad_norm: Float[Array, " steps"]
    # ||H v - grad_w F|| / ||grad_w F|| of the IFT solve (0 for the unrolled methods): a Neumann
    # series that diverges (alpha * lambda_max(H) >= 2, e.g. inner SGD at the edge of stability
    # with alpha = its lr) shows here as a value far above 1.
    linear_relative_residual: Float[Array, " steps"]
    # u_t, the outer parameters at which step t's hypergradient was taken (a leading step axis on
    # every leaf): the outer trajectory, without running one step at a time.
    outer_params: PyTree = None


def bilevel_init(
    config: BilevelConfig, outer_params: PyTree, inner_init: PyTree, *, key: Any = None
) -> BilevelState:
    """The initial state: u0, w_init, a fresh outer optimizer state.

    Args:
        config: the `BilevelConfig`.
        outer_params: u0.
        inner_init: w_init (with `config.inner_sampler`, any draw of it: it fixes the structure).
        key: a PRNG key; required with `config.inner_sampler`, ignored without.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from respax.implicit_diff import BilevelConfig, FullUnroll, bilevel_init
        >>> config = BilevelConfig(FullUnroll(optax.sgd(0.1), 5), optax.sgd(0.1))
        >>> int(bilevel_init(config, jnp.zeros(2), jnp.zeros(3)).step)
        0
    """
    if not isinstance(config, BilevelConfig):
        raise TypeError(f"`config` must be a BilevelConfig, got {type(config).__name__}.")
    if config.inner_sampler is not None and key is None:
        raise ValueError(
            "`key` is required when `config.inner_sampler` is set (it seeds the inner "
            "initialization drawn at every outer step), e.g. key=jax.random.PRNGKey(0)."
        )
    return BilevelState(
        outer_params=outer_params,
        inner_params=inner_init,
        inner_init=inner_init,
        outer_opt_state=config.outer_optimizer.init(outer_params),
        step=jnp.asarray(0, jnp.int32),
        key=key if config.inner_sampler is not None else None,
    )


def _outer_step(config: BilevelConfig, outer_loss, inner_loss, state: BilevelState):
    u = state.outer_params
    if config.warm_start:
        w_start = state.inner_params
    elif config.inner_sampler is not None:
        w_start = config.inner_sampler(jax.random.fold_in(state.key, state.step))
    else:
        w_start = state.inner_init
    method = config.method
    if isinstance(method, Implicit):
        w_start = run_inner_optimizer(
            inner_loss,
            jax.lax.stop_gradient(u),
            w_start,
            config.inner_optimizer,
            config.num_inner_steps,
        )
    hypergrad, info = hypergradient(outer_loss, inner_loss, u, w_start, method)
    updates, opt_state = config.outer_optimizer.update(hypergrad, state.outer_opt_state, u)
    new_state = BilevelState(
        outer_params=optax.apply_updates(u, updates),
        inner_params=info.inner_params,
        inner_init=state.inner_init,
        outer_opt_state=opt_state,
        step=state.step + 1,
        key=state.key,
    )
    trace = BilevelHistory(
        info.outer_loss,
        otu.norm(hypergrad),
        info.inner_grad_norm,
        info.linear_relative_residual,
        u,
    )
    return new_state, trace


def bilevel_run(
    config: BilevelConfig,
    outer_loss: Callable[[PyTree, PyTree], Float[Array, ""]],
    inner_loss: Callable[[PyTree, PyTree], Float[Array, ""]],
    state: BilevelState,
    num_outer_steps: int,
) -> tuple[BilevelState, BilevelHistory]:
    """Advance a bilevel run by `num_outer_steps` outer steps (one `lax.scan`).

    Call it repeatedly to run in chunks (e.g. for checkpointing); the result is the same as one
    long call.

    Args:
        config: the `BilevelConfig`.
        outer_loss: `F(u, w) -> scalar`.
        inner_loss: `f(u, w) -> scalar`.
        state: from `bilevel_init` or a previous `bilevel_run`.
        num_outer_steps: >= 1.

    Returns:
        `(state, history)`.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> import lineax as lx
        >>> from respax.implicit_diff import (BilevelConfig, Implicit, bilevel_init,
        ...                                   bilevel_run)
        >>> inner = lambda u, w: 0.5 * jnp.sum((w - u) ** 2)
        >>> outer = lambda u, w: 0.5 * jnp.sum((w - 3.0) ** 2)
        >>> config = BilevelConfig(Implicit(lx.Cholesky()), optax.sgd(0.5),
        ...                        inner_optimizer=optax.sgd(1.0), num_inner_steps=1)
        >>> state = bilevel_init(config, jnp.zeros(2), jnp.zeros(2))
        >>> state, history = jax.jit(lambda s: bilevel_run(config, outer, inner, s, 40))(state)
        >>> state.outer_params
        Array([3., 3.], dtype=float32)
    """
    if not isinstance(config, BilevelConfig):
        raise TypeError(f"`config` must be a BilevelConfig, got {type(config).__name__}.")
    if not isinstance(state, BilevelState):
        raise TypeError(f"`state` must be a BilevelState, got {type(state).__name__}.")
    check_positive_int("num_outer_steps", num_outer_steps)

    def body(carry, _):
        return _outer_step(config, outer_loss, inner_loss, carry)

    return jax.lax.scan(body, state, None, length=num_outer_steps)


def bilevel_optimize(
    config: BilevelConfig,
    outer_loss: Callable[[PyTree, PyTree], Float[Array, ""]],
    inner_loss: Callable[[PyTree, PyTree], Float[Array, ""]],
    outer_params: PyTree,
    inner_init: PyTree,
    num_outer_steps: int,
    *,
    key: Any = None,
) -> tuple[BilevelState, BilevelHistory]:
    """`bilevel_init` followed by `bilevel_run`: a whole cold- or warm-start run.

    `key` seeds `config.inner_sampler` (required with it, ignored without).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from respax.implicit_diff import BilevelConfig, FullUnroll, bilevel_optimize
        >>> inner = lambda u, w: 0.5 * jnp.sum((w - u) ** 2)
        >>> outer = lambda u, w: 0.5 * jnp.sum((w - 1.0) ** 2)
        >>> config = BilevelConfig(FullUnroll(optax.sgd(1.0), 1), optax.sgd(1.0))
        >>> state, _ = bilevel_optimize(config, outer, inner, jnp.zeros(2), jnp.zeros(2), 3)
        >>> state.outer_params
        Array([1., 1.], dtype=float32)
    """
    state = bilevel_init(config, outer_params, inner_init, key=key)
    return bilevel_run(config, outer_loss, inner_loss, state, num_outer_steps)
