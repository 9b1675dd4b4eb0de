"""respax.testing: hypothesis strategies and oracle checkers for JAX code over pytrees.

Strategies (`pytrees`, `pytrees_like`, `spd_matrices`, `prng_keys`, `small_mlps`) draw test
inputs; the checkers (`tree_allclose`, `assert_tree_allclose`, `check_directional_derivative`,
`dense_matrix`, `dense_vector`) compare a transform with an independent oracle; problems with
closed-form solutions (`quadratic_bilevel_problem`) serve as oracles for whole algorithms.
"""

from importlib.metadata import version as _version

from ._bilevel_problems import (
    QuadraticBilevelProblem as QuadraticBilevelProblem,
    quadratic_bilevel_problem as quadratic_bilevel_problem,
)
from ._dense import dense_matrix as dense_matrix
from ._finite_differences import (
    DirectionalDerivativeCheck as DirectionalDerivativeCheck,
    check_directional_derivative as check_directional_derivative,
)
from ._strategies import (
    prng_keys as prng_keys,
    pytrees as pytrees,
    pytrees_like as pytrees_like,
    small_mlps as small_mlps,
    spd_matrices as spd_matrices,
)
from ._trees import (
    assert_tree_allclose as assert_tree_allclose,
    dense_vector as dense_vector,
    tree_allclose as tree_allclose,
)

__all__ = [
    "DirectionalDerivativeCheck",
    "QuadraticBilevelProblem",
    "assert_tree_allclose",
    "check_directional_derivative",
    "dense_matrix",
    "dense_vector",
    "prng_keys",
    "pytrees",
    "pytrees_like",
    "quadratic_bilevel_problem",
    "small_mlps",
    "spd_matrices",
    "tree_allclose",
]

__version__ = _version("respax-testing")
