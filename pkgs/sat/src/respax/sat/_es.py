"""Training a branching policy by evolution strategies (OpenAI-ES, Salimans et al. 2017), as in
Neuro#: antithetic Gaussian perturbations, centered-rank fitness shaping, Adam, L2 decay; the
objective is the number of decisions (capped). Rollouts are CPU searches, run by an executor."""

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
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
    core once). Any object with `.map(fn, tasks)` and `.shutdown()` works (e.g. `ray_executor`'s).

    Example:
        >>> pool = process_pool(2)  # doctest: +SKIP
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")
    )


class _RayExecutor:
    """`ray_executor`'s result: `map` runs each task as a Ray task, `shutdown` disconnects if
    this executor connected."""

    def __init__(self, ray: Any, owns_connection: bool):
        self._ray = ray
        self._owns_connection = owns_connection

    def map(self, fn: Callable, tasks: Iterable) -> list:
        remote = self._ray.remote(fn)
        return self._ray.get([remote.remote(task) for task in tasks])  # in task order

    def shutdown(self) -> None:
        if self._owns_connection and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns_connection = False


def ray_executor(
    address: str | None = None, *, num_cpus: int | None = None, **ray_init: Any
) -> _RayExecutor:
    """An executor that runs each rollout as a Ray task, on a local Ray instance or a cluster
    (the `ray` extra: `pip install "respax-sat[ray]"`). `map` returns the results in task order.

    Args:
        address: None starts a local instance (or joins the cluster that `RAY_ADDRESS` names);
            `"auto"` joins the cluster this machine is a node of; `"ray://host:port"` connects
            to a cluster's head node through the Ray client. Every node needs respax-sat
            installed (the same version), or a `runtime_env` that installs it.
        num_cpus: CPUs of the local instance (default: all); only with `address=None`.
        **ray_init: passed on to `ray.init` (e.g. `include_dashboard=False`, `runtime_env`).

    If Ray is already initialised in this process, the executor uses that connection (pass no
    arguments then) and `shutdown` leaves it open; otherwise `shutdown` disconnects (and stops
    the local instance it started).

    Example:
        >>> executor = ray_executor(num_cpus=8, include_dashboard=False)  # doctest: +SKIP
        >>> state, stats = es_step(state, formulas, logits_fn, cfg, executor,
        ...                        key=key)  # doctest: +SKIP
        >>> executor.shutdown()  # doctest: +SKIP
    """
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ValueError(
            'address must be None (start a local instance), "auto" or "ray://host:port", '
            f"got {address!r}"
        )
    if num_cpus is not None and (
        not isinstance(num_cpus, int) or isinstance(num_cpus, bool) or num_cpus < 1
    ):
        raise ValueError(f"num_cpus must be None or a positive int, got {num_cpus!r}")
    if num_cpus is not None and address is not None:
        raise ValueError(
            "num_cpus sets the size of a local instance; it cannot be given with address="
            f"{address!r} (a cluster has its own CPUs)"
        )
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "ray_executor needs Ray, which respax-sat installs as an extra: "
            'pip install "respax-sat[ray]"'
        ) from e
    if ray.is_initialized():
        if address is not None or num_cpus is not None or ray_init:
            raise ValueError(
                "Ray is already initialised in this process: call ray_executor() without "
                "arguments to use that connection, or ray.shutdown() first"
            )
        return _RayExecutor(ray, owns_connection=False)
    if num_cpus is not None:
        ray_init["num_cpus"] = num_cpus
    local = address is None and not os.environ.get("RAY_ADDRESS")
    with _local_workers_use_this_interpreter(ray, local):
        ray.init(address, **ray_init)
    return _RayExecutor(ray, owns_connection=True)


@contextlib.contextmanager
def _local_workers_use_this_interpreter(ray: Any, local: bool):
    """Under `uv run`, `ray.init` by default copies the working directory into the session
    folder and starts every worker with `uv run` inside that copy; that copy lacks the ignored
    files (the virtual environment, a bootstrapped uv), so the workers fail to start. A local
    instance's workers run on this machine and can use this interpreter as it is, so the hook
    is off for it (`local`) unless `RAY_ENABLE_UV_RUN_RUNTIME_ENV` is set explicitly."""
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    name = "RAY_ENABLE_UV_RUN_RUNTIME_ENV"
    if not local or constants is None or not hasattr(constants, name) or name in os.environ:
        yield
        return
    before = getattr(constants, name)
    setattr(constants, name, False)
    try:
        yield
    finally:
        setattr(constants, name, before)


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
