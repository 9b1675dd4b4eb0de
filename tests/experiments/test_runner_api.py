"""The runner in-process: overrides, bad input, checkpoints, and the sharding helpers."""

import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

_HERE = pathlib.Path(__file__).resolve().parent
for _p in (str(_HERE.parents[1]), str(_HERE)):  # the repo root (experiments/) and runner_toy
    if _p not in sys.path:
        sys.path.insert(0, _p)

import runner_toy  # noqa: E402
from runner_cli import error_line as _error_line, run_cli as _run, toy_registered  # noqa: E402,F401

from experiments import Context, _registry  # noqa: E402
from experiments._config import OverrideError, apply_overrides, parse_value  # noqa: E402

pytestmark = pytest.mark.usefixtures("toy_registered")


# ---- overrides -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, annotation, expected",
    [
        ("3", int, 3),
        ("-12", int, -12),
        ("1_000", int, 1000),
        ("0.5", float, 0.5),
        ("1e-3", float, 1e-3),
        ("2", float, 2.0),
        ("true", bool, True),
        ("False", bool, False),
        ("1", bool, True),
        ("0", bool, False),
        ("hello world", str, "hello world"),
        ("", str, ""),
        ("1,2,3", tuple[int, ...], (1, 2, 3)),
        ("(4, 5)", tuple[int, ...], (4, 5)),
        ("7", tuple[int, ...], (7,)),
        ("7,", tuple[int, ...], (7,)),
        ("", tuple[int, ...], ()),
        ("0.5,1e-2", tuple[float, ...], (0.5, 0.01)),
        ("[1.5]", tuple[float, ...], (1.5,)),
        ("a,b", tuple[str, ...], ("a", "b")),
        ("1,0.5", tuple[int, float], (1, 0.5)),
        ("none", int | None, None),
        ("4", int | None, 4),
    ],
)
def test_parse_value_by_annotation(text, annotation, expected):
    value = parse_value(text, annotation)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    "text, annotation",
    [
        ("1.5", int),
        ("abc", int),
        ("x", float),
        ("yes", bool),
        ("2", bool),
        ("1,a", tuple[int, ...]),
        ("1", tuple[int, float]),
        ("x", int | None),
    ],
)
def test_parse_value_rejects_wrong_types(text, annotation):
    with pytest.raises(ValueError):
        parse_value(text, annotation)


def test_apply_overrides_returns_typed_config():
    base = runner_toy.ToyConfig()
    cfg, parsed = apply_overrides(
        base, ["steps=10", "lr=0.5", "plot=false", "hidden=8,16", "label=a=b"], "toy"
    )
    assert cfg == dataclasses.replace(
        base, steps=10, lr=0.5, plot=False, hidden=(8, 16), label="a=b"
    )
    assert parsed == {"steps": 10, "lr": 0.5, "plot": False, "hidden": (8, 16), "label": "a=b"}


@pytest.mark.parametrize(
    "item, expected",
    [
        ("nope=1", "unknown config key 'nope'"),
        ("steps=abc", "bad value for 'steps' in experiment 'toy': expected int, got 'abc'"),
        ("plot=maybe", "expected bool, got 'maybe'"),
        ("hidden=1,x", "expected tuple[int, ...], got '1,x'"),
        ("steps", "override 'steps' is not key=value"),
    ],
)
def test_bad_override_is_one_line_listing_valid_keys(capsys, tmp_path, item, expected):
    code, _, err = _run(capsys, "run", "toy", "--scale", "smoke", "--out", str(tmp_path), item)
    assert code == 2
    line = _error_line(err)
    assert expected in line
    assert "valid keys: n: int, dim: int, steps: int, chunk: int, lr: float" in line
    assert "hidden: tuple[int, ...], scales: tuple[float, ...], plot: bool, label: str" in line
    with pytest.raises(OverrideError):
        apply_overrides(runner_toy.ToyConfig(), [item], "toy")


# ---- bad input -----------------------------------------------------------------------------------


