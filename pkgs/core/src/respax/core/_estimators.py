"""Matrix-free estimators on symmetric operators over pytrees: trace (Hutchinson, Hutch++, each with
its standard error), diagonal (Hutchinson), the top eigenvalues (Lanczos with full
reorthogonalisation) and the dominant eigenpair (power iteration).

Each takes a lineax operator, or a plain matvec function `v -> A v` together with `like` (a pytree
with the vectors' structure). Randomness comes from the keyword-only, required `key`."""

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._custom_types import Operator, Scalar, Vector
from ._errors import check_positive_int
from ._solvers import as_operator

__all__ = [
    "LanczosResult",
    "PowerIterationResult",
    "TraceEstimate",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_top_k",
    "power_iteration",
]


class TraceEstimate(NamedTuple):
    """A stochastic trace estimate and its standard error.

    `standard_error` is the sample standard deviation of the per-probe estimates over the square
    root of their number (NaN with a single probe, where it cannot be estimated); for Hutch++ it is
    that of the Hutchinson part, the sketched part being exact.
    """

    value: Scalar  # the estimate of tr(A)
    standard_error: Scalar  # std(per-probe estimates, ddof=1) / sqrt(number of probes)


def _mean_and_standard_error(samples: Float[Array, " m"]) -> TraceEstimate:
    m = samples.shape[0]
    value = jnp.mean(samples)
    if m == 1:
        return TraceEstimate(value, jnp.full((), jnp.nan, samples.dtype))
    return TraceEstimate(value, jnp.std(samples, ddof=1) / jnp.sqrt(jnp.asarray(m, samples.dtype)))


def _flat_matvec(operator: Operator, like: Any):
    op = as_operator(operator, like)
    mv, structure = op.mv, op.in_structure()
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), structure)
    flat0, unravel = ravel_pytree(zeros)

    def flat_mv(x):
        return ravel_pytree(mv(unravel(x)))[0]

    return flat_mv, flat0.shape[0], flat0.dtype, unravel


def _probes(key, shape, dtype, distribution):
    if distribution == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    if distribution == "normal":
        return jax.random.normal(key, shape, dtype)
    raise ValueError(f"`distribution` must be 'rademacher' or 'normal', got {distribution!r}.")


def hutchinson_trace(
    operator: Operator,
    *,
    key: PRNGKeyArray,
    num_samples: int,
    distribution: Literal["rademacher", "normal"] = "rademacher",
    like: Any = None,
) -> TraceEstimate:
    """Hutchinson's unbiased trace estimate `(1/m) sum_i z_i^T A z_i`, with its standard error.

    The probes are the rows of `jax.random.rademacher(key, (m, n))` (or `jax.random.normal`) on
    the flattened vectors, `n` being the dimension.

    Args:
        operator: a lineax operator (or a matvec function with `like`).
        key: PRNG key for the probes.
        num_samples: m, the number of probes (= matvecs).
        distribution: probe distribution; Rademacher probes give the exact trace of a diagonal A
            (with standard error 0).
        like: a pytree with the vectors' structure, needed only for a plain matvec function.

    Returns:
        A `TraceEstimate(value, standard_error)`; the standard error is
        `std(z_i^T A z_i, ddof=1) / sqrt(m)` (NaN when `m == 1`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> A = jnp.diag(jnp.arange(1.0, 5.0))
        >>> t = hutchinson_trace(lambda v: A @ v, key=jax.random.key(0), num_samples=3,
        ...                      like=jnp.ones(4))
        >>> float(t.value), float(t.standard_error)
        (10.0, 0.0)
    """
    check_positive_int("num_samples", num_samples)
    mv, n, dtype, _ = _flat_matvec(operator, like)
    z = _probes(key, (num_samples, n), dtype, distribution)
    az = jax.lax.map(mv, z)
    return _mean_and_standard_error(jnp.sum(z * az, axis=1))


