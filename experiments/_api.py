"""The contract between the runner and every experiment module.

An experiment is a module `experiments/<name>.py` with a module-level
`EXPERIMENT = Experiment(...)`, listed in `experiments/_registry.py`. The runner builds a
`Context` and calls `EXPERIMENT.run(cfg, ctx)`, which returns a `Result`.
See `experiments/README.md`.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from experiments._context import Context
from experiments._population import (
    Selection,
    grid,
    population_loop,
    population_map,
    population_size,
    select_best,
    ungrid,
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


@dataclasses.dataclass(frozen=True)
class Claim:
    """One comparison of a paper's headline result with ours (a row of `metrics.json["claims"]`).

    Attributes:
        claim: the statement, e.g. "ReLU model: >=12 of 20 features with ||W_i||>0.5".
        scale: the smallest scale at which it is expected to hold: "quick" or "paper"
            ("smoke" is allowed for claims that hold even at the smallest scale).
        paper: the paper's number or statement it compares against.
        ours: what we measured.
        holds: whether it holds at this run's scale; `None` only when this scale cannot test it,
            and then `reason` says why.
        reason: why `holds` is `None` (or any remark).

    Example:
        >>> Claim("loss < 0.1", scale="quick", paper="0.05", ours=0.04, holds=True)
        Claim(claim='loss < 0.1', scale='quick', paper='0.05', ours=0.04, holds=True, reason='')
    """

    claim: str
    scale: str
    paper: str
    ours: str | float | int | None
    holds: bool | None
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """An experiment the runner can list, run and reproduce.

    Attributes:
        name: the registry name (also the default output directory `results/<name>/`).
        title: the paper / result, one line.
        config: a frozen dataclass type; fields typed int, float, bool, str or tuple[...]
            (command-line `key=value` overrides are parsed by these annotations).
        scales: `{"smoke": cfg, "quick": cfg, "paper": cfg}`, instances of `config`.
        run: `run(cfg, ctx) -> Result`.
        paper_probe: `paper_probe(paper_cfg) -> cfg`, the paper-scale config cut to one or two
            steps of every stage while keeping the paper's shapes (models, grids, batch sizes);
            the test suite runs it on CPU to check that paper scale builds and runs.

    Example:
        >>> EXPERIMENT = Experiment(
        ...     name="toy", title="A toy", config=ToyConfig,
        ...     scales={"smoke": ToyConfig(steps=10), "quick": ToyConfig(), "paper": ToyConfig()},
        ...     run=run,
        ... )  # doctest: +SKIP
    """

    name: str
    title: str
    config: type
    scales: Mapping[str, Any]
    run: Callable[[Any, Context], "Result"]
    paper_probe: Callable[[Any], Any] | None = None


@dataclasses.dataclass
class Result:
    """What `Experiment.run` returns.

    Attributes:
        metrics: JSON-able values (floats, ints, strings, lists, nested dicts); numpy and JAX
            scalars and arrays are allowed, the runner converts them.
        claims: the paper's headline results compared with ours.
        report: markdown body for `report.md` (the runner adds a header, the claims table and
            the plots).

    Example:
        >>> Result(metrics={"loss": 0.04}, claims=[], report="Converged after 100 steps.")
        Result(metrics={'loss': 0.04}, claims=[], report='Converged after 100 steps.')
    """

    metrics: dict[str, Any]
    claims: list[Claim]
    report: str = ""