def test_unknown_experiment_is_one_line(capsys):
    code, _, err = _run(capsys, "run", "no_such_experiment")
    assert code == 2
    line = _error_line(err)
    assert "unknown experiment 'no_such_experiment'" in line and "toy" in line


def test_usage_errors_are_one_line(capsys):
    for argv in (["run", "toy", "--scale", "huge"], ["run"], ["list", "x=1"], []):
        code, _, err = _run(capsys, *argv)
        assert code == 2, argv
        _error_line(err)


def test_unwritable_output_dir_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = _run(capsys, "run", "toy", "--scale", "smoke", "--out", str(blocker / "sub"))
    assert code == 2
    assert "cannot write to output directory" in _error_line(err)


def test_existing_results_need_resume_or_force(capsys, tmp_path):
    out = tmp_path / "out"
    args = ["run", "toy", "--scale", "smoke", "--out", str(out), "steps=4", "plot=false"]
    assert _run(capsys, *args)[0] == 0
    first = json.loads((out / "metrics.json").read_text())

    code, _, err = _run(capsys, *args)
    assert code == 2
    assert "already holds results; pass --resume" in _error_line(err)

    code, _, err = _run(capsys, *args, "--force", "--seed", "1")
    assert code == 0, err
    forced = json.loads((out / "metrics.json").read_text())
    assert forced["seed"] == 1 and forced["metrics"] != first["metrics"]

    # A completed run resumes from its checkpoints without recomputing, to the same result.
    code, out_text, err = _run(capsys, *args, "--resume", "--seed", "1")
    assert code == 0, err
    assert "stage 'data' loaded" in out_text
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["metrics"] == forced["metrics"]

    # ... but not with a different seed or config.
    code, _, err = _run(capsys, *args, "--resume", "--seed", "2")
    assert code == 2
    assert "seed=1 there, 2 here" in _error_line(err)


def test_reproduce_refuses_existing_results_and_unknown_names(capsys, tmp_path):
    (tmp_path / "toy").mkdir()
    finished = {"name": "toy", "scale": "quick", "claims": []}
    (tmp_path / "toy" / "metrics.json").write_text(json.dumps(finished))
    code, _, err = _run(capsys, "reproduce", "--out", str(tmp_path), "--only", "toy")
    assert code == 2
    assert _error_line(err) == (
        f"error: {tmp_path / 'toy'} already hold results; pass --resume to continue them or "
        "--force to overwrite them"
    )
    code, _, err = _run(capsys, "reproduce", "--out", str(tmp_path), "--only", "toy,nope")
    assert code == 2
    known = ", ".join([*_registry.NAMES, "toy", "toy_broken"])
    assert f"--only: unknown experiment(s) nope; known: {known}" in _error_line(err)


def test_corrupt_checkpoint_on_resume_is_one_line(capsys, tmp_path):
    out = tmp_path / "out"
    args = ["run", "toy", "--scale", "smoke", "--out", str(out), "steps=4", "plot=false"]
    assert _run(capsys, *args)[0] == 0
    ckpt = out / "checkpoints" / "train.eqx"
    data = bytearray(ckpt.read_bytes())
    data[-3] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    code, _, err = _run(capsys, *args, "--resume")
    assert code == 1
    line = _error_line(err)
    assert "train.eqx is corrupt" in line and "--force" in line

    (out / "checkpoints" / "train.json").write_text("{not json")
    code, _, err = _run(capsys, *args, "--resume")
    assert code == 1
    assert "train.json is corrupt" in _error_line(err)

    ckpt.write_bytes(b"")  # truncated, and the hash in the (rewritten) json no longer matches
    (out / "checkpoints" / "train.json").write_text(json.dumps({"sha256": "0" * 64}))
    code, _, err = _run(capsys, *args, "--resume")
    assert code == 1
    assert "corrupt" in _error_line(err)


def test_failing_experiment_reports_traceback_then_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, "run", "toy_broken", "--scale", "smoke", "--out", str(tmp_path))
    assert code == 1
    assert "Traceback" in err
    assert err.strip().splitlines()[-1] == (
        "error: experiment 'toy_broken' failed: RuntimeError: toy failure requested"
    )


