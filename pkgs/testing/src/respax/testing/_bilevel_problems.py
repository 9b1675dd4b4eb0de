"""An underdetermined quadratic bilevel problem with a closed-form solution, for oracle tests of
hypergradients and bilevel loops (Vicol et al. 2022, Sec. 3)."""

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


@dataclasses.dataclass(frozen=True)
class QuadraticBilevelProblem:
    """Inner f(u, w) = 1/2 w^T A w - w^T B u, outer F(u, w) = 1/2 |C w - t|^2.

    The inner solution is w*(u) = A^{-1} B u, so F(u, w*(u)) = 1/2 |M u - t|^2 with
    M = C A^{-1} B (`jacobian`). With more outer parameters than outputs (p > m) the outer problem
    is underdetermined: its solutions form an affine subspace and `min_norm_solution` is the one
    of least norm, M^+ t, which cold-start bilevel optimization with exact hypergradients from
    u0 = 0 reaches.

    The arrays are numpy float64 (the exact problem); `functions` gives the two losses as JAX
    functions in a chosen dtype.

    Attributes:
        a: (d, d) the inner Hessian, symmetric positive definite with eigenvalues
            `linspace(1, 4, d)`.
        b: (d, p) the inner coupling to the outer parameters.
        c: (m, d) the outer readout.
        target: (m,) the outer target t.
    """

    a: Float[np.ndarray, "d d"]
    b: Float[np.ndarray, "d p"]
    c: Float[np.ndarray, "m d"]
    target: Float[np.ndarray, " m"]

    def functions(
        self, dtype: type | np.dtype | str = jnp.float64
    ) -> tuple[Callable[..., Array], Callable[..., Array]]:
        """`(inner, outer)`: f(u, w) and F(u, w) as JAX functions with the arrays in `dtype`.

        Example:
            >>> problem = quadratic_bilevel_problem(3, 4, 2, seed=0)
            >>> inner, outer = problem.functions(jnp.float32)
            >>> float(inner(jnp.ones(4), jnp.zeros(3))), outer(jnp.ones(4), jnp.zeros(3)).dtype
            (0.0, dtype('float32'))
        """
        a, b, c, t = (jnp.asarray(v, dtype) for v in (self.a, self.b, self.c, self.target))
        inner = lambda u, w: 0.5 * w @ a @ w - w @ b @ u
        outer = lambda u, w: 0.5 * jnp.sum((c @ w - t) ** 2)
        return inner, outer

    def inner_solution(self, u: Float[np.ndarray, " p"]) -> Float[np.ndarray, " d"]:
        """w*(u) = A^{-1} B u, the minimizer of the inner loss (numpy float64).

        Example:
            >>> problem = quadratic_bilevel_problem(3, 4, 2, seed=0)
            >>> problem.inner_solution(np.zeros(4)).tolist()
            [0.0, 0.0, 0.0]
        """
        return np.linalg.solve(self.a, self.b @ np.asarray(u, np.float64))

    def jacobian(self) -> Float[np.ndarray, "m p"]:
        """M = C A^{-1} B: F(u, w*(u)) = 1/2 |M u - t|^2 (numpy float64).

        Example:
            >>> quadratic_bilevel_problem(3, 4, 2, seed=0).jacobian().shape
            (2, 4)
        """
        return self.c @ np.linalg.solve(self.a, self.b)

    def min_norm_solution(self) -> Float[np.ndarray, " p"]:
        """u† = M^+ t, the outer solution of least norm (numpy float64).

        Example:
            >>> problem = quadratic_bilevel_problem(3, 4, 2, seed=0)
            >>> u = problem.min_norm_solution()
            >>> bool(np.allclose(problem.jacobian() @ u, problem.target))
            True
        """
        return np.linalg.pinv(self.jacobian()) @ self.target


def quadratic_bilevel_problem(
    inner_dim: int, outer_dim: int, outputs: int, *, seed: int = 0
) -> QuadraticBilevelProblem:
    """A random quadratic bilevel problem (see `QuadraticBilevelProblem`), drawn on the host from
    `np.random.default_rng(seed)`: A = Q diag(linspace(1, 4, d)) Q^T with Q a random orthogonal
    matrix, B ~ N(0, 1/p), C ~ N(0, 1), t ~ N(0, 1).

    Args:
        inner_dim: d, the size of the inner parameters w.
        outer_dim: p, the size of the outer parameters u (p > m makes the outer problem
            underdetermined, with a unique least-norm solution).
        outputs: m, the size of the outer residual C w - t.
        seed: the numpy seed; the same seed gives the same problem.

    Returns:
        The problem, its arrays in numpy float64.

    Raises:
        TypeError: a size that is not an int.
        ValueError: a size below 1.

    Example:
        >>> problem = quadratic_bilevel_problem(8, 12, 5, seed=0)
        >>> np.linalg.eigvalsh(problem.a)[[0, -1]].round(6).tolist()
        [1.0, 4.0]
    """
    for name, value in (("inner_dim", inner_dim), ("outer_dim", outer_dim), ("outputs", outputs)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be a positive int, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    d, p, m = int(inner_dim), int(outer_dim), int(outputs)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = (q * np.linspace(1.0, 4.0, d)) @ q.T
    b = rng.normal(size=(d, p)) / np.sqrt(p)
    c = rng.normal(size=(m, d))
    t = rng.normal(size=m)
    return QuadraticBilevelProblem(a=a, b=b, c=c, target=t)
