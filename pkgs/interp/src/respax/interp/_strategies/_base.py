"""What every inverse-curvature strategy shares: the abstract `Strategy` and
`InfluenceFactors`, the parameter layout and index-set helpers, and the key rule."""

import abc
import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._influence_model import FlatModel

Segments = tuple[tuple[int, int], ...]


def to_segments(index: np.ndarray) -> Segments:
    """Contiguous `(start, stop)` runs of a sorted index array (hashable, for static fields)."""
    index = np.asarray(index)
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    runs = np.split(index, breaks)
    return tuple((int(r[0]), int(r[-1]) + 1) for r in runs)


def segment_size(segments: Segments) -> int:
    return sum(b - a for a, b in segments)


def gather(x: Array, segments: Segments) -> Array:
    """`x[..., index]` for the index set given as segments."""
    parts = [x[..., a:b] for a, b in segments]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def scatter(x: Array, segments: Segments, values: Array) -> Array:
    """`x.at[..., index].set(values)`."""
    offset = 0
    for a, b in segments:
        x = x.at[..., a:b].set(values[..., offset : offset + b - a])
        offset += b - a
    return x


def _check_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the fitted factors live in the flat parameter vector.

    Attributes:
        block_names: names of the layout blocks (per-layer scores follow this order).
        block_segments: each block's index set.
        curvature_segments: the blocks the curvature keeps (the layout's with
            `block_diagonal`, else one block of every parameter).
        num_examples: N, the number of fitting examples.
        linear: per curvature block, the structured linear-layer description or None
            (structured exact fits only).
        plan: the capture plan of the structured blocks (or None).
    """

    block_names: tuple[str, ...]
    block_segments: tuple[Segments, ...]
    curvature_segments: tuple[Segments, ...]
    num_examples: int
    linear: tuple = ()
    plan: object = None

    def common(self, strategy) -> dict:
        return dict(
            strategy=strategy,
            block_names=self.block_names,
            block_segments=self.block_segments,
            num_examples=self.num_examples,
        )


class Strategy(eqx.Module):
    """Abstract base of the inverse-curvature strategies (static configurations).

    A strategy is a curvature (exact GGN or Hessian, diagonal, identity, K-FAC, EK-FAC, a
    low-rank eigenbasis) and a way to apply its damped inverse. `fit_factors` calls the final
    subclass's `fit`, which returns its `InfluenceFactors` (arrays only); the factors'
    `precondition` applies `(C + damping I)^{-1}` to rows of gradients.
    """

    block_diagonal: eqx.AbstractVar[bool]

    def fit_needs_key(self) -> bool:
        """Whether fitting draws random numbers (and so needs a `key`)."""
        return False

    def solve_needs_key(self) -> bool:
        """Whether applying the fitted inverse draws random numbers."""
        return False

    def fit(self, model: FlatModel, train, layout: Layout, *, key: PRNGKeyArray, batch_size):
        """The fitted factors of this strategy on `train` (inside `fit_factors`'s jit)."""
        raise NotImplementedError(f"{type(self).__name__} is fitted by `fit_factors` itself.")


class InfluenceFactors(eqx.Module):
    """Fitted inverse-curvature factors (a pytree of arrays; save with `save_factors`).

    Attributes:
        strategy: the strategy configuration they were fitted with.
        block_names: names of the layout blocks (per-layer scores follow this order).
        block_segments: each block's index set in the flat parameter vector.
        num_examples: N, the number of examples the curvature averages over (for `normalize`).
    """

    strategy: Strategy
    block_names: tuple[str, ...] = eqx.field(static=True)
    block_segments: tuple[Segments, ...] = eqx.field(static=True)
    num_examples: int = eqx.field(static=True)

    def curvature_segments(self, num_params: int) -> tuple[Segments, ...]:
        if self.strategy.block_diagonal:
            return self.block_segments
        return (((0, num_params),),)

    def needs_fit_inputs(self) -> bool:
        """Whether `precondition` needs the fitting inputs again (matrix-free products over the
        fitting set). The factors keep no copy of the data: the scoring functions take it."""
        return False

    @abc.abstractmethod
    def precondition(
        self, model: FlatModel, g: Float[Array, "m p"], damping, key: PRNGKeyArray, fit_inputs
    ) -> Float[Array, "m p"]:
        """`(C + damping I)^{-1} g` for every row of `g`; `fit_inputs` are the fitting inputs
        when `needs_fit_inputs()` (else None)."""


def fingerprint(inputs) -> Float[Array, "2"]:
    """A cheap fingerprint of a data pytree: the sums of its entries and of their squares
    (float32). It tells the fitting set from other data of the same shape, up to a permutation
    of the examples (which no mean curvature depends on)."""
    leaves = [jnp.asarray(a, jnp.float32) for a in jax.tree.leaves(inputs)]
    return jnp.stack([sum(jnp.sum(a) for a in leaves), sum(jnp.sum(a * a) for a in leaves)])


def check_fingerprint(fit_inputs, expected: Float[Array, "2"]):
    """`fit_inputs`, with a run-time error when their fingerprint is not the fitting set's."""
    got = fingerprint(fit_inputs)
    differs = jnp.any(jnp.abs(got - expected) > 1e-4 * (jnp.abs(expected) + 1.0))
    leaves = jax.tree.leaves(fit_inputs)
    first = eqx.error_if(
        leaves[0],
        differs,
        "influence: `fit_data` is not the data the factors were fitted on (pass the `train` "
        "given to fit_factors).",
    )
    return jax.tree.unflatten(jax.tree.structure(fit_inputs), [first, *leaves[1:]])


def resolve_key(key, needed: bool, where: str, strategy: Strategy):
    """`key`, required when `needed`; a fixed placeholder (never used for randomness) when not."""
    if key is not None:
        return key
    if needed:
        raise ValueError(
            f"`{where}` with {type(strategy).__name__}(...) draws random numbers: pass "
            "`key=jax.random.key(...)`."
        )
    return jax.random.key(0)
