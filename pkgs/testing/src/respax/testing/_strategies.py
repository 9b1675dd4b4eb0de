"""Hypothesis strategies for JAX code: pytrees of arrays, SPD matrices, PRNG keys, small MLPs."""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, Float, PyTree

_CONTAINERS = ("dict", "list", "tuple")
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _float_dtype(dtype: DTypeLike | None, argument: str) -> np.dtype:
    """Resolve `dtype` (None = JAX's default float) to a numpy dtype, checking it is a float."""
    if dtype is None:
        # At draw time, so the float64 fixture of a test is in force.
        return np.dtype(jnp.result_type(float))
    resolved = jnp.dtype(dtype)
    if resolved.name not in _FLOAT_DTYPES:
        raise TypeError(
            f"`{argument}` must be a real floating dtype {_FLOAT_DTYPES}; got {dtype!r}."
        )
    return resolved


def _check_x64(dtype: np.dtype, argument: str) -> None:
    if dtype.itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"`{argument}` is {dtype.name} but jax_enable_x64 is off, so JAX would silently "
            "truncate the arrays to float32; turn x64 on (e.g. the `float64` fixture) or pass "
            "a 32-bit dtype."
        )


def _as_strategy(value: Any) -> st.SearchStrategy:
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def _array_leaves(
    shapes: st.SearchStrategy,
    dtype: DTypeLike | None,
    min_value: float,
    max_value: float,
    argument: str,
) -> st.SearchStrategy:
    """JAX arrays with a shape drawn from `shapes` and elements in [min_value, max_value]."""

    @st.composite
    def leaf(draw):
        resolved = _float_dtype(dtype, argument)
        _check_x64(resolved, argument)
        # bfloat16 is not a numpy dtype hypothesis knows: draw float32 and round.
        numpy_dtype = np.dtype("float32") if resolved.name == "bfloat16" else resolved
        elements = st.floats(
            min_value=min_value,
            max_value=max_value,
            allow_nan=False,
            allow_infinity=False,
            allow_subnormal=False,
            width=8 * numpy_dtype.itemsize,
        )
        values = draw(hnp.arrays(numpy_dtype, draw(shapes), elements=elements))
        return jnp.asarray(values, dtype=resolved)

    return leaf()


def _split_budget(draw, budget: int, parts: int) -> list:
    """Split `budget` leaves into `parts` positive shares."""
    # Annotated `list`, not `list[int]`: under beartype (as in our tests) a parametrized
    # container check samples an item with the global `random` module, which hypothesis
    # forbids inside a strategy.
    shares = [1] * parts
    for _ in range(budget - parts):
        if not draw(st.booleans()):
            break
        shares[draw(st.integers(0, parts - 1))] += 1
    return shares


def pytrees(
    *,
    max_depth: int = 3,
    max_leaves: int = 6,
    max_dims: int = 3,
    max_side: int = 4,
    dtype: DTypeLike | None = None,
    min_value: float = -10.0,
    max_value: float = 10.0,
    containers: Sequence[str] = _CONTAINERS,
) -> st.SearchStrategy:
    """A strategy for pytrees of float arrays with random structure and shapes.

    Containers are nested dicts (string keys), lists and tuples; leaves are JAX arrays of
    0 to `max_dims` dimensions, each side 1 to `max_side`. Every tree has between 1 and
    `max_leaves` leaves and no empty container; a bare array (depth 0) is a valid draw.

    Args:
        max_depth: the deepest nesting of containers (0 draws bare arrays only).
        max_leaves: the most array leaves in one tree (at least 1).
        max_dims: the most dimensions of one leaf (0 gives scalars only).
        max_side: the largest size of one dimension (at least 1).
        dtype: a real float dtype for every leaf; None (default) is JAX's default float at
            draw time (float64 when x64 is on, else float32). float64 needs x64 on.
        min_value: the smallest element value.
        max_value: the largest element value.
        containers: which containers to use, a subset of ("dict", "list", "tuple").

    Returns:
        A hypothesis strategy of pytrees.

    Example:
        >>> from hypothesis import given, settings
        >>> @settings(deadline=None, max_examples=10)
        ... @given(pytrees(max_leaves=3))
        ... def test(tree):
        ...     assert 1 <= len(jax.tree.leaves(tree)) <= 3
        >>> test()
    """
    if max_depth < 0:
        raise ValueError(f"`max_depth` must be >= 0; got {max_depth}.")
    if max_leaves < 1:
        raise ValueError(f"`max_leaves` must be >= 1; got {max_leaves}.")
    if max_dims < 0:
        raise ValueError(f"`max_dims` must be >= 0; got {max_dims}.")
    if max_side < 1:
        raise ValueError(f"`max_side` must be >= 1; got {max_side}.")
    if not min_value <= max_value:
        raise ValueError(f"`min_value` ({min_value}) must be <= `max_value` ({max_value}).")
    containers = tuple(containers)
    if not containers or not set(containers) <= set(_CONTAINERS):
        raise ValueError(
            f"`containers` must be a non-empty subset of {_CONTAINERS}; got {containers}."
        )
    if dtype is not None:
        _float_dtype(dtype, "dtype")  # fail at definition time on a non-float dtype

    shapes = hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=1, max_side=max_side)
    leaf = _array_leaves(shapes, dtype, min_value, max_value, "dtype")

    def subtree(draw, depth: int, budget: int):
        # `booleans()` shrinks to False, so failing examples shrink towards a bare array.
        if depth == 0 or budget == 1 or not draw(st.booleans()):
            return draw(leaf)
        kind = draw(st.sampled_from(containers))
        width = draw(st.integers(1, min(budget, 3)))
        children = [subtree(draw, depth - 1, share) for share in _split_budget(draw, budget, width)]
        if kind == "dict":
            keys = draw(
                st.lists(
                    st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=4),
                    min_size=width,
                    max_size=width,
                    unique=True,
                )
            )
            return dict(zip(keys, children, strict=True))
        if kind == "list":
            return children
        return tuple(children)

    @st.composite
    def tree(draw):
        return subtree(draw, max_depth, draw(st.integers(1, max_leaves)))

    return tree()