# ---- the Context helpers -------------------------------------------------------------------------


def _context(tmp_path, resume=False):
    return Context(
        cfg=None, scale="smoke", seed=0, out_dir=tmp_path, checkpoint_every_s=0.0, resume=resume
    )


def test_shard_replicate_gather_over_four_devices(tmp_path):
    ctx = _context(tmp_path)
    assert ctx.mesh.size == jax.device_count() == 4
    assert ctx.mesh.axis_names == ("batch",)
    x = np.arange(24.0, dtype=np.float32).reshape(8, 3)
    y = np.arange(12, dtype=np.int32).reshape(3, 4)
    sx, sy = ctx.shard({"x": x})["x"], ctx.shard((y,), axis=1)[0]
    assert sx.sharding == NamedSharding(ctx.mesh, PartitionSpec("batch"))
    assert sy.sharding == NamedSharding(ctx.mesh, PartitionSpec(None, "batch"))
    assert {s.data.shape for s in sx.addressable_shards} == {(2, 3)}
    assert {s.data.shape for s in sy.addressable_shards} == {(3, 1)}
    assert len({s.device for s in sx.addressable_shards}) == 4
    r = ctx.replicate(jnp.ones(5))
    assert r.sharding.is_fully_replicated and len(r.sharding.device_set) == 4
    gathered = ctx.gather({"x": sx, "y": sy, "r": r, "n": 3})
    np.testing.assert_array_equal(gathered["x"], x)
    np.testing.assert_array_equal(gathered["y"], y)
    assert isinstance(gathered["x"], np.ndarray) and gathered["n"] == 3


def test_shard_needs_a_multiple_of_the_device_count(tmp_path):
    ctx = _context(tmp_path)
    with pytest.raises(ValueError, match=r"size 6 along axis 0.*multiple of the device count 4"):
        ctx.shard({"a": np.zeros((6, 2))})
    with pytest.raises(ValueError, match="no axis 1"):
        ctx.shard(np.zeros(8), axis=1)


def test_loop_resume_restores_values_and_placement(tmp_path):
    ctx = _context(tmp_path)
    x = ctx.shard(np.arange(8.0, dtype=np.float32))
    state = {"x": x, "w": ctx.replicate(jnp.zeros(3)), "count": 0, "host": np.zeros(2)}

    @jax.jit
    def advance(x, w, start):
        return x * 2.0 + start, w + 1.0

    def step_fn(s, start):
        x, w = advance(s["x"], s["w"], start)
        return {"x": x, "w": w, "count": start + 1, "host": np.full(2, float(start))}

    final = ctx.loop("demo", state, step_fn, 6, chunk=2)
    meta = json.loads((tmp_path / "checkpoints" / "demo.json").read_text())
    # Leaves in key order: count, host, w, x.
    assert meta["step"] == 6
    assert meta["placements"] == ["host", "host", {"mesh": []}, {"mesh": ["batch"]}]

    resumed_ctx = _context(tmp_path, resume=True)
    resumed = resumed_ctx.loop("demo", state, lambda s, i: pytest.fail("recomputed"), 6, chunk=2)
    for key in ("x", "w"):
        np.testing.assert_array_equal(np.asarray(resumed[key]), np.asarray(final[key]))
        assert resumed[key].sharding.is_equivalent_to(final[key].sharding, final[key].ndim)
    assert resumed["count"] == final["count"] == 5 and type(resumed["count"]) is int
    np.testing.assert_array_equal(resumed["host"], final["host"])

    with pytest.raises(Exception, match="num_steps=6, chunk=2; this run has num_steps=8"):
        _context(tmp_path, resume=True).loop("demo", state, step_fn, 8, chunk=2)
    with pytest.raises(ValueError, match="used twice"):
        resumed_ctx.loop("demo", state, step_fn, 6, chunk=2)
    with pytest.raises(ValueError, match="chunk must be a positive int dividing"):
        _context(tmp_path).loop("other", state, step_fn, 5, chunk=2)
