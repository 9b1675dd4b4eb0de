"""`python -m experiments` end to end in subprocesses: list/run/reproduce, kill-and-resume, and
two processes joined by `jax.distributed` against one process on the same 4 devices."""

import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

_HERE = pathlib.Path(__file__).resolve().parent
_REPO = _HERE.parents[1]
for _p in (str(_REPO), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from experiments._runner import main  # noqa: E402

_TOYS = "runner_toy:EXPERIMENT,runner_toy:BROKEN"
# A run of 12 chunks; `delay` makes the interrupted runs slow enough to catch mid-way.
_ARGS = ["--scale", "smoke", "steps=24", "chunk=2"]
_SLOW = ["delay=0.25", "--checkpoint-every", "0"]


def _env(devices: int = 4) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESPAX_")}
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO), str(_HERE), env.get("PYTHONPATH", "")])
    env["RESPAX_EXTRA_EXPERIMENTS"] = _TOYS
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments", *args]


def _cli(*args: str, devices: int = 4) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(*args), cwd=_REPO, env=_env(devices), capture_output=True, text=True, timeout=300
    )


def _start(*args: str, devices: int = 4) -> subprocess.Popen:
    return subprocess.Popen(
        _command(*args),
        cwd=_REPO,
        env=_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[str, str]]:
    """Wait for every process; kill them all if one hangs (e.g. a peer that never connected)."""
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def _metrics(out: pathlib.Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run (seed 0) of the configuration the resume tests interrupt."""
    out = tmp_path_factory.mktemp("reference") / "toy"
    proc = _cli("run", "toy", "--out", str(out), *_ARGS)
    assert proc.returncode == 0, proc.stderr
    return {"out": out, "proc": proc, "metrics": _metrics(out)}


def test_run_writes_metrics_report_and_plot(reference):
    out, proc, metrics = reference["out"], reference["proc"], reference["metrics"]
    assert "train: 100%" in proc.stderr and "24/24" in proc.stderr  # the progress bar
    assert "toy: 1 / 2 (1 n/a) claims hold" in proc.stdout
    for key in ("name", "title", "scale", "seed", "config", "overrides", "git_commit"):
        assert key in metrics
    assert metrics["jax_version"] and metrics["devices"]["count"] == 4
    assert metrics["num_processes"] == 1 and metrics["wall_seconds"] > 0
    assert metrics["overrides"] == {"steps": 24, "chunk": 2}
    assert metrics["config"]["steps"] == 24 and metrics["config"]["hidden"] == [3]
    assert metrics["metrics"]["num_devices"] == 4 and len(metrics["metrics"]["losses"]) == 24
    assert metrics["claims"] == [
        {
            "claim": "recovers w to 0.1",
            "scale": "smoke",
            "paper": "|w - w*| < 0.1",
            "ours": metrics["metrics"]["w_err"],
            "holds": True,
            "reason": "",
        },
        {
            "claim": "a paper-only claim",
            "scale": "paper",
            "paper": "n/a",
            "ours": None,
            "holds": None,
            "reason": "needs paper scale",
        },
    ]
    report = (out / "report.md").read_text()
    assert report.startswith("# Toy linear regression")
    assert "| recovers w to 0.1 | smoke |" in report and "![loss.png](loss.png)" in report
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.slow
def test_list_and_reproduce(tmp_path):
    listing = _cli("list")
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[0] for line in listing.stdout.splitlines()]
    assert names[0] == "superposition" and {"toy", "toy_broken"} <= set(names)
    assert "Toy linear regression (runner test fixture)  [smoke, quick, paper]" in listing.stdout

    proc = _cli("reproduce", "--scale", "smoke", "--out", str(tmp_path), "--only", "toy_broken,toy")
    # One failing experiment makes the exit code non-zero but does not stop the others.
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"error: 1 of 2 experiments failed (toy_broken); see {tmp_path / 'REPORT.md'}"
    assert _metrics(tmp_path / "toy")["claims"][0]["holds"] is True
    report = (tmp_path / "REPORT.md").read_text()
    assert "| toy | Toy linear regression (runner test fixture) | 1 / 2 (1 n/a) |" in report
    assert "[report](toy/report.md)" in report and "![loss.png](toy/loss.png)" in report
    assert "| toy_broken |" in report
    assert "**FAILED**: RuntimeError: toy failure requested" in report


def _wait_for_checkpoint(proc: subprocess.Popen, out: pathlib.Path) -> int:
    meta = out / "checkpoints" / "train.json"
    deadline = time.monotonic() + 240
    while not meta.exists():
        if proc.poll() is not None:
            pytest.fail(f"run ended before its first checkpoint: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint appeared")
        time.sleep(0.02)
    return json.loads(meta.read_text())["step"]


@pytest.mark.parametrize("how", [pytest.param("SIGKILL", marks=pytest.mark.slow), "SIGTERM"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, reference, how):
    out = tmp_path / "toy"
    proc = _start("run", "toy", "--out", str(out), *_ARGS, *_SLOW)
    _wait_for_checkpoint(proc, out)
    proc.send_signal(getattr(signal, how))
    [(_, stderr)] = _finish([proc])
    step = json.loads((out / "checkpoints" / "train.json").read_text())["step"]
    assert 0 < step < 24, "the run was not interrupted mid-way"
    assert not (out / "metrics.json").exists()
    if how == "SIGTERM":
        # Saved a checkpoint at the end of the current chunk, then exited cleanly, non-zero.
        assert proc.returncode == 128 + signal.SIGTERM
        assert "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1] == (
            f"error: stopped by SIGTERM at step {step}/24 of loop 'train'; checkpoint saved in "
            f"{out / 'checkpoints'}, continue with --resume"
        )
    else:
        assert proc.returncode == -signal.SIGKILL

    resumed = _cli("run", "toy", "--out", str(out), "--resume", *_ARGS, *_SLOW)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming loop 'train' at step {step}/24" in resumed.stdout
    assert "stage 'data' loaded from its checkpoint" in resumed.stdout
    metrics = _metrics(out)
    # The wall time counts the interrupted part and the resumed one.
    assert len(metrics["wall_seconds_parts"]) == 2
    assert metrics["wall_seconds"] == pytest.approx(sum(metrics["wall_seconds_parts"]))
    assert f"{metrics['wall_seconds']:.1f} s in 2 parts" in (out / "report.md").read_text()
    assert metrics["metrics"] == reference["metrics"]["metrics"]  # exactly
    assert metrics["claims"] == reference["metrics"]["claims"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_close(a, b, where="metrics"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12), (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, monkeypatch, capsys):
    multi = tmp_path / "multi"
    procs = _start_pair(multi, *_ARGS)
    # Meanwhile, the same run in this process on its 4 forced CPU devices.
    monkeypatch.setenv("RESPAX_EXTRA_EXPERIMENTS", _TOYS)
    single = tmp_path / "single"
    try:
        code = main(["run", "toy", "--out", str(single), *_ARGS])
    finally:
        results = _finish(procs)
    assert code == 0, capsys.readouterr().err
    for p, (stdout, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr
    assert "toy: 1 / 2 (1 n/a) claims hold" in results[0][0]
    # Only process 0 prints (and writes); gloo itself prints "[Gloo] Rank ..." lines.
    assert [line for line in results[1][0].splitlines() if not line.startswith("[Gloo]")] == []

    got, want = _metrics(multi), _metrics(single)
    assert got["num_processes"] == 2 and want["num_processes"] == 1
    assert got["devices"]["count"] == want["devices"]["count"] == 4
    assert got["metrics"]["num_devices"] == 4
    _assert_close(got["metrics"], want["metrics"])
    _assert_close(got["claims"], want["claims"], "claims")


def _start_pair(out: pathlib.Path, *args: str) -> list[subprocess.Popen]:
    coordinator = f"127.0.0.1:{_free_port()}"
    multi = ["--coordinator", coordinator, "--num-processes", "2"]
    return [
        _start("run", "toy", "--out", str(out), *args, *multi, "--process-id", str(i), devices=2)
        for i in range(2)
    ]


@pytest.mark.slow
def test_two_processes_sigterm_one_then_resume(tmp_path, reference):
    out = tmp_path / "multi"
    procs = _start_pair(out, *_ARGS, *_SLOW)
    _wait_for_checkpoint(procs[0], out)
    procs[1].send_signal(signal.SIGTERM)  # only one process is told; both must stop cleanly
    results = _finish(procs)
    step = json.loads((out / "checkpoints" / "train.json").read_text())["step"]
    assert 0 < step < 24
    for p, (_, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 128 + signal.SIGTERM, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: stopped by SIGTERM at step {step}/24")

    procs = _start_pair(out, "--resume", *_ARGS, *_SLOW)
    results = _finish(procs)
    for p, (_, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr
    assert f"resuming loop 'train' at step {step}/24" in results[0][0]
    got = _metrics(out)
    assert got["num_processes"] == 2
    _assert_close(got["metrics"], reference["metrics"]["metrics"])
    _assert_close(got["claims"], reference["metrics"]["claims"], "claims")
