"""Toy Models of Superposition (Elhage et al. 2022): models, data, training and geometry metrics.

``from respax.interp import superposition``; see the private modules for the conventions
(``W`` is ``[n_features, n_hidden]``, row ``i`` = feature ``i``).
"""

from ._superposition import (
    ComputationParams as ComputationParams,
    ToyConfig as ToyConfig,
    ToyParams as ToyParams,
    TrainState as TrainState,
    hidden as hidden,
    init_computation_params as init_computation_params,
    init_params as init_params,
    init_toy_params as init_toy_params,
    init_train_state as init_train_state,
    make_optimizer as make_optimizer,
    reconstruct as reconstruct,
    reconstruction_loss as reconstruction_loss,
    sample_batch as sample_batch,
    target as target,
    train as train,
    train_step as train_step,
    train_steps as train_steps,
    xavier_normal as xavier_normal,
)
from ._superposition_metrics import (
    DEDICATED as DEDICATED,
    NOT_REPRESENTED as NOT_REPRESENTED,
    PHASE_NAMES as PHASE_NAMES,
    POLYTOPE_FRACTIONS as POLYTOPE_FRACTIONS,
    SUPERPOSITION as SUPERPOSITION,
    analytic_phase as analytic_phase,
    analytic_phase_losses as analytic_phase_losses,
    classify_features as classify_features,
    density_peaks as density_peaks,
    dimensions_per_feature as dimensions_per_feature,
    feature_dimensionality as feature_dimensionality,
    feature_norms as feature_norms,
    monosemantic_abs_loss_bound as monosemantic_abs_loss_bound,
    monosemantic_abs_losses as monosemantic_abs_losses,
    pair_cosines as pair_cosines,
    scaled_min_count as scaled_min_count,
    superposition_interference as superposition_interference,
)