def hutchpp_trace(
    operator: Operator,
    *,
    key: PRNGKeyArray,
    num_matvecs: int,
    distribution: Literal["rademacher", "normal"] = "rademacher",
    like: Any = None,
) -> TraceEstimate:
    """Hutch++ (Meyer et al. 2021): exact trace on a low-rank sketch plus Hutchinson on the rest.

    Uses `num_matvecs` matvecs: a third to sketch `Q = orth(A S)`, a third for `tr(Q^T A Q)` and the
    rest for Hutchinson on `(I - QQ^T) A (I - QQ^T)`. When the sketch spans the whole space the
    result is exact.

    Args:
        operator: a lineax operator (or a matvec function with `like`).
        key: PRNG key.
        num_matvecs: the matvec budget, >= 3.
        distribution: probe distribution.
        like: see `hutchinson_trace`.

    Returns:
        A `TraceEstimate`; its standard error is the Hutchinson part's, over its
        `num_matvecs - 2 * (num_matvecs // 3)` probes (NaN for a single probe), the sketched part
        `tr(Q^T A Q)` being exact.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> A = jnp.array([[2.0, 1.0], [1.0, 3.0]])
        >>> t = hutchpp_trace(lambda v: A @ v, key=jax.random.key(0), num_matvecs=6,
        ...                   like=jnp.ones(2))
        >>> round(float(t.value), 4), round(float(t.standard_error), 4)
        (5.0, 0.0)
    """
    check_positive_int("num_matvecs", num_matvecs)
    if num_matvecs < 3:
        raise ValueError(f"`num_matvecs` must be >= 3, got {num_matvecs}.")
    mv, n, dtype, _ = _flat_matvec(operator, like)
    k = num_matvecs // 3
    m = num_matvecs - 2 * k
    ks, kg = jax.random.split(key)
    s = _probes(ks, (k, n), dtype, distribution)
    y = jax.lax.map(mv, s)  # (k, n) = (A S)^T
    q, _ = jnp.linalg.qr(y.T)  # (n, min(n, k))
    aq = jax.lax.map(mv, q.T)  # (r, n)
    t_low = jnp.sum(q.T * aq)
    g = _probes(kg, (m, n), dtype, distribution)
    g = g - (g @ q) @ q.T
    ag = jax.lax.map(mv, g)
    ag = ag - (ag @ q) @ q.T
    rest = _mean_and_standard_error(jnp.sum(g * ag, axis=1))
    return TraceEstimate(t_low + rest.value, rest.standard_error)


def hutchinson_diagonal(
    operator: Operator,
    *,
    key: PRNGKeyArray,
    num_samples: int,
    distribution: Literal["rademacher", "normal"] = "rademacher",
    like: Any = None,
) -> Vector:
    """Hutchinson's unbiased diagonal estimate `(1/m) sum_i z_i * (A z_i)`, as a pytree.

    Args:
        operator: a lineax operator (or a matvec function with `like`).
        key: PRNG key for the probes (drawn as in `hutchinson_trace`).
        num_samples: m, the number of probes (= matvecs).
        distribution: probe distribution; Rademacher probes are exact for a diagonal A.
        like: see `hutchinson_trace`.

    Returns:
        The estimated diagonal, a pytree with the vectors' structure.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> A = jnp.diag(jnp.array([1.0, 2.0]))
        >>> hutchinson_diagonal(lambda v: A @ v, key=jax.random.key(0), num_samples=2,
        ...                     like=jnp.ones(2))
        Array([1., 2.], dtype=float32)
    """
    check_positive_int("num_samples", num_samples)
    mv, n, dtype, unravel = _flat_matvec(operator, like)
    z = _probes(key, (num_samples, n), dtype, distribution)
    az = jax.lax.map(mv, z)
    return unravel(jnp.mean(z * az, axis=0))


class LanczosResult(NamedTuple):
    """Top-k eigenpairs from Lanczos."""

    eigenvalues: Float[Array, " k"]  # descending
    eigenvectors: Vector  # pytree whose leaves have a leading axis of size k, unit norm
    projection: Float[Array, "m m"]  # V^T A V on the Lanczos basis (tridiagonal up to rounding)


