"""Matrix-free estimators on symmetric operators over pytrees: trace (Hutchinson, Hutch++), diagonal
(Hutchinson) and the top eigenvalues (Lanczos with full reorthogonalisation)."""

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray

from respax.core import Operator, Scalar, Vector, check_positive_int

__all__ = [
    "LanczosResult",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_top_k",
]


def _flat_matvec(operator: Operator, like: Any):
    if isinstance(operator, lx.AbstractLinearOperator):
        mv = operator.mv
        structure = operator.in_structure()
    elif callable(operator):
        if like is None:
            raise ValueError(
                "`like` (a pytree with the vectors' structure) is required when "
                "`operator` is a plain matvec function."
            )
        mv = operator
        structure = jax.eval_shape(lambda: like)
    else:
        raise TypeError(
            "`operator` must be a lineax.AbstractLinearOperator or a callable v -> A v, "
            f"got {type(operator).__name__}."
        )
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
    key: PRNGKeyArray,
    *,
    num_samples: int,
    distribution: Literal["rademacher", "normal"] = "rademacher",
    like: Any = None,
) -> Scalar:
    """Hutchinson's unbiased trace estimate `(1/m) sum_i z_i^T A z_i`.

    Args:
        operator: a lineax operator (or a matvec function with `like`).
        key: PRNG key for the probes.
        num_samples: m, the number of matvecs.
        distribution: probe distribution; Rademacher probes give the exact trace of a diagonal A.
        like: a pytree with the vectors' structure, needed only for a plain matvec function.

    Returns:
        The estimate, a scalar.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> A = jnp.diag(jnp.arange(1.0, 5.0))
        >>> hutchinson_trace(lambda v: A @ v, jax.random.key(0), num_samples=3, like=jnp.ones(4))
        Array(10., dtype=float32)
    """
    check_positive_int("num_samples", num_samples)
    mv, n, dtype, _ = _flat_matvec(operator, like)
    z = _probes(key, (num_samples, n), dtype, distribution)
    az = jax.lax.map(mv, z)
    return jnp.mean(jnp.sum(z * az, axis=1))


def hutchpp_trace(
    operator: Operator,
    key: PRNGKeyArray,
    *,
    num_matvecs: int,
    distribution: Literal["rademacher", "normal"] = "rademacher",
    like: Any = None,
) -> Scalar:
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
        The estimate, a scalar.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> A = jnp.array([[2.0, 1.0], [1.0, 3.0]])
        >>> t = hutchpp_trace(lambda v: A @ v, jax.random.key(0), num_matvecs=6, like=jnp.ones(2))
        >>> round(float(t), 4)
        5.0
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
    t_rest = jnp.sum(g * ag) / m
    return t_low + t_rest


def hutchinson_diagonal(
    operator: Operator,
    key: PRNGKeyArray,
    *,
    num_samples: int,
    distribution: Literal["rademacher", "normal"] = "rademacher",
    like: Any = None,
) -> Vector:
    """Hutchinson's unbiased diagonal estimate `(1/m) sum_i z_i * (A z_i)`, as a pytree.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> A = jnp.diag(jnp.array([1.0, 2.0]))
        >>> hutchinson_diagonal(lambda v: A @ v, jax.random.key(0), num_samples=2, like=jnp.ones(2))
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
    key: PRNGKeyArray,
    *,
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
        >>> r = lanczos_top_k(lambda v: A @ v, jax.random.key(0), k=2, num_iterations=3,
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
