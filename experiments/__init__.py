"""respax experiments: one module per paper result, and the runner (`python -m experiments`).

Experiment authors need only these names; see experiments/README.md.
"""

from experiments._api import (
    Claim as Claim,
    Context as Context,
    Experiment as Experiment,
    Result as Result,
)

__all__ = ["Claim", "Context", "Experiment", "Result"]