def lanczos_top_k(
    operator: Operator,
    *,
    key: PRNGKeyArray,
    k: int,
    num_iterations: int,
    like: Any = None,
) -> LanczosResult:
    """The `k` largest eigenvalues (and eigenvectors) of a symmetric operator by Lanczos.

    Runs `num_iterations` matvecs with full reorthogonalisation, restarts on breakdown and a
    Rayleigh-Ritz step on the stored products (so it is exact, up to rounding, when
    `num_iterations` equals the dimension). Costs O(num_iterations * dim) memory.

    Args:
        operator: a symmetric lineax operator (or a matvec function with `like`).
        key: PRNG key for the start vector.
        k: how many eigenpairs, 1 <= k <= num_iterations.
        num_iterations: Lanczos steps (= matvecs), <= the dimension.
        like: see `hutchinson_trace`.

    Returns:
        A `LanczosResult`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> A = jnp.diag(jnp.array([1.0, 5.0, 3.0]))
        >>> r = lanczos_top_k(lambda v: A @ v, key=jax.random.key(0), k=2, num_iterations=3,
        ...                   like=jnp.ones(3))
        >>> [round(float(x), 3) for x in r.eigenvalues]
        [5.0, 3.0]
    """
    check_positive_int("k", k)
    check_positive_int("num_iterations", num_iterations)
    mv, n, dtype, unravel = _flat_matvec(operator, like)
    if num_iterations > n:
        raise ValueError(f"`num_iterations` must be <= the dimension {n}, got {num_iterations}.")
    if k > num_iterations:
        raise ValueError(f"`k` must be <= num_iterations={num_iterations}, got {k}.")
    m = num_iterations
    k0, k_restart = jax.random.split(key)
    v0 = jax.random.normal(k0, (n,), dtype)
    v0 = v0 / jnp.linalg.norm(v0)
    basis = jnp.zeros((m, n), dtype).at[0].set(v0)
    images = jnp.zeros((m, n), dtype)
    eps = jnp.finfo(dtype).eps

    def orthogonalise(w, basis, j):
        # Full reorthogonalisation against rows 0..j, twice (stable classical Gram-Schmidt).
        mask = (jnp.arange(m) <= j).astype(dtype)[:, None]
        for _ in range(2):
            w = w - (basis * mask).T @ ((basis * mask) @ w)
        return w

    def body(j, carry):
        basis, images, scale = carry
        v = basis[j]
        w = mv(v)
        images = images.at[j].set(w)
        scale = jnp.maximum(scale, jnp.linalg.norm(w))
        w = orthogonalise(w, basis, j)
        beta = jnp.linalg.norm(w)
        # On breakdown (the Krylov space is invariant) restart with a fresh random direction.
        fresh = orthogonalise(
            jax.random.normal(jax.random.fold_in(k_restart, j), (n,), dtype), basis, j
        )
        w = jnp.where(beta > 1e3 * eps * scale, w, fresh)
        nxt = w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(dtype).tiny)
        basis = jnp.where(j + 1 < m, basis.at[jnp.minimum(j + 1, m - 1)].set(nxt), basis)
        return basis, images, scale

    init = (basis, images, jnp.zeros((), dtype))
    basis, images, _ = jax.lax.fori_loop(0, m, body, init)
    # Rayleigh-Ritz on the stored images: exact projection V^T A V even after restarts.
    t = basis @ images.T
    t = 0.5 * (t + t.T)
    evals, evecs = jnp.linalg.eigh(t)
    order = jnp.argsort(-evals)[:k]
    vecs = (basis.T @ evecs[:, order]).T  # (k, n)
    vecs = vecs / jnp.linalg.norm(vecs, axis=1, keepdims=True)
    return LanczosResult(evals[order], jax.vmap(unravel)(vecs), t)


class PowerIterationResult(NamedTuple):
    """The dominant eigenpair from power iteration."""

    eigenvalue: Scalar  # the Rayleigh quotient v^T A v of the final unit vector (signed)
    eigenvector: Vector  # unit norm, with the vectors' structure
    num_matvecs: Int[Array, ""]  # max_steps + 1 (the last one for the Rayleigh quotient)


def power_iteration(
    operator: Operator,
    *,
    key: PRNGKeyArray,
    max_steps: int,
    like: Any = None,
) -> PowerIterationResult:
    """The eigenvalue of largest magnitude of a symmetric operator, by power iteration.

    Starts from `jax.random.normal(key, (n,))` on the flattened vectors (normalised), applies
    `v <- A v / ||A v||` `max_steps` times and returns the Rayleigh quotient `v^T A v` of the final
    vector, so the eigenvalue keeps its sign. The error decays like `|lambda_2 / lambda_1|^steps`;
    with two dominant eigenvalues of equal magnitude and opposite sign it does not converge.

    Args:
        operator: a symmetric lineax operator (or a matvec function with `like`).
        key: PRNG key for the start vector.
        max_steps: the number of power steps, >= 1 (the result costs `max_steps + 1` matvecs).
        like: see `hutchinson_trace`.

    Returns:
        A `PowerIterationResult(eigenvalue, eigenvector, num_matvecs)`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> A = jnp.diag(jnp.array([1.0, -4.0, 2.0]))
        >>> r = power_iteration(lambda v: A @ v, key=jax.random.key(0), max_steps=40,
        ...                     like=jnp.ones(3))
        >>> round(float(r.eigenvalue), 4), int(r.num_matvecs)
        (-4.0, 41)
    """
    check_positive_int("max_steps", max_steps)
    mv, n, dtype, unravel = _flat_matvec(operator, like)
    v0 = jax.random.normal(key, (n,), dtype)
    tiny = jnp.finfo(dtype).tiny

    def step(v, _):
        w = mv(v)
        return w / (jnp.linalg.norm(w) + tiny), None

    v, _ = jax.lax.scan(step, v0 / jnp.linalg.norm(v0), None, length=max_steps)
    eigenvalue = jnp.vdot(v, mv(v))
    return PowerIterationResult(eigenvalue, unravel(v), jnp.asarray(max_steps + 1))
