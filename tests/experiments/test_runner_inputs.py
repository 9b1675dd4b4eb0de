"""The runner's defects as a new user met them: bad input after --force, claims a smoke run
cannot test, the wall time of a resumed run, `show`, and directories of failed runs."""

import dataclasses
import json
import pathlib
import sys
import time

import pytest

_HERE = pathlib.Path(__file__).resolve().parent
for _p in (str(_HERE.parents[1]), str(_HERE)):  # the repo root (experiments/) and runner_toy
    if _p not in sys.path:
        sys.path.insert(0, _p)

from runner_cli import error_line as _error_line, run_cli as _run, toy_registered  # noqa: E402,F401

from experiments import Claim, Experiment, Result  # noqa: E402
from experiments._config import OverrideError, check_overrides  # noqa: E402
from experiments._errors import Interrupted  # noqa: E402
from experiments._report import claim_rows  # noqa: E402
from experiments._runner import run_experiment  # noqa: E402

pytestmark = pytest.mark.usefixtures("toy_registered")


def _snapshot(directory: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# ---- bad input never touches the previous results --------------------------------------------


@pytest.mark.parametrize(
    "bad, key",
    [
        (["steps=-5"], "'steps'"),
        (["steps=0"], "'steps'"),
        (["lr=-0.1"], "'lr'"),
        (["chunk=nan"], "'chunk'"),
        (["noise=nan"], "'noise'"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**32)], "--seed"),
        (["nope=1"], "'nope'"),
    ],
)
def test_bad_input_with_force_loses_nothing(capsys, tmp_path, bad, key):
    out = tmp_path / "out"
    args = ["run", "toy", "--scale", "smoke", "--out", str(out), "steps=4"]
    assert _run(capsys, *args)[0] == 0
    before = _snapshot(out)
    assert "metrics.json" in before and "loss.png" in before

    code, _, err = _run(capsys, *args, "--force", *bad)
    assert code == 2
    line = _error_line(err)
    assert key in line and "Traceback" not in err
    assert _snapshot(out) == before


def test_a_failing_forced_run_restores_the_previous_results(capsys, tmp_path):
    out = tmp_path / "out"
    args = ["run", "toy", "--scale", "smoke", "--out", str(out), "steps=4"]
    assert _run(capsys, *args)[0] == 0
    before = _snapshot(out)
    code, _, err = _run(capsys, *args, "--force", "fail=true")
    assert code == 1
    assert err.strip().splitlines()[-1].endswith("RuntimeError: toy failure requested")
    assert _snapshot(out) == before
    assert not (out / ".previous").exists()


def test_a_successful_forced_run_leaves_no_stash(capsys, tmp_path):
    out = tmp_path / "out"
    args = ["run", "toy", "--scale", "smoke", "--out", str(out), "steps=4"]
    assert _run(capsys, *args)[0] == 0
    assert _run(capsys, *args, "--force", "--seed", "3")[0] == 0
    assert json.loads((out / "metrics.json").read_text())["seed"] == 3
    assert not (out / ".previous").exists()


def test_declared_and_inferred_lower_bounds():
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        steps: int = 10
        offset: int = -1
        rate: float = 0.5
        warmup: int = dataclasses.field(default=5, metadata={"min": 0})

    scales = {"smoke": Cfg(steps=2, offset=3), "quick": Cfg()}
    metadata = {f.name: dict(f.metadata) for f in dataclasses.fields(Cfg)}
    check_overrides({"steps": 1, "offset": -9, "rate": 0.0, "warmup": 0}, scales, "x", metadata)
    with pytest.raises(OverrideError, match=r"'steps'.*an int >= 1 \(as at every scale\), got 0"):
        check_overrides({"steps": 0}, scales, "x", metadata)
    with pytest.raises(OverrideError, match=r"'rate'.*a number >= 0.*got -0.5"):
        check_overrides({"rate": -0.5}, scales, "x", metadata)
    with pytest.raises(OverrideError, match=r"'warmup'.*expected >= 0, got -1"):
        check_overrides({"warmup": -1}, scales, "x", metadata)


# ---- claims a run's scale cannot test --------------------------------------------------------


def test_claims_expected_at_a_larger_scale_are_null_with_a_reason():
    claims = [
        Claim("a", "smoke", "p", 1.0, False),
        Claim("b", "quick", "p", 2.0, False),
        Claim("c", "quick", "p", 3.0, True),
        Claim("d", "paper", "p", None, None, reason="needs the paper's model"),
        Claim("e", "paper", "p", 4.0, False),
    ]
    smoke = claim_rows(claims, scale="smoke")
    assert [r["holds"] for r in smoke] == [False, None, None, None, None]
    assert smoke[1]["reason"] == "expected at quick scale; this run is smoke"
    assert smoke[1]["ours"] == 2.0  # the measurement is still reported
    assert smoke[3]["reason"] == "needs the paper's model"
    quick = claim_rows(claims, scale="quick")
    assert [r["holds"] for r in quick] == [False, False, True, None, None]
    assert quick[4]["reason"] == "expected at paper scale; this run is quick"
    paper = claim_rows(claims, scale="paper")
    assert [r["holds"] for r in paper] == [False, False, True, None, False]
    with pytest.raises(ValueError, match="scale must be one of"):
        claim_rows([Claim("f", "huge", "p", 1.0, True)], scale="smoke")


