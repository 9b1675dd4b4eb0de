"""respax.sat: DIMACS I/O and an exact #SAT counter with learned branching (Neuro#)."""

from importlib.metadata import version as _version

__version__ = _version("respax-sat")
