"""The README results section is rebuilt from a REPORT.md: tables kept, images and links dropped."""

import pytest

from experiments import readme


def test_refresh_replaces_only_the_marked_section(tmp_path):
    report = tmp_path / "REPORT.md"
    report.write_text(
        "# respax results — `quick` scale\n\n| experiment | report |\n|---|---|\n"
        "| toy | [report](toy/report.md) |\n\n## toy — Toy\n\n![plot](toy/a.png)\n"
    )
    md = tmp_path / "README.md"
    md.write_text(f"intro\n{readme.START}\nold\n{readme.END}\nouter\n")
    readme.refresh(md, report)
    text = md.read_text()
    assert text.startswith("intro\n") and text.endswith("outer\n")
    assert "old" not in text and "| toy | report |" in text
    assert "![plot]" not in text and "### toy — Toy" in text


def test_refresh_without_markers_or_report_fails_clearly(tmp_path):
    md = tmp_path / "README.md"
    md.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        readme.refresh(md, tmp_path / "REPORT.md")
    md.write_text(f"{readme.START}\n{readme.END}\n")
    with pytest.raises(SystemExit, match="make demo"):
        readme.refresh(md, tmp_path / "missing.md")
