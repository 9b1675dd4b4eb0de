"""respax.core: pytree linear operators, inverse solvers and the model/output-loss contract."""

from importlib.metadata import version as _version

from ._custom_types import (
    BoolScalar as BoolScalar,
    IntScalar as IntScalar,
    Matvec as Matvec,
    Operator as Operator,
    Params as Params,
    Scalar as Scalar,
    ScalarLike as ScalarLike,
    Vector as Vector,
)
from ._errors import (
    check_float_tree as check_float_tree,
    check_positive as check_positive,
    check_positive_int as check_positive_int,
    check_same_structure as check_same_structure,
    is_array_like as is_array_like,
    is_inexact_array_like as is_inexact_array_like,
)
from ._estimators import (
    LanczosResult as LanczosResult,
    PowerIterationResult as PowerIterationResult,
    TraceEstimate as TraceEstimate,
    hutchinson_diagonal as hutchinson_diagonal,
    hutchinson_trace as hutchinson_trace,
    hutchpp_trace as hutchpp_trace,
    lanczos_top_k as lanczos_top_k,
    power_iteration as power_iteration,
)
from ._losses import (
    BernoulliLoss as BernoulliLoss,
    GaussianLoss as GaussianLoss,
    OutputLoss as OutputLoss,
    SoftmaxCrossEntropy as SoftmaxCrossEntropy,
)
from ._operators import hvp as hvp, hvp_operator as hvp_operator
from ._solvers import (
    CG as CG,
    RESULTS as RESULTS,
    Neumann as Neumann,
    SolveInfo as SolveInfo,
    as_operator as as_operator,
    damped as damped,
    default_rtol as default_rtol,
    linear_solve_with_info as linear_solve_with_info,
    lissa as lissa,
)
from ._stats import (
    BootstrapCI as BootstrapCI,
    average_ranks as average_ranks,
    bootstrap_ci as bootstrap_ci,
    pearson as pearson,
    spearman as spearman,
)

__version__ = _version("respax-core")
