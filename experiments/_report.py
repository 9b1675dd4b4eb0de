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


SCALES = ("smoke", "quick", "paper")


def claim_rows(claims: list[Claim], *, scale: str | None = None) -> list[dict[str, Any]]:
    """The claims as JSON rows, checking the contract (`holds=None` needs a reason).

    A claim expected at a larger scale than the run's (a "quick" claim in a smoke run) cannot be
    tested by the run: its `holds` becomes `None`, with a reason saying so, whatever the
    experiment computed (its number stays in `ours`).

    Args:
        claims: the experiment's claims.
        scale: the run's scale; `None` leaves `holds` as the experiment gave it.

    Returns:
        One dict per claim: `claim, scale, paper, ours, holds, reason`.

    Raises:
        TypeError: a claim that is not a `Claim`, or `holds` that is not a bool or None.
        ValueError: an unknown scale, or `holds=None` without a reason.

    Example:
        >>> rows = claim_rows([Claim("loss < 0.1", "quick", "0.05", 0.2, False)], scale="smoke")
        >>> rows[0]["holds"], rows[0]["reason"]
        (None, 'expected at quick scale; this run is smoke')
    """
    if scale is not None and scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    rows = []
    for i, c in enumerate(claims):
        if not isinstance(c, Claim):
            raise TypeError(f"Result.claims[{i}] is a {type(c).__name__}, not a Claim")
        if c.scale not in SCALES:
            raise ValueError(
                f"claims[{i}] ({c.claim!r}): scale must be one of {', '.join(SCALES)}, "
                f"got {c.scale!r}"
            )
        holds = to_jsonable(c.holds, f"claims[{i}].holds")
        if holds not in (True, False, None):
            raise TypeError(f"claims[{i}].holds must be True, False or None, got {c.holds!r}")
        if holds is None and not c.reason:
            raise ValueError(f"claims[{i}] ({c.claim!r}) has holds=None but no reason")
        row = dataclasses.asdict(c)
        row["ours"] = to_jsonable(c.ours, f"claims[{i}].ours")
        row["holds"] = holds
        if scale is not None and SCALES.index(c.scale) > SCALES.index(scale):
            untested = f"expected at {c.scale} scale; this run is {scale}"
            row["holds"] = None
            row["reason"] = c.reason if holds is None and c.reason else untested
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
    parts = metrics.get("wall_seconds_parts") or []
    wall = f"{metrics['wall_seconds']:.1f} s" + (
        f" in {len(parts)} parts" if len(parts) > 1 else ""
    )
    lines = [
        f"# {metrics['title']}",
        "",
        f"`{metrics['name']}` · scale `{metrics['scale']}` · seed {metrics['seed']} · "
        f"{devices['count']} × {devices['kind']} · {metrics['num_processes']} process(es) · "
        f"{wall} · jax {metrics['jax_version']} · commit `{commit}`",
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
