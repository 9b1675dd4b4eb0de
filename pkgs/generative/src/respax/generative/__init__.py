"""respax.generative: MR-VAE, beta-TCVAE, MIG, dSprites and invertible networks."""

from importlib.metadata import version as _version

# --- VAE building blocks and the Multi-Rate VAE (section owned by the MR-VAE work) ---
from ._likelihoods import negative_log_likelihood as negative_log_likelihood
from ._linear_vae import (
    LinearMultiRateVAE as LinearMultiRateVAE,
    LinearVAEParams as LinearVAEParams,
    fit_linear_mrvae as fit_linear_mrvae,
    linear_vae_encoder_optimum as linear_vae_encoder_optimum,
    linear_vae_optimum as linear_vae_optimum,
    linear_vae_rate_distortion as linear_vae_rate_distortion,
)
from ._mrvae import (
    RDCurve as RDCurve,
    beta_vae_rate_distortion as beta_vae_rate_distortion,
    distortion_at_rate as distortion_at_rate,
    log_spaced_betas as log_spaced_betas,
    mrvae_loss as mrvae_loss,
    rate_distortion_curve as rate_distortion_curve,
    sample_beta as sample_beta,
)
from ._vae import (
    VAE as VAE,
    MultiRateVAE as MultiRateVAE,
    Posterior as Posterior,
    RateDistortion as RateDistortion,
    active_units as active_units,
    beta_vae_loss as beta_vae_loss,
    conv_vae as conv_vae,
    distortion as distortion,
    elbo as elbo,
    encode as encode,
    gaussian_kl as gaussian_kl,
    kl_annealing as kl_annealing,
    mlp_vae as mlp_vae,
    posterior as posterior,
    rate as rate,
    rate_distortion as rate_distortion,
    reparameterize as reparameterize,
)
from ._vae_layers import (
    ConvDecoder as ConvDecoder,
    ConvEncoder as ConvEncoder,
    Gate as Gate,
    MLPDecoder as MLPDecoder,
    MLPEncoder as MLPEncoder,
    ResidualBlock as ResidualBlock,
    gated_units as gated_units,
)

# isort: split

# --- beta-TCVAE: the ELBO decomposition, MIG, procedural dSprites (β-TCVAE work) ---
from ._dsprites import (
    DSPRITES_FACTOR_NAMES as DSPRITES_FACTOR_NAMES,
    DSPRITES_FACTOR_SIZES as DSPRITES_FACTOR_SIZES,
    DSPRITES_SIZE as DSPRITES_SIZE,
    DSpritesData as DSpritesData,
    dsprites_classes as dsprites_classes,
    dsprites_factor_values as dsprites_factor_values,
    dsprites_index as dsprites_index,
    dsprites_values as dsprites_values,
    load_dsprites_npz as load_dsprites_npz,
    render_dsprites as render_dsprites,
    render_dsprites_at as render_dsprites_at,
    sprite_centre as sprite_centre,
)
from ._kl_decomposition import (
    KLDecomposition as KLDecomposition,
    gaussian_log_density as gaussian_log_density,
    kl_decomposition as kl_decomposition,
    kl_decomposition_full as kl_decomposition_full,
    mixture_log_density as mixture_log_density,
    mss_log_weights as mss_log_weights,
)
from ._mig import (
    MIGResult as MIGResult,
    discrete_mutual_info as discrete_mutual_info,
    discretize as discretize,
    mig_discrete as mig_discrete,
    mig_sampled as mig_sampled,
)
from ._tcvae import mrvae_tcvae_loss as mrvae_tcvae_loss, tcvae_loss as tcvae_loss
from ._traversal import latent_traversal as latent_traversal

# isort: split

# --- Invertible networks: blocks, flows, diagnostics, regularizers (invertible-network work) ---
from ._flow import Flow as Flow, StandardNormal as StandardNormal
from ._flow_multiscale import FactorOut as FactorOut
from ._flow_scan import Chain as Chain, ScannedBlocks as ScannedBlocks
from ._flow_stability import (
    condition_number as condition_number,
    fd_inverse_regularizer as fd_inverse_regularizer,
    fd_regularizer as fd_regularizer,
    invertibility_attack as invertibility_attack,
    jacobian_singular_values as jacobian_singular_values,
    local_lipschitz as local_lipschitz,
    memory_saving_forward as memory_saving_forward,
    nf_regularizer as nf_regularizer,
    nonfinite_fraction as nonfinite_fraction,
    ood_probes as ood_probes,
    reconstruction_error as reconstruction_error,
)
from ._invertible import (
    ActNorm as ActNorm,
    AdditiveCoupling as AdditiveCoupling,
    AffineCoupling as AffineCoupling,
    InvertibleBlock as InvertibleBlock,
    LUConv1x1 as LUConv1x1,
    MLPConditioner as MLPConditioner,
    Permute as Permute,
    Squeeze as Squeeze,
    coupling_scale as coupling_scale,
)
from ._iresnet import InvertibleResidualBlock as InvertibleResidualBlock

__version__ = _version("respax-generative")
