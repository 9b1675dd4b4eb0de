"""respax.implicit_diff: unrolled and implicit hypergradients, implicit root/fixed-point/argmin
wrappers on a custom JVP, and cold-start / warm-start bilevel loops (Vicol et al. 2022).

Linear solves are lineax solvers: `respax.core.CG` / `respax.core.Neumann` (exact matvec
counts) or lineax's own (`lineax.Cholesky()`, `lineax.LU()`, `lineax.SVD()`, ...).
"""

from importlib.metadata import version as _version

from ._adjoint import (
    Implicit as Implicit,
    Truncated as Truncated,
    Unrolled as Unrolled,
)
from ._bilevel import (
    BilevelConfig as BilevelConfig,
    BilevelHistory as BilevelHistory,
    BilevelState as BilevelState,
    bilevel_init as bilevel_init,
    bilevel_optimize as bilevel_optimize,
    bilevel_run as bilevel_run,
)
from ._hypergradient import (
    FullUnroll as FullUnroll,
    HypergradInfo as HypergradInfo,
    TruncatedUnroll as TruncatedUnroll,
    hypergradient as hypergradient,
)
from ._inner import (
    InnerInfo as InnerInfo,
    run_inner_optimizer as run_inner_optimizer,
    solve_inner as solve_inner,
)
from ._root import (
    implicit_argmin as implicit_argmin,
    implicit_fixed_point as implicit_fixed_point,
    implicit_root as implicit_root,
)

__version__ = _version("respax-implicit-diff")
