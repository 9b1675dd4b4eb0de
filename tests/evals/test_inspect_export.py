"""`write_inspect_log`: an `EvalResult` as an Inspect JSON log. The fields Inspect requires
(EvalLog.eval; EvalSpec created/task/dataset/model/config; EvalSample id/epoch/input/target;
EvalScore name/scorer; EvalMetric name/value) are checked here, and the log is read back with
inspect_ai's own `read_eval_log` where inspect_ai is installed."""

import json
import pathlib

import jax
import pytest

import respax.evals as ev

from .test_evals_data import FIX, FakeLM


@pytest.fixture
def result():
    task = ev.load_task("persona/agreeableness", FIX)
    lm = FakeLM(lambda c, x: -1.0 if x == " Yes" else -2.0)
    return ev.evaluate(lm, task, "human_assistant@1", key=jax.random.key(0), num_resamples=200)


def test_log_has_inspects_required_fields_and_our_numbers(result, tmp_path):
    path = ev.write_inspect_log(result, tmp_path / "logs" / "run.json", model="respax/fake")
    log = json.loads(path.read_text())
    spec = log["eval"]
    assert {"created", "task", "dataset", "model", "config"} <= spec.keys()
    assert spec["task"] == "persona/agreeableness" and spec["model"] == "respax/fake"
    assert spec["dataset"]["samples"] == result.n == len(log["samples"])
    (score,) = log["results"]["scores"]
    assert {"name", "scorer"} <= score.keys()
    m = score["metrics"]
    assert m["accuracy"]["value"] == result.matching_rate == 0.5
    assert m["ceiling"]["value"] == result.ceiling
    task = ev.load_task("persona/agreeableness", FIX)
    for s, sample, rec in zip(log["samples"], task.samples, result.samples, strict=True):
        assert {"id", "epoch", "input", "target"} <= s.keys()
        assert s["target"] == sample.choices[0] and s["choices"] == list(sample.choices)
        assert s["input"] == rec["arguments"][0][0]
        assert s["scores"]["matching_behavior"]["value"] == rec["acc"]
        assert s["scores"]["matching_behavior"]["answer"] == " Yes"  # the fake's preference
    # atomic: no temporary file left beside it
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]


def test_read_back_by_inspect_ai(result, tmp_path):
    log_mod = pytest.importorskip("inspect_ai.log", reason="inspect_ai is not installed")
    path = ev.write_inspect_log(result, tmp_path / "run.json")
    log = log_mod.read_eval_log(str(path))
    assert log.status == "success" and len(log.samples) == result.n
    assert log.results.scores[0].metrics["accuracy"].value == result.matching_rate


def test_bad_input(tmp_path):
    with pytest.raises(TypeError, match="result"):
        ev.write_inspect_log({"task": "x"}, tmp_path / "x.json")
    assert not pathlib.Path(tmp_path / "x.json").exists()


def test_cli_writes_inspect_logs(tmp_path):
    from respax.evals._cli import main

    args = ["run", "--task", "persona/agreeableness", "--model", "ngram:2", "--data", str(FIX)]
    assert main([*args, "--out", str(tmp_path), "--inspect"]) == 0
    log = json.loads((tmp_path / "logs" / "persona__agreeableness.json").read_text())
    assert log["eval"]["model"] == "ngram:2" and len(log["samples"]) == 6
