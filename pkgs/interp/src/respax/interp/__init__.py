"""respax.interp: influence functions, PBRF and toy models of superposition."""

from importlib.metadata import version as _version

from respax.core import pearson as pearson, spearman as spearman

from . import superposition as superposition

# Influence functions (fit_factors -> pairwise_scores / self_scores) over every solver, the PBRF,
# leave-one-out retraining, the five-term gap decomposition and evaluation metrics.
from ._evaluation import (
    fraction_found as fraction_found,
    linear_datamodeling_score as linear_datamodeling_score,
    loo_correlation as loo_correlation,
    mislabel_auc as mislabel_auc,
)
from ._influence import (
    fit_factors as fit_factors,
    inverse_curvature_product as inverse_curvature_product,
    load_factors as load_factors,
    pairwise_scores as pairwise_scores,
    save_factors as save_factors,
    self_scores as self_scores,
)
from ._pbrf import (
    TERMS as TERMS,
    five_terms as five_terms,
    linearized_pbrf as linearized_pbrf,
    loo_retrain as loo_retrain,
    pbrf as pbrf,
    proximal_response as proximal_response,
    response_distances as response_distances,
    retrain as retrain,
)
from ._strategies import (
    EKFAC as EKFAC,
    KFAC as KFAC,
    Arnoldi as Arnoldi,
    Diagonal as Diagonal,
    Exact as Exact,
    Identity as Identity,
    InfluenceFactors as InfluenceFactors,
    LiSSA as LiSSA,
    MatrixFree as MatrixFree,
    Strategy as Strategy,
)

__version__ = _version("respax-interp")
