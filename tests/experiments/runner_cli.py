"""What the runner tests share: the toy experiments registered for a test, and calling the CLI
in-process. The test modules put this folder on `sys.path` (as for `runner_toy`)."""

import pytest

from experiments._runner import main


@pytest.fixture
def toy_registered(monkeypatch):
    """Register `runner_toy`'s experiments for one test."""
    monkeypatch.setenv("RESPAX_EXTRA_EXPERIMENTS", "runner_toy:EXPERIMENT,runner_toy:BROKEN")


def run_cli(capsys, *argv):
    """`python -m experiments ARGV` in-process: `(exit code, stdout, stderr)`."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one `error: ...` line a refused command prints."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]
