"""The Makefile's demo and bench targets, with `uv` replaced by a recorder (nothing is run):
`make demo` ends by refreshing the README results table, `make bench` runs every benchmark."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(tmp_path, target, reproduce_status=0, cwd=_REPO):
    log = tmp_path / "calls.txt"
    fake = tmp_path / "uv.sh"
    # Records each call; the `reproduce` call exits with the requested status.
    fake.write_text(
        f'echo "$*" >> {log}\ncase "$*" in *reproduce*) exit {reproduce_status};; esac\nexit 0\n'
    )
    proc = subprocess.run(
        ["make", "-s", "-f", str(_REPO / "Makefile"), "-o", "sync", "-o", "bench-env"]
        + [f"UV=sh {fake}", target],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")},
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, calls


@pytest.mark.parametrize("status, refreshed", [(0, True), (1, True), (2, False)])
def test_demo_ends_by_refreshing_the_readme(tmp_path, status, refreshed):
    proc, calls = _make(tmp_path, "demo", status)
    assert proc.returncode == (0 if status == 0 else 2), proc.stderr  # make reports failure as 2
    assert "python -m experiments reproduce --scale quick --force" in calls[0]
    assert ("python -m experiments.readme" in calls[-1]) is refreshed
    assert len(calls) == (2 if refreshed else 1)


def test_bench_runs_every_benchmark_script(tmp_path):
    proc, calls = _make(tmp_path, "bench")
    assert proc.returncode == 0, proc.stderr
    scripts = sorted(
        p.name for p in (_REPO / "benchmarks").glob("*.py") if not p.name.startswith("_")
    )
    assert scripts, "no benchmark scripts"
    ran = sorted(c.split("python benchmarks/")[1].split()[0] for c in calls)
    assert ran == scripts
    for call in calls:
        assert "--group bench" in call and "--quick" in call and "--json results/bench/" in call


def test_ci_runs_the_tests_then_the_slow_tests_with_ci_set(tmp_path):
    log = tmp_path / "make.txt"
    fake = tmp_path / "bin" / "make"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$* CI=$CI" >> {log}\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        ["bash", str(_REPO / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == ["test CI=true", "test-slow CI=true"]


def test_ci_profile_is_derandomized():

    code = (
        "import hypothesis, sys; sys.path.insert(0, 'tests'); import conftest; "
        "print(hypothesis.settings().derandomize)"
    )
    outs = {}
    for ci in ("true", ""):
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        if ci:
            env["CI"] = ci
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=_REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        outs[ci] = proc.stdout.split()[-1]
    assert outs == {"true": "True", "": "False"}


def test_bench_runs_scripts_that_are_not_peer_comparisons(tmp_path):
    # A benchmark of ours alone (no `_vs_` in its name) runs too; helper modules do not.
    work = tmp_path / "work"
    (work / "benchmarks").mkdir(parents=True)
    for name in ("a_vs_b.py", "cg_float32.py", "_common.py"):
        (work / "benchmarks" / name).write_text("")
    proc, calls = _make(tmp_path, "bench", cwd=work)
    assert proc.returncode == 0, proc.stderr
    ran = sorted(c.split("python benchmarks/")[1].split()[0] for c in calls)
    assert ran == ["a_vs_b.py", "cg_float32.py"]
