"""respax.generative: MR-VAE, beta-TCVAE, MIG, dSprites and invertible networks."""

from importlib.metadata import version as _version

# --- VAE building blocks and the Multi-Rate VAE (section owned by the MR-VAE work) ---

# --- beta-TCVAE: the ELBO decomposition, MIG, procedural dSprites (β-TCVAE work) ---

# --- Invertible networks: blocks, flows, diagnostics, regularizers (invertible-network work) ---

__version__ = _version("respax-generative")
