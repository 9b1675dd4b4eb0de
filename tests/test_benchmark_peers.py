"""A benchmark whose peer is missing stops before timing anything: exit 3 and the command that
installs the peer, never a JSON of null ratios that passes for a result."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]

# The scripts are copied into a bare folder, so the pinned peer environments (`.bench-envs`,
# resolved from the script's location) are absent, and the in-process peers are made
# unimportable, whatever this machine has installed.
_WRAPPER = """
import runpy, sys
for name in ("jaxopt", "optimistix"):
    sys.modules[name] = None
script = sys.argv[1]
sys.argv = [script, *sys.argv[2:]]
runpy.run_path(script, run_name="__main__")
"""


def _run_copy(tmp_path, script, *args):
    bench = tmp_path / "benchmarks"
    bench.mkdir(exist_ok=True)
    for py in (_REPO / "benchmarks").glob("*.py"):
        shutil.copy(py, bench / py.name)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-c", _WRAPPER, str(bench / script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.parametrize(
    "script, install",
    [
        ("hypergrad_vs_jaxopt.py", "uv run --group bench python benchmarks/hypergrad_vs_jaxopt.py"),
        ("kfac_vs_kfac_jax.py", "make bench-env"),
        ("influence_vs_kronfluence.py", "make bench-env"),
    ],
)
def test_missing_peer_exits_non_zero_with_the_install_command(tmp_path, script, install):
    out = tmp_path / "figures.json"
    proc = _run_copy(tmp_path, script, "--quick", "--json", str(out))
    assert proc.returncode == 3, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the peer ") and f"install it with `{install}" in last
    assert not out.exists()


def test_require_modules_names_what_is_missing(capsys):
    sys.path.insert(0, str(_REPO / "benchmarks"))
    try:
        import _common
    finally:
        sys.path.remove(str(_REPO / "benchmarks"))
    _common.require_modules("json", ["json"], "pip install json")  # present: returns
    with pytest.raises(SystemExit) as e:
        _common.require_modules("a peer", ["json", "no_such_module_xyz"], "pip install peer")
    assert e.value.code == _common.PEER_MISSING == 3
    err = capsys.readouterr().err
    assert "a peer (module no_such_module_xyz)" in err and "`pip install peer`" in err
    assert "module json" not in err