def pytrees_like(
    tree: PyTree[Any],
    *,
    min_value: float = -10.0,
    max_value: float = 10.0,
) -> st.SearchStrategy:
    """A strategy for pytrees with the structure, shapes and dtypes of `tree`.

    Typical use: draw a point `x` with `pytrees()`, then a tangent `v` for it with
    `pytrees_like(x)` inside `hypothesis.strategies.data()`.

    Args:
        tree: a pytree of float arrays (or `jax.ShapeDtypeStruct`s) to imitate.
        min_value: the smallest element value.
        max_value: the largest element value.

    Returns:
        A hypothesis strategy of pytrees with `tree`'s structure.

    Example:
        >>> from hypothesis import given, settings
        >>> template = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
        >>> @settings(deadline=None, max_examples=10)
        ... @given(pytrees_like(template))
        ... def test(tree):
        ...     assert jax.tree.structure(tree) == jax.tree.structure(template)
        >>> test()
    """
    if not min_value <= max_value:
        raise ValueError(f"`min_value` ({min_value}) must be <= `max_value` ({max_value}).")
    leaves, treedef = jax.tree.flatten(tree)
    leaf_strategies = []
    for leaf in leaves:
        shape = tuple(getattr(leaf, "shape", ()))
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"`tree` must have real floating leaves only; got a leaf {leaf!r}.")
        leaf_strategies.append(_array_leaves(st.just(shape), dtype, min_value, max_value, "tree"))
    return st.tuples(*leaf_strategies).map(lambda drawn: jax.tree.unflatten(treedef, list(drawn)))


def spd_matrices(
    n: int | st.SearchStrategy = st.integers(2, 6),
    *,
    condition_number: float | st.SearchStrategy = 10.0,
    min_eigenvalue: float = 1.0,
    dtype: DTypeLike | None = None,
) -> st.SearchStrategy:
    """A strategy for symmetric positive-definite matrices of an exact condition number.

    Each draw is `Q diag(eigenvalues) Q^T` with `Q` a Haar-random orthogonal matrix and
    eigenvalues spanning `[min_eigenvalue, min_eigenvalue * condition_number]`: both ends
    are always eigenvalues (for n >= 2) and the others lie log-uniformly between them. The
    matrix is built in float64 numpy and symmetrized, then cast, so in float64 its 2-norm
    condition number equals `condition_number` to rounding (~1e-13 relative for moderate
    conditioning).

    Args:
        n: the matrix size, an int or a strategy of ints (default 2 to 6).
        condition_number: the ratio of the largest to the smallest eigenvalue (>= 1), a
            float or a strategy of floats. With n == 1 it must be 1.
        min_eigenvalue: the smallest eigenvalue (> 0).
        dtype: a real float dtype; None (default) is JAX's default float at draw time.

    Returns:
        A hypothesis strategy of `Float[Array, "n n"]`.

    Example:
        >>> from hypothesis import given, settings
        >>> @settings(deadline=None, max_examples=10)
        ... @given(spd_matrices(3, condition_number=100.0))
        ... def test(matrix):
        ...     eigenvalues = jnp.linalg.eigvalsh(matrix)
        ...     assert jnp.allclose(eigenvalues.max() / eigenvalues.min(), 100.0, rtol=1e-3)
        >>> test()
    """
    if isinstance(n, int) and n < 1:
        raise ValueError(f"`n` must be >= 1; got {n}.")
    if not isinstance(condition_number, st.SearchStrategy) and not condition_number >= 1:
        raise ValueError(f"`condition_number` must be >= 1; got {condition_number}.")
    if not min_eigenvalue > 0:
        raise ValueError(f"`min_eigenvalue` must be > 0; got {min_eigenvalue}.")
    if dtype is not None:
        _float_dtype(dtype, "dtype")
    sizes = _as_strategy(n)
    conditions = _as_strategy(condition_number)

    @st.composite
    def matrix(draw):
        size = draw(sizes)
        condition = float(draw(conditions))
        if size < 1:
            raise ValueError(f"`n` must be >= 1; got {size}.")
        if not condition >= 1:
            raise ValueError(f"`condition_number` must be >= 1; got {condition}.")
        if size == 1 and condition != 1:
            raise ValueError(f"a 1x1 matrix has condition number 1; got {condition}.")
        resolved = _float_dtype(dtype, "dtype")
        _check_x64(resolved, "dtype")
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        # QR of a Gaussian matrix, with the signs of R's diagonal folded into Q, is Haar.
        q, r = np.linalg.qr(rng.standard_normal((size, size)))
        q = q * np.sign(np.diag(r))
        interior = np.exp(rng.uniform(0.0, np.log(condition), size=max(size - 2, 0)))
        log_spread = [1.0, condition][: min(size, 2)]
        eigenvalues = min_eigenvalue * np.concatenate([log_spread, interior])
        spd = (q * eigenvalues) @ q.T
        spd = 0.5 * (spd + spd.T)
        return jnp.asarray(spd, dtype=resolved)

    return matrix()


