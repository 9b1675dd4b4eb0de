"""Refresh the README's results section from results/REPORT.md (`make readme`).

The claims tables are copied between the `<!-- results:start -->` and `<!-- results:end -->`
markers; links into results/ (which is not committed) are dropped and images are left out.
"""

import argparse
import re
import sys
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"


def results_section(report: str) -> str:
    """The README body made from REPORT.md: every table and heading, no images or links."""
    lines = []
    for line in report.splitlines():
        if line.startswith("!["):
            continue
        if line.startswith("# "):
            line = "#" + line  # the report's title becomes a sub-heading
        elif line.startswith("## "):
            line = "#" + line
        lines.append(re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line))
    body = "\n".join(lines).strip()
    return re.sub(r"\n{3,}", "\n\n", body)


def refresh(readme: Path, report: Path) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"error: {readme} has no {START} ... {END} markers")
    if not report.exists():
        raise SystemExit(f"error: {report} does not exist; run `make demo` first")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{results_section(report.read_text())}\n{END}{tail}"
    tmp = readme.with_suffix(".tmp")
    tmp.write_text(new)
    tmp.replace(readme)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--report", type=Path, default=Path("results/REPORT.md"))
    args = parser.parse_args(argv)
    refresh(args.readme, args.report)
    print(f"refreshed {args.readme} from {args.report}", file=sys.stderr)


if __name__ == "__main__":
    main()
