"""Regression: K-FAC's inverse refresh inside the experiment's jitted `lax.scan` chunks, at the
quick config's layer sizes (a 785 x 785 input factor), under XLA's default multi-threaded CPU
runtime. A batched LAPACK call in the refresh deadlocked there (the process slept forever at the
first chunk); the smoke scale's small factors did not show it. Runs in a subprocess so that a
hang fails the test instead of the suite."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_shapes_kfac_chunk_completes(tmp_path):
    cmd = [sys.executable, "-m", "experiments", "run", "kfac_autoencoder", "--scale", "quick"]
    cmd += ["steps=10", "sgd_steps_factor=1", "chunk=10", "sgd_lrs=[0.003]", "adam_lrs=[0.001]"]
    cmd += ["baselines=sgd,adam", "max_widen=0", "time_steps=false"]
    cmd += ["--out", str(tmp_path / "run")]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    except subprocess.TimeoutExpired as err:  # subprocess.run has killed the child
        raise AssertionError(f"K-FAC chunk did not finish in 400 s (deadlock?): {err}") from err
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["metrics"]["diagonal_fallbacks"] == 0
    assert (
        metrics["metrics"]["final_loss"]["kfac"]
        < metrics["metrics"]["final_loss"]["adam_lr0.001"] * 10
    )