@dataclasses.dataclass(frozen=True)
class _Cfg:
    sleep: float = 0.0
    interrupt: bool = False


def _tiny_run(cfg: _Cfg, ctx) -> Result:
    time.sleep(cfg.sleep)
    if cfg.interrupt:
        raise Interrupted("stopped by SIGTERM (test)", 15)
    claims = [
        Claim("holds at smoke", "smoke", "x", 1.0, True),
        Claim("needs quick", "quick", "x", 0.0, False),
    ]
    return Result(metrics={"x": 1.0}, claims=claims)


_TINY = Experiment(
    name="tiny",
    title="tiny",
    config=_Cfg,
    scales={s: _Cfg() for s in ("smoke", "quick")},
    run=_tiny_run,
)


def test_smoke_run_reports_quick_claims_as_null(tmp_path):
    metrics = run_experiment(
        _TINY, cfg=_Cfg(), scale="smoke", seed=0, overrides={}, out_dir=tmp_path
    )
    assert [r["holds"] for r in metrics["claims"]] == [True, None]
    assert "this run is smoke" in metrics["claims"][1]["reason"]
    assert "n/a (expected at quick scale" in (tmp_path / "report.md").read_text()


def test_resumed_wall_time_sums_every_part(tmp_path):
    kwargs = dict(scale="smoke", seed=0, overrides={}, out_dir=tmp_path)
    with pytest.raises(Interrupted):
        run_experiment(_TINY, cfg=_Cfg(sleep=0.6, interrupt=True), **kwargs)
    parts = json.loads((tmp_path / "checkpoints" / "wall.json").read_text())["parts"]
    assert len(parts) == 1 and parts[0] >= 0.6
    # --resume needs the same config (the identity check): the resumed part is the same
    # config with a run function that no longer interrupts.
    resumed = dataclasses.replace(_TINY, run=lambda cfg, ctx: _tiny_run(_Cfg(sleep=0.2), ctx))
    metrics = run_experiment(resumed, cfg=_Cfg(sleep=0.6, interrupt=True), resume=True, **kwargs)
    assert len(metrics["wall_seconds_parts"]) == 2
    assert metrics["wall_seconds_parts"][0] == pytest.approx(parts[0])
    assert metrics["wall_seconds"] == pytest.approx(sum(metrics["wall_seconds_parts"]))
    assert metrics["wall_seconds"] >= 0.8
    # A fresh (non-resumed) run starts the count again.
    fresh = run_experiment(_TINY, cfg=_Cfg(), **kwargs)
    assert len(fresh["wall_seconds_parts"]) == 1 and fresh["wall_seconds"] < 0.6


# ---- show ------------------------------------------------------------------------------------


def test_show_prints_the_scale_config(capsys):
    code, out, _ = _run(capsys, "show", "toy", "--scale", "smoke")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "# toy at scale 'smoke' (override with key=value)"
    assert "steps: int = 20" in lines and "hidden: tuple[int, ...] = (3,)" in lines
    code, out, _ = _run(capsys, "show", "toy", "--scale", "paper")
    assert code == 0 and "steps: int = 400" in out.splitlines()
    code, _, err = _run(capsys, "show", "nope")
    assert code == 2 and "nope" in _error_line(err)


# ---- what counts as "already holds results" --------------------------------------------------


def test_a_failed_run_does_not_block_the_next_one(capsys, tmp_path):
    out = tmp_path / "out"
    code, _, _ = _run(capsys, "run", "toy_broken", "--scale", "smoke", "--out", str(out))
    assert code == 1 and not (out / "metrics.json").exists()
    code, _, err = _run(capsys, "run", "toy", "--scale", "smoke", "--out", str(out), "steps=4")
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["name"] == "toy"


@pytest.mark.parametrize("content", ["", "{", "{}", "[1, 2]", '{"name": "toy"}'])
def test_an_invalid_metrics_file_is_not_a_result(capsys, tmp_path, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text(content)
    code, _, err = _run(capsys, "run", "toy", "--scale", "smoke", "--out", str(out), "steps=4")
    assert code == 0, err


def test_an_interrupted_run_still_needs_resume_or_force(capsys, tmp_path):
    out = tmp_path / "out"
    args = ["run", "toy", "--scale", "smoke", "--out", str(out), "steps=4"]
    assert _run(capsys, *args)[0] == 0
    (out / "metrics.json").unlink()  # as a run killed before its end leaves it
    code, _, err = _run(capsys, *args)
    assert code == 2
    assert "checkpoints of an interrupted run; pass --resume" in _error_line(err)
    assert _run(capsys, *args, "--resume")[0] == 0
