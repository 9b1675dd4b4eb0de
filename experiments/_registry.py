"""The experiments the runner knows, imported lazily so that one broken module breaks only itself.

`NAMES` lists the modules `experiments/<name>.py`, each defining `EXPERIMENT`. More experiments
(e.g. test fixtures) can be added without editing this file through the environment variable
`RESPAX_EXTRA_EXPERIMENTS="package.module:ATTR,other.module:ATTR"`; each entry must be importable
(put its directory on PYTHONPATH) and `ATTR` must be an `Experiment`.
"""

import dataclasses
import importlib
import os

from experiments._api import Experiment
from experiments._errors import RunnerError

NAMES = [
    "superposition",
    "kfac_autoencoder",
    "bilevel_implicit_bias",
    "influence_pbrf",
    "neurosharp",
    "model_written_evals",
    "tcvae_disentanglement",
    "mrvae_rate_distortion",
    "next_token_humans_vs_lms",
    "exploding_inverses",
]
EXTRA_ENV = "RESPAX_EXTRA_EXPERIMENTS"


@dataclasses.dataclass
class Entry:
    """One registry row: the experiment, or why it cannot be imported."""

    name: str
    experiment: Experiment | None
    error: str | None = None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _import(module: str, attr: str) -> Experiment:
    obj = getattr(importlib.import_module(module), attr)
    if not isinstance(obj, Experiment):
        raise TypeError(f"{module}.{attr} is a {type(obj).__name__}, not an Experiment")
    return obj


def _extra_specs() -> list[str]:
    return [s.strip() for s in os.environ.get(EXTRA_ENV, "").split(",") if s.strip()]


def entries() -> list[Entry]:
    """Every experiment, registered ones first, then the extras, importing each one."""
    out = []
    for name in NAMES:
        try:
            exp = _import(f"experiments.{name}", "EXPERIMENT")
            if exp.name != name:
                raise ValueError(f"experiments/{name}.py defines EXPERIMENT.name={exp.name!r}")
            out.append(Entry(name, exp))
        except Exception as e:  # noqa: BLE001 - listed as unavailable
            out.append(Entry(name, None, _one_line(e)))
    for extra in entries_extra():
        out = [e for e in out if e.name != extra.name] + [extra]
    return out


def load(name: str) -> Experiment:
    """The experiment called `name`, importing only what is needed to find it.

    Raises:
        RunnerError: unknown name (exit code 2) or a module that fails to import (exit code 1).
    """
    extras = [e for e in entries_extra() if e.name == name]
    if extras:
        return extras[-1].experiment
    if name in NAMES:
        try:
            exp = _import(f"experiments.{name}", "EXPERIMENT")
        except Exception as e:  # noqa: BLE001
            raise RunnerError(f"experiment {name!r} cannot be imported: {_one_line(e)}", 1) from e
        if exp.name != name:
            raise RunnerError(f"experiments/{name}.py defines EXPERIMENT.name={exp.name!r}", 1)
        return exp
    known = ", ".join(NAMES + [e.name for e in entries_extra() if e.experiment is not None])
    raise RunnerError(f"unknown experiment {name!r}; known: {known or 'none'}", 2)


def entries_extra() -> list[Entry]:
    """The experiments named by RESPAX_EXTRA_EXPERIMENTS (unimportable ones with their error)."""
    out = []
    for spec in _extra_specs():
        module, sep, attr = spec.partition(":")
        try:
            if not sep or not module or not attr:
                raise ValueError(f"{EXTRA_ENV} entries must be module:ATTR, got {spec!r}")
            exp = _import(module, attr)
            out.append(Entry(exp.name, exp))
        except Exception as e:  # noqa: BLE001 - listed as unavailable
            out.append(Entry(spec, None, _one_line(e)))
    return out