def prng_keys(*, typed: bool = True) -> st.SearchStrategy:
    """A strategy for JAX PRNG keys from seeds hypothesis draws (and shrinks).

    Args:
        typed: True (default) for new-style typed keys (`jax.random.key`), False for raw
            `uint32[2]` keys (`jax.random.PRNGKey`).

    Returns:
        A hypothesis strategy of keys.

    Example:
        >>> from hypothesis import given, settings
        >>> @settings(deadline=None, max_examples=10)
        ... @given(prng_keys())
        ... def test(key):
        ...     assert jax.random.normal(key, (2,)).shape == (2,)
        >>> test()
    """
    make = jax.random.key if typed else jax.random.PRNGKey
    return st.integers(0, 2**32 - 1).map(make)


def small_mlps(
    *,
    in_size: int | str | st.SearchStrategy = st.integers(1, 4),
    out_size: int | str | st.SearchStrategy = st.integers(1, 4),
    max_width: int = 8,
    max_depth: int = 2,
    activations: Sequence[Callable[[Float[Array, "..."]], Float[Array, "..."]]] = (
        jnp.tanh,
        jax.nn.softplus,
    ),
    dtype: DTypeLike | None = None,
) -> st.SearchStrategy:
    """A strategy for small Equinox MLPs (`equinox.nn.MLP`) of random width, depth and weights.

    The default activations are smooth, so the models suit finite-difference checks.

    Args:
        in_size: the input size, an int, "scalar", or a strategy of those (default 1 to 4).
        out_size: the output size, an int, "scalar", or a strategy of those (default 1 to 4).
        max_width: the largest hidden width (at least 1).
        max_depth: the most hidden layers (0 gives an affine map).
        activations: activation functions to choose from.
        dtype: a real float dtype for the weights; None (default) is JAX's default float.

    Returns:
        A hypothesis strategy of `equinox.nn.MLP`.

    Example:
        >>> from hypothesis import given, settings
        >>> @settings(deadline=None, max_examples=10)
        ... @given(small_mlps(in_size=3, out_size="scalar"))
        ... def test(mlp):
        ...     assert mlp(jnp.ones(3)).shape == ()
        >>> test()
    """
    if max_width < 1:
        raise ValueError(f"`max_width` must be >= 1; got {max_width}.")
    if max_depth < 0:
        raise ValueError(f"`max_depth` must be >= 0; got {max_depth}.")
    activations = tuple(activations)
    if not activations:
        raise ValueError("`activations` must not be empty.")
    if dtype is not None:
        _float_dtype(dtype, "dtype")
    in_sizes = _as_strategy(in_size)
    out_sizes = _as_strategy(out_size)

    @st.composite
    def mlp(draw):
        resolved = _float_dtype(dtype, "dtype")
        _check_x64(resolved, "dtype")
        # Only the structure comes from Equinox (traced, not run); the weights are drawn in
        # numpy with Equinox's default init, uniform(+-1/sqrt(fan_in)), so that a draw does
        # not compile a JAX random kernel for every new layer shape.
        structure = eqx.filter_eval_shape(
            eqx.nn.MLP,
            in_size=draw(in_sizes),
            out_size=draw(out_sizes),
            width_size=draw(st.integers(1, max_width)),
            depth=draw(st.integers(0, max_depth)),
            activation=draw(st.sampled_from(activations)),
            dtype=resolved,
            key=jax.random.key(0),
        )
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        layers = []
        for layer in structure.layers:
            bound = 1.0 / np.sqrt(layer.weight.shape[1])
            weight = rng.uniform(-bound, bound, layer.weight.shape)
            bias = rng.uniform(-bound, bound, layer.bias.shape)
            layers.append(
                eqx.tree_at(
                    lambda linear: (linear.weight, linear.bias),
                    layer,
                    (jnp.asarray(weight, resolved), jnp.asarray(bias, resolved)),
                )
            )
        return eqx.tree_at(lambda model: model.layers, structure, tuple(layers))

    return mlp()
