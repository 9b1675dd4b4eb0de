"""What the package tests share: the solver and dtype lists they are parametrized over, and the
tolerances that follow the dtype (as lineax's and optimistix's `tests/helpers.py`)."""

import equinox as eqx
import jax.numpy as jnp
import lineax as lx

from respax.core import CG
from respax.testing import dense_matrix

DTYPES = (jnp.float32, jnp.float64)


def rtol(dtype) -> float:
    """An oracle tolerance for a well-conditioned problem: ~1e-10 in float64, ~1e-5 in float32."""
    return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def exact_linear_solvers(dtype=jnp.float64) -> list:
    """Linear solvers that solve a symmetric positive definite system to the dtype's accuracy:
    lineax's direct ones and respax's CG run to a tight tolerance."""
    cg_rtol = 1e-13 if jnp.dtype(dtype) == jnp.float64 else 1e-6
    return [lx.Cholesky(), lx.LU(), lx.SVD(), CG(max_steps=200, rtol=cg_rtol)]


def solver_id(solver) -> str:
    return type(solver).__module__.split(".")[0] + "." + type(solver).__name__


# `respax.testing.dense_matrix` as one compiled program per operator (instead of op-by-op
# dispatch of the vmapped matvec): the dense oracle of the curvature tests.
dense = eqx.filter_jit(dense_matrix)
