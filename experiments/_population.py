"""Populations: many independent trainings at once (a hyperparameter grid, seeds), sharded over
the run's devices, and the choice of the best member.

A *population* is a pytree whose array leaves share a leading axis, one row per member (for
example `{"lr": lrs, "key": keys}`). `population_map` and `population_loop` `jax.vmap` a function
of one member over that axis and split the axis over `ctx.mesh`: the population is padded to a
multiple of the device count by repeating its last member, and the padding is dropped from the
results, so every member's numbers are those of the member alone. `select_best` picks the member
(or the hyperparameter value, averaging over seeds) with the best value of a named result.

`population_map` runs the whole training in one call (no progress bar); a long training belongs
in `population_loop`, which advances it in chunks through `ctx.loop` (progress bar, checkpoints,
`--resume`).
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

from experiments._context import Context

__all__ = [
    "Selection",
    "grid",
    "population_loop",
    "population_map",
    "population_size",
    "select_best",
    "ungrid",
]


def population_size(members: PyTree[Any], name: str = "members") -> int:
    """The number of members: the common length of the leaves' leading axis.

    Raises:
        ValueError: `members` has no array leaf, a leaf without a leading axis, or leaves of
            different lengths.

    Example:
        >>> population_size({"lr": np.zeros(3), "key": np.zeros((3, 2))})
        3
    """
    sizes = {}
    for path, leaf in jtu.tree_flatten_with_path(members)[0]:
        shape = np.shape(leaf)
        if not shape:
            raise ValueError(
                f"{name}: leaf {jtu.keystr(path) or '<root>'} is a scalar; every leaf needs a "
                "leading population axis"
            )
        sizes[jtu.keystr(path) or "<root>"] = shape[0]
    if not sizes:
        raise ValueError(f"{name}: expected a pytree of arrays with a leading population axis")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{name}: leaves have different population sizes {sizes}")
    (size,) = set(sizes.values())
    if size == 0:
        raise ValueError(f"{name}: the population is empty")
    return int(size)


def grid(*axes: PyTree[Any]) -> tuple[PyTree[Any], ...]:
    """Every combination of the members of several populations, as one flat population.

    Member `i * len(b) + j` of `grid(a, b)` is `(a[i], b[j])`: the first axis varies slowest
    (row-major, as `np.meshgrid(..., indexing="ij")` flattened). `ungrid` restores the axes.

    Args:
        *axes: populations (pytrees of arrays with a leading axis), e.g. a grid of learning rates
            and a pytree of per-seed inputs.

    Returns:
        One population per argument, each with `prod(len(axis))` members.

    Example:
        >>> lrs, seeds = grid(np.array([0.1, 1.0]), np.array([0, 1, 2]))
        >>> lrs.tolist(), seeds.tolist()
        ([0.1, 0.1, 0.1, 1.0, 1.0, 1.0], [0, 1, 2, 0, 1, 2])
    """
    if not axes:
        raise ValueError("grid: expected at least one population")
    sizes = [population_size(a, f"axes[{i}]") for i, a in enumerate(axes)]
    out = []
    for i, axis in enumerate(axes):
        before, after = int(np.prod(sizes[:i])), int(np.prod(sizes[i + 1 :]))

        def expand(v, before=before, after=after):
            v = np.asarray(v)
            return np.tile(np.repeat(v, after, axis=0), (before,) + (1,) * (v.ndim - 1))

        out.append(jtu.tree_map(expand, axis))
    return tuple(out)


def ungrid(results: PyTree[Any], shape: tuple[int, ...]) -> PyTree[Any]:
    """Split the leading (flat) population axis of every leaf into the grid's `shape`.

    Example:
        >>> ungrid({"loss": np.arange(6.0)}, (2, 3))["loss"].shape
        (2, 3)
    """
    count = int(np.prod(shape))
    size = population_size(results, "results")
    if size != count:
        raise ValueError(f"shape={shape} has {count} members, results have {size}")
    return jtu.tree_map(lambda v: np.asarray(v).reshape(tuple(shape) + np.shape(v)[1:]), results)


def _pad(tree: PyTree[Any], multiple: int) -> PyTree[Any]:
    """Repeat the last member so that the population size is a multiple of `multiple`."""

    def pad(v):
        v = np.asarray(v) if not isinstance(v, jax.Array) else v
        extra = (-v.shape[0]) % multiple
        if not extra:
            return v
        lib = jnp if isinstance(v, jax.Array) else np
        return lib.concatenate([v, lib.repeat(v[-1:], extra, axis=0)])

    return jtu.tree_map(pad, tree)


def _unpad(tree: PyTree[Any], count: int) -> PyTree[Any]:
    return jtu.tree_map(lambda v: np.asarray(v)[:count], tree)


def _replicate(ctx: Context, shared: tuple) -> tuple:
    is_array = lambda x: isinstance(x, np.ndarray | jax.Array)
    return tuple(jtu.tree_map(lambda x: ctx.replicate(x) if is_array(x) else x, s) for s in shared)


def population_map(
    ctx: Context, fn: Callable[..., PyTree[Any]], members: PyTree[Any], *shared: Any
) -> PyTree[Any]:
    """`fn(member, *shared)` for every member, vmapped and sharded over `ctx.mesh`, in one call.

    Args:
        ctx: the run's context (its `mesh`, `shard`, `replicate` and `gather`).
        fn: a JAX function of one member (a pytree of the members' rows) and the shared
            arguments; it is traced once, under `jax.vmap` and `jax.jit`.
        members: the population, a pytree of arrays with a leading member axis.
        *shared: arguments that are the same for every member (e.g. the data), replicated.

    Returns:
        `fn`'s outputs as host numpy arrays with a leading member axis (padding dropped).

    Example:
        >>> losses = population_map(
        ...     ctx, lambda m, x: jnp.mean((m["w"] * x - 1.0) ** 2), {"w": np.arange(5.0)}, x
        ... )  # doctest: +SKIP
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    count = population_size(members)
    program = jax.jit(jax.vmap(fn, in_axes=(0,) + (None,) * len(shared)))
    out = program(ctx.shard(_pad(members, ctx.mesh.size)), *_replicate(ctx, shared))
    return _unpad(ctx.gather(out), count)


def population_loop(
    ctx: Context,
    name: str,
    step_fn: Callable[..., PyTree[Any]],
    state: PyTree[Any],
    members: PyTree[Any],
    num_steps: int,
    *shared: Any,
    chunk: int,
    desc: str | None = None,
) -> PyTree[Any]:
    """Advance every member's training `state` with `step_fn`, vmapped and sharded over
    `ctx.mesh`, in chunks through `ctx.loop` (progress bar, checkpoints, `--resume`).

    Calls `state = step_fn(state, member, *shared, start)` per member for start = 0, chunk, ...
    < num_steps; `step_fn` advances `chunk` steps and takes its randomness from the member
    (e.g. a per-member key) and `start`, never from Python state.

    Args:
        ctx: the run's context.
        name: the loop's name (unique in the run; names its checkpoint).
        step_fn: `(state, member, *shared, start) -> state` for one member.
        state: every member's initial state, a pytree of arrays with a leading member axis.
        members: the population (hyperparameters, keys), leading member axis.
        num_steps: total steps, a multiple of `chunk`.
        *shared: arguments that are the same for every member, replicated.
        chunk: steps per call of `step_fn`.
        desc: the progress bar's label (default: `"<name> (<count> members)"`).

    Returns:
        The final states as host numpy arrays with a leading member axis (padding dropped).

    Example:
        >>> final = population_loop(
        ...     ctx, "train", train_chunk, states, {"lr": lrs}, 1000, data, chunk=100
        ... )  # doctest: +SKIP
    """
    if not callable(step_fn):
        raise TypeError(f"step_fn must be callable, got {type(step_fn).__name__}")
    count = population_size(members)
    if population_size(state, "state") != count:
        raise ValueError(
            f"state has {population_size(state, 'state')} members, members has {count}"
        )
    state, members = ctx.shard(_pad((state, members), ctx.mesh.size))
    shared = _replicate(ctx, shared)
    advance = jax.jit(jax.vmap(step_fn, in_axes=(0, 0) + (None,) * len(shared) + (None,)))
    final = ctx.loop(
        name,
        state,
        lambda s, start: advance(s, members, *shared, jnp.int32(start)),
        num_steps,
        chunk=chunk,
        desc=desc or f"{name} ({count} members)",
    )
    return _unpad(ctx.gather(final), count)


@dataclasses.dataclass(frozen=True)
class Selection:
    """The best candidate of a population by one result.

    Attributes:
        index: the chosen candidate (position along the leading axis).
        criterion: the name of the result it was chosen by.
        scores: one score per candidate: the criterion averaged over its other axes (seeds).
        best: every result at `index` (host numpy).
    """

    index: int
    criterion: str
    scores: np.ndarray
    best: dict[str, Any]


def select_best(results: Mapping[str, Any], criterion: str, *, minimize: bool = True) -> Selection:
    """The candidate with the lowest (or highest) mean `results[criterion]`.

    Each leaf of `results` has a leading candidate axis (e.g. one per learning rate); the score of
    a candidate is the mean of the criterion over its remaining axes (e.g. seeds), in the result's
    own dtype. Candidates with a non-finite score are passed over; when no score is finite the
    first candidate is returned. Ties go to the first candidate.

    Args:
        results: named results, arrays with a leading candidate axis (an `ungrid`-ed population).
        criterion: the key of the result to rank by, e.g. `"outer_loss"`.
        minimize: True picks the lowest score, False the highest.

    Returns:
        A `Selection` with the index, the scores and every result at that index.

    Raises:
        ValueError: `criterion` is not a key of `results`, or its result has no candidate axis.

    Example:
        >>> sel = select_best({"loss": np.array([[3.0, 1.0], [1.0, 2.0], [np.nan, 0.0]])}, "loss")
        >>> sel.index, sel.scores.tolist()
        (1, [2.0, 1.5, nan])
    """
    if not isinstance(criterion, str):
        raise TypeError(f"criterion must be a str naming a result, got {criterion!r}")
    if criterion not in results:
        raise ValueError(f"criterion={criterion!r} is not a result; results hold {sorted(results)}")
    values = np.asarray(results[criterion])
    if values.ndim == 0 or values.shape[0] == 0:
        raise ValueError(
            f"results[{criterion!r}] has shape {values.shape}; expected a leading candidate axis"
        )
    scores = values.mean(axis=tuple(range(1, values.ndim))) if values.ndim > 1 else values
    finite = np.nonzero(np.isfinite(scores))[0]
    if finite.size:
        pick = np.argmin(scores[finite]) if minimize else np.argmax(scores[finite])
        index = int(finite[pick])
    else:  # no score is meaningful: the first candidate, as a Python `min` over them would give
        index = 0
    best = {k: jtu.tree_map(lambda v: np.asarray(v)[index], v) for k, v in results.items()}
    return Selection(index=index, criterion=criterion, scores=scores, best=best)
