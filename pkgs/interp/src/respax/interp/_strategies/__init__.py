"""Inverse-curvature strategies for influence, one per module: what `fit_factors` fits and how
the fitted factors apply `(C + damping I)^{-1}` to rows of gradients.

Each strategy is a small static configuration, a final subclass of the abstract `Strategy`
(`Exact`, `Identity`, `Diagonal`, `MatrixFree(linear_solver)`, `LiSSA`, `Arnoldi`, and `KFAC` /
`EKFAC` under `AbstractKronecker`); `fit_factors` turns it into a factors module holding arrays
only (never the fitting data), whose `precondition(model, g, damping, key, fit_inputs)` returns
`(C + damping I)^{-1} g` row by row; the matrix-free ones take the fitting inputs back there.
`C` is the mean over the training examples of the analytic expected Gauss-Newton matrix
`J_i^T H_i J_i` (`H_i = S_i S_i^T` from the output loss's `hessian_sqrt`), or the Hessian of the
mean loss for `Exact(curvature="hessian")`.
"""

from respax.core import CG, Neumann

from ._base import (
    InfluenceFactors as InfluenceFactors,
    Layout as Layout,
    Segments as Segments,
    Strategy as Strategy,
    fingerprint as fingerprint,
    gather as gather,
    resolve_key as resolve_key,
    scatter as scatter,
    segment_size as segment_size,
    to_segments as to_segments,
)
from .arnoldi import Arnoldi as Arnoldi, ArnoldiFactors as ArnoldiFactors
from .diagonal import Diagonal as Diagonal, DiagonalFactors as DiagonalFactors
from .exact import Exact as Exact, ExactFactors as ExactFactors
from .identity import Identity as Identity, IdentityFactors as IdentityFactors
from .kronecker import (
    EKFAC as EKFAC,
    KFAC as KFAC,
    AbstractKronecker as AbstractKronecker,
    KroneckerFactors as KroneckerFactors,
    block_ggn_matvec as block_ggn_matvec,
)
from .lissa import LiSSA as LiSSA, LiSSAFactors as LiSSAFactors
from .matrix_free import MatrixFree as MatrixFree, MatrixFreeFactors as MatrixFreeFactors

# The names `fit_factors(strategy="...")` accepts, each building the strategy's defaults.
STRATEGIES = {
    "exact": Exact,
    "identity": Identity,
    "diagonal": Diagonal,
    "cg": lambda: MatrixFree(CG(max_steps=100)),
    "neumann": lambda: MatrixFree(Neumann(max_steps=200, step_size=1.0)),
    "lissa": LiSSA,
    "arnoldi": Arnoldi,
    "kfac": KFAC,
    "ekfac": EKFAC,
}
