"""respax experiments: one module per paper result, and the runner (`python -m experiments`).

Experiment authors need only these names; see experiments/README.md.
"""

from experiments._api import (
    Claim as Claim,
    Context as Context,
    Experiment as Experiment,
    Result as Result,
    Selection as Selection,
    grid as grid,
    population_loop as population_loop,
    population_map as population_map,
    population_size as population_size,
    select_best as select_best,
    ungrid as ungrid,
)

__all__ = [
    "Claim",
    "Context",
    "Experiment",
    "Result",
    "Selection",
    "grid",
    "population_loop",
    "population_map",
    "population_size",
    "select_best",
    "ungrid",
]
