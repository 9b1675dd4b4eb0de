"""Every registered experiment: its scales build, its smoke run completes through the runner (the
durations are printed, not asserted), and its paper config runs one or two steps at paper shapes."""

import dataclasses
import json
import time

import pytest

from experiments import _registry
from experiments._runner import run_experiment

NAMES = list(_registry.NAMES)
# Smoke runs over the ~10 s smoke budget (compilation of training and evaluation: 20-60 s each on
# 2 cores) run with the slow tests, which CI runs, so that `make test` stays under 15 minutes.
SLOW_SMOKE = {
    "bilevel_implicit_bias",
    "influence_pbrf",
    "superposition",
    "mrvae_rate_distortion",
    "neurosharp",
    "model_written_evals",
    "tcvae_disentanglement",
    "exploding_inverses",
    "kfac_autoencoder",
}
SMOKE_NAMES = [
    pytest.param(name, marks=pytest.mark.slow) if name in SLOW_SMOKE else name for name in NAMES
]


@pytest.mark.parametrize("name", NAMES)
def test_scales_build(name):
    exp = _registry.load(name)
    assert set(exp.scales) == {"smoke", "quick", "paper"}, exp.scales.keys()
    for scale, cfg in exp.scales.items():
        assert isinstance(cfg, exp.config), (scale, type(cfg))
        json.dumps(dataclasses.asdict(cfg))
    assert exp.paper_probe is not None, f"{name} has no paper_probe"
    probe = exp.paper_probe(exp.scales["paper"])
    assert isinstance(probe, exp.config)


@pytest.mark.parametrize("name", SMOKE_NAMES)
def test_smoke_run(name, tmp_path, capsys):
    exp = _registry.load(name)
    cfg = exp.scales["smoke"]
    start = time.perf_counter()
    metrics = run_experiment(
        exp, cfg=cfg, scale="smoke", seed=0, overrides={}, out_dir=tmp_path, checkpoint_every_s=0.0
    )
    with capsys.disabled():
        print(f"\n[smoke] {name}: {time.perf_counter() - start:.1f} s")
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["name"] == name and on_disk["claims"] == metrics["claims"]
    assert metrics["claims"], f"{name} makes no claims"
    for row in metrics["claims"]:
        assert row["holds"] in (True, False, None)
        assert row["holds"] is not None or row["reason"], row
    assert (tmp_path / "report.md").exists()
    for figure in metrics["figures"]:
        assert (tmp_path / figure).stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_paper_config_runs_a_step(name, tmp_path):
    exp = _registry.load(name)
    cfg = exp.paper_probe(exp.scales["paper"])
    metrics = run_experiment(
        exp, cfg=cfg, scale="paper", seed=0, overrides={}, out_dir=tmp_path, checkpoint_every_s=0.0
    )
    assert metrics["claims"]
