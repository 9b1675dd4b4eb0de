"""Training a branching policy by evolution strategies (OpenAI-ES, Salimans et al. 2017), as in
Neuro#: antithetic Gaussian perturbations, centered-rank fitness shaping, Adam, L2 decay; the
objective is the number of decisions (capped). Rollouts are CPU searches, run by an executor."""

import concurrent.futures
import dataclasses
import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray

from ._cnf import CNF
from ._counter import count
from ._policy import literal_clause_graph, scores_to_branching


@dataclasses.dataclass(frozen=True)
class ESConfig:
    """OpenAI-ES hyperparameters (Neuro#'s: 48 pairs, sigma 0.02, Adam lr 0.01, L2 0.005).

    Attributes:
        pairs: antithetic pairs per iteration (2 * pairs perturbations).
        sigma: perturbation scale.
        learning_rate: Adam step size.
        l2: weight decay coefficient added to the ES gradient.
        decision_cap: rollouts stop here; a capped run scores `decision_cap`.
    """

    pairs: int = 48
    sigma: float = 0.02
    learning_rate: float = 0.01
    l2: float = 0.005
    decision_cap: int = 100_000


class ESState(NamedTuple):
    """Trainer state: flat parameters (float32, (p,)), the Adam state, the iteration (int)."""

    flat: Float[Array, " p"]
    opt_state: Any
    iteration: int


class SerialExecutor:
    """Runs rollouts in this process (`map` like `concurrent.futures.Executor.map`).

    Example:
        >>> list(SerialExecutor().map(abs, [-1, 2]))
        [1, 2]
    """

    def map(self, fn: Callable, tasks: Iterable) -> Iterable:
        return map(fn, tasks)

    def shutdown(self) -> None:
        pass


def process_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """The default executor: a local pool of `workers` spawned processes (each compiles the numba
    core once). Any object with `.map(fn, tasks)` works (e.g. a Ray-backed one).

    Example:
        >>> pool = process_pool(2)  # doctest: +SKIP
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")
    )


def rollout_decisions(task: tuple) -> int:
    """One rollout: (cnf, variable_bias, polarity, cap) -> decisions (cap when capped)."""
    cnf, bias, pol, cap = task
    info = count(cnf, variable_bias=bias, polarity=pol, max_decisions=cap)
    return int(info.decisions) if info.status == "ok" else int(cap)


def centered_ranks(x: Float[Array, " k"]) -> Float[Array, " k"]:
    """Ranks scaled to [-0.5, 0.5] (Salimans et al.'s fitness shaping).

    Example:
        >>> centered_ranks(jnp.array([3.0, 1.0, 2.0])).tolist()
        [0.5, -0.5, 0.0]
    """
    ranks = jnp.argsort(jnp.argsort(x)).astype(jnp.float32)
    return ranks / (x.size - 1) - 0.5


def es_init(model: eqx.Module, cfg: ESConfig) -> tuple[ESState, Callable]:
    """Flatten the model's parameters; returns the state and `unflatten(flat) -> model`.

    Example:
        >>> state, unflatten = es_init(model, ESConfig())  # doctest: +SKIP
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    opt = optax.adam(cfg.learning_rate)
    return ESState(flat, opt.init(flat), 0), lambda f: eqx.combine(unravel(f), static)


def make_logits_fn(unflatten: Callable) -> Callable:
    """`(flats (k, p), graph) -> logits (k, literals)`: the model for many parameter vectors at
    once, jitted (per shape bucket) by the caller's use of the returned function."""
    return eqx.filter_jit(jax.vmap(lambda f, g: unflatten(f)(g), in_axes=(0, None)))


def policy_decisions(
    flats,
    formulas: Sequence[tuple[CNF, Any]],
    logits_fn: Callable,
    executor,
    cap: int,
) -> np.ndarray:
    """Decisions, shape (len(flats), len(formulas)), of the root-mode policy per parameter vector.

    `formulas`: (cnf, time_step or None) pairs; the GNN runs in this process (vmapped over the
    parameter vectors), the searches through `executor.map`.
    """
    tasks = []
    for cnf, ts in formulas:
        lg = np.asarray(logits_fn(flats, literal_clause_graph(cnf, ts)))
        for row in lg:
            b, p = scores_to_branching(row, cnf.num_vars)
            tasks.append((cnf, b, p, cap))
    out = np.array(list(executor.map(rollout_decisions, tasks)), np.float64)
    return out.reshape(len(formulas), len(flats)).T


def es_step(
    state: ESState,
    formulas: Sequence[tuple[CNF, Any]],
    logits_fn: Callable,
    cfg: ESConfig,
    executor,
    *,
    key: PRNGKeyArray,
) -> tuple[ESState, dict]:
    """One OpenAI-ES iteration on `formulas`; returns the new state and statistics.

    Example:
        >>> state, stats = es_step(state, formulas, logits_fn, cfg, SerialExecutor(),
        ...                        key=key)  # doctest: +SKIP
    """
    noise = jax.random.normal(key, (cfg.pairs, state.flat.size), state.flat.dtype)
    flats = jnp.concatenate(
        [state.flat + cfg.sigma * noise, state.flat - cfg.sigma * noise, state.flat[None]]
    )
    dec = policy_decisions(flats, formulas, logits_fn, executor, cfg.decision_cap)
    fitness = dec[:-1].mean(axis=1)
    r = centered_ranks(jnp.asarray(fitness))
    r_pos, r_neg = r[: cfg.pairs], r[cfg.pairs :]
    grad = (r_pos - r_neg) @ noise / (2 * cfg.pairs * cfg.sigma) + cfg.l2 * state.flat
    updates, opt_state = optax.adam(cfg.learning_rate).update(grad, state.opt_state, state.flat)
    new = ESState(optax.apply_updates(state.flat, updates), opt_state, state.iteration + 1)
    stats = {
        "iteration": state.iteration,
        "decisions_center": float(dec[-1].mean()),
        "decisions_population_mean": float(fitness.mean()),
        "decisions_population_min": float(fitness.min()),
    }
    return new, stats
