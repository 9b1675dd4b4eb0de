"""metrics.json, report.md and results/REPORT.md."""

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from experiments._api import Claim
from experiments._distributed import to_host


def to_jsonable(value: Any, where: str = "metrics") -> Any:
    """Convert numpy/JAX scalars and arrays (gathered across processes) to JSON values.

    Non-finite floats become the strings "NaN", "Infinity", "-Infinity" so the file stays
    strict JSON. Every process must call this (sharded arrays are gathered).

    Raises:
        TypeError: a value that has no JSON form, naming where it is.
    """
    if isinstance(value, jax.Array):
        value = to_host(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), where)
    if isinstance(value, np.generic):
        return to_jsonable(value.item(), where)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}, which has no JSON form")


def claim_rows(claims: list[Claim]) -> list[dict[str, Any]]:
    """The claims as JSON rows, checking the contract (`holds=None` needs a reason)."""
    rows = []
    for i, c in enumerate(claims):
        if not isinstance(c, Claim):
            raise TypeError(f"Result.claims[{i}] is a {type(c).__name__}, not a Claim")
        holds = to_jsonable(c.holds, f"claims[{i}].holds")
        if holds not in (True, False, None):
            raise TypeError(f"claims[{i}].holds must be True, False or None, got {c.holds!r}")
        if holds is None and not c.reason:
            raise ValueError(f"claims[{i}] ({c.claim!r}) has holds=None but no reason")
        row = dataclasses.asdict(c)
        row["ours"] = to_jsonable(c.ours, f"claims[{i}].ours")
        row["holds"] = holds
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif value is None:
        text = "—"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _holds(row: dict[str, Any]) -> str:
    if row["holds"] is True:
        return "yes"
    if row["holds"] is False:
        return "**no**"
    return f"n/a ({_cell(row['reason'])})"


def claims_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of claim rows."""
    if not rows:
        return "_No claims._\n"
    lines = ["| claim | expected at | paper | ours | holds |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {_cell(r['claim'])} | {_cell(r['scale'])} | {_cell(r['paper'])} | "
            f"{_cell(r['ours'])} | {_holds(r)} |"
        )
    return "\n".join(lines) + "\n"


def claims_summary(rows: list[dict[str, Any]]) -> str:
    """The claims holding out of all, e.g. `3 / 4` or `3 / 4 (1 n/a)`."""
    holding = sum(r["holds"] is True for r in rows)
    untested = sum(r["holds"] is None for r in rows)
    text = f"{holding} / {len(rows)}"
    return text + (f" ({untested} n/a)" if untested else "")


def run_report(metrics: dict[str, Any], body: str, figures: list[str]) -> str:
    """report.md of one run: header, claims table, the experiment's text, plots."""
    devices = metrics["devices"]
    commit = metrics["git_commit"] or "unknown"
    lines = [
        f"# {metrics['title']}",
        "",
        f"`{metrics['name']}` · scale `{metrics['scale']}` · seed {metrics['seed']} · "
        f"{devices['count']} × {devices['kind']} · {metrics['num_processes']} process(es) · "
        f"{metrics['wall_seconds']:.1f} s · jax {metrics['jax_version']} · commit `{commit}`",
        "",
    ]
    if metrics["overrides"]:
        items = ", ".join(f"`{k}={v}`" for k, v in metrics["overrides"].items())
        lines += [f"Overrides: {items}", ""]
    lines += ["## Claims", "", claims_table(metrics["claims"])]
    if body.strip():
        lines += [body.strip(), ""]
    if figures:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({name})" for name in figures]
        lines.append("")
    return "\n".join(lines)


@dataclasses.dataclass
class Outcome:
    """One experiment of `reproduce`: its metrics.json content, or why it failed."""

    name: str
    title: str = ""
    metrics: dict[str, Any] | None = None
    error: str | None = None
    wall_seconds: float = 0.0


def summary_report(outcomes: list[Outcome], *, scale: str, header: str) -> str:
    """results/REPORT.md: one row per experiment, then each experiment's claims and plots."""
    lines = [
        f"# respax results — `{scale}` scale",
        "",
        header,
        "",
        "| experiment | title | claims holding | wall time | report |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        if o.metrics is None:
            lines.append(
                f"| {o.name} | {_cell(o.title)} | **FAILED**: {_cell(o.error)} | "
                f"{o.wall_seconds:.1f} s | — |"
            )
        else:
            lines.append(
                f"| {o.name} | {_cell(o.title)} | {claims_summary(o.metrics['claims'])} | "
                f"{o.metrics['wall_seconds']:.1f} s | [report]({o.name}/report.md) |"
            )
    lines.append("")
    for o in outcomes:
        lines += [f"## {o.name} — {o.title}" if o.title else f"## {o.name}", ""]
        if o.metrics is None:
            lines += [f"**Failed**: {_cell(o.error)}", ""]
            continue
        lines.append(claims_table(o.metrics["claims"]))
        lines += [f"![{f}]({o.name}/{f})" for f in o.metrics.get("figures", [])]
        lines.append("")
    return "\n".join(lines)
