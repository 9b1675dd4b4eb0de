"""respax.generative: MR-VAE, beta-TCVAE, MIG, dSprites and invertible networks."""

from importlib.metadata import version as _version

__version__ = _version("respax-generative")
