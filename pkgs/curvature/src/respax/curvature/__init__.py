"""respax.curvature: curvature-vector products, estimators, layer capture, K-FAC and EK-FAC.

- Curvature-vector products as lineax operators for the model/output-loss contract:
  `hessian_operator`, `ggn_operator`, `fisher_operator` (exact or Monte-Carlo),
  `empirical_fisher_operator`.
- Estimators, re-exported from `respax.core` (the same objects): `hutchinson_trace`,
  `hutchpp_trace` (both return a `TraceEstimate` with a standard error), `hutchinson_diagonal`,
  `lanczos_top_k`, `power_iteration`.
- Layer capture without jaxpr matching: `capture_layers` -> `CapturePlan` (with a coverage
  `report()`), the one-pass statistics helper `kfac_stats`, and `tap_layers` (per-example layer
  inputs and output cotangents, for rank-one per-example gradient products).
- K-FAC as an optax transform: `kfac`, `KFACConfig`, `KFACState`, `kfac_report`.
- Kronecker factors as pytrees: `KFACFactors`, `fit_kfac_factors`, `EKFACFactors`, `fit_ekfac`,
  `kfac_eigendecomposition` (K-FAC in eigen form, as `EKFACFactors`), `damped_inverse`.
- SOAP (Adam in Shampoo's Kronecker eigenbasis, sharing EK-FAC's eigenbasis code) as an optax
  transform: `soap`, `scale_by_soap`, `SOAPState`.
"""

from importlib.metadata import version as _version

# The functions curvature had, re-exported (the same objects); their result types
# (`TraceEstimate`, `PowerIterationResult`) are respax.core's.
from respax.core import (
    LanczosResult as LanczosResult,
    hutchinson_diagonal as hutchinson_diagonal,
    hutchinson_trace as hutchinson_trace,
    hutchpp_trace as hutchpp_trace,
    lanczos_top_k as lanczos_top_k,
    power_iteration as power_iteration,
)

from ._capture import (
    CaptureError as CaptureError,
    CapturePlan as CapturePlan,
    LayerInfo as LayerInfo,
    UncoveredParameterError as UncoveredParameterError,
    capture_layers as capture_layers,
    kfac_stats as kfac_stats,
    layer_to_matrix as layer_to_matrix,
    matrix_to_layer as matrix_to_layer,
    tap_layers as tap_layers,
)
from ._factors import (
    EKFACFactors as EKFACFactors,
    KFACFactors as KFACFactors,
    damped_inverse as damped_inverse,
    fit_ekfac as fit_ekfac,
    fit_kfac_factors as fit_kfac_factors,
    kfac_eigendecomposition as kfac_eigendecomposition,
)
from ._kfac import (
    KFACConfig as KFACConfig,
    KFACState as KFACState,
    kfac as kfac,
    kfac_factors_from_state as kfac_factors_from_state,
    kfac_report as kfac_report,
)
from ._products import (
    empirical_fisher_operator as empirical_fisher_operator,
    fisher_operator as fisher_operator,
    ggn_operator as ggn_operator,
    hessian_operator as hessian_operator,
    split_params as split_params,
)
from ._soap import (
    SOAPState as SOAPState,
    scale_by_soap as scale_by_soap,
    soap as soap,
)

__version__ = _version("respax-curvature")
