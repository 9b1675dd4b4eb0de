"""respax.evals: one LM protocol, model-written evaluations and next-token games."""

from importlib.metadata import version as _version

__version__ = _version("respax-evals")
