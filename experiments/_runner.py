"""The command line: `python -m experiments list | show NAME | run NAME | reproduce`."""

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

import jax

from experiments import _distributed, _registry
from experiments._api import Experiment, Result
from experiments._config import (
    OverrideError,
    apply_overrides,
    check_overrides,
    field_metadata,
    field_types,
    type_name,
)
from experiments._context import Context, SignalGuard
from experiments._errors import Interrupted, RunnerError
from experiments._io import atomic_write
from experiments._report import (
    SCALES,
    Outcome,
    claim_rows,
    claims_summary,
    run_report,
    summary_report,
    to_jsonable,
)

_REPO = pathlib.Path(__file__).resolve().parents[1]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (RunnerError, exit code 2), not usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise RunnerError(f"{message} (see `{self.prog} --help`)", 2)


def build_parser() -> argparse.ArgumentParser:
    """The `python -m experiments` argument parser."""
    parser = _Parser(
        prog="python -m experiments",
        description="List, run and reproduce respax experiments (see experiments/README.md).",
    )
    sub = parser.add_subparsers(dest="command", metavar="{list,show,run,reproduce}")
    sub.add_parser("list", help="list the experiments (and those that cannot be imported)")
    show = sub.add_parser(
        "show",
        help="print one experiment's config at a scale",
        description="Print the config of NAME at --scale: one `key: type = value` line per field.",
    )
    show.add_argument("name", metavar="NAME")
    show.add_argument("--scale", choices=SCALES, default="quick", help="default: quick")

    common = _Parser(add_help=False)
    common.add_argument("--scale", choices=SCALES, default="quick", help="default: quick")
    common.add_argument("--seed", type=int, default=0, help="default: 0")
    common.add_argument(
        "--checkpoint-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="checkpoint loop states at most this often (0: after every chunk; default: 60)",
    )
    group = common.add_mutually_exclusive_group()
    group.add_argument(
        "--resume", action="store_true", help="continue from the checkpoints in the output dir"
    )
    group.add_argument(
        "--force", action="store_true", help="overwrite existing results in the output dir"
    )
    dist = common.add_argument_group("multi-process (all three, or RESPAX_* env variables)")
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    dist.add_argument("--num-processes", type=int, metavar="N")
    dist.add_argument("--process-id", type=int, metavar="I")

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run one experiment",
        usage="python -m experiments run NAME [options] [key=value ...]",
        description="Run one experiment; key=value arguments override its config fields.",
    )
    run.add_argument("name", metavar="NAME")
    run.add_argument("--out", metavar="DIR", help="output directory (default: results/NAME)")

    rep = sub.add_parser(
        "reproduce",
        parents=[common],
        help="run every experiment and write DIR/REPORT.md",
        description="Run every registered experiment into DIR/<name>/ and write DIR/REPORT.md.",
    )
    rep.add_argument("--out", metavar="DIR", default="results", help="default: results")
    rep.add_argument("--only", metavar="NAMES", help="comma-separated subset of experiments")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (errors are one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            raise RunnerError("choose a command: list, show, run or reproduce (see --help)", 2)
        for item in extra:
            if args.command != "run" or item.startswith("-"):
                raise RunnerError(f"unrecognized argument {item!r} (see --help)", 2)
        if args.command == "list":
            return _cmd_list()
        if args.command == "show":
            return _cmd_show(args)
        if args.checkpoint_every < 0:
            raise RunnerError("--checkpoint-every must be >= 0", 2)
        if not 0 <= args.seed < 2**32:
            raise RunnerError(f"--seed must be an int in [0, 2**32), got {args.seed}", 2)
        settings = _distributed.resolve_settings(
            args.coordinator, args.num_processes, args.process_id
        )
        _distributed.initialize(settings)
        # After initialize: jax.distributed installs its own SIGTERM handler, which ours replaces.
        with SignalGuard() as signals:
            if args.command == "run":
                return _cmd_run(args, extra, signals)
            return _cmd_reproduce(args, signals)
    except RunnerError as e:
        _print_error(str(e))
        return e.exit_code
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0


def _print_error(message: str) -> None:
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# ---- commands ----------------------------------------------------------------------------------


def _cmd_list() -> int:
    rows = []
    for entry in _registry.entries():
        if entry.experiment is None:
            rows.append((entry.name, f"unavailable: {entry.error}"))
        else:
            exp = entry.experiment
            rows.append((exp.name, f"{exp.title}  [{', '.join(exp.scales)}]"))
    width = max((len(name) for name, _ in rows), default=0)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    exp = _registry.load(args.name)
    cfg = _scale_config(exp, args.scale)
    types = field_types(type(cfg))
    print(f"# {exp.name} at scale {args.scale!r} (override with key=value)")
    for key, annotation in types.items():
        print(f"{key}: {type_name(annotation)} = {getattr(cfg, key)!r}")
    return 0


def _configure(exp: Experiment, scale: str, overrides: list[str]) -> tuple[Any, dict[str, Any]]:
    """The scale's config with the overrides applied and checked; RunnerError (exit 2) if bad."""
    cfg = _scale_config(exp, scale)
    try:
        cfg, parsed = apply_overrides(cfg, overrides, exp.name)
        check_overrides(parsed, dict(exp.scales), exp.name, field_metadata(type(cfg)))
    except OverrideError as e:
        raise RunnerError(str(e), 2) from None
    return cfg, parsed


def _cmd_run(args: argparse.Namespace, overrides: list[str], signals: SignalGuard) -> int:
    exp = _registry.load(args.name)
    cfg, parsed = _configure(exp, args.scale, overrides)
    out_dir = pathlib.Path(args.out) if args.out else pathlib.Path("results") / exp.name
    previous = _prepare_out_dir(out_dir, resume=args.resume, force=args.force)
    try:
        metrics = run_experiment(
            exp,
            cfg=cfg,
            scale=args.scale,
            seed=args.seed,
            overrides=parsed,
            out_dir=out_dir,
            resume=args.resume,
            checkpoint_every_s=args.checkpoint_every,
            signals=signals,
        )
    except Interrupted:
        _drop_previous(previous)  # the new run is resumable; the old one was forced away
        raise
    except RunnerError:
        _restore_previous(out_dir, previous)
        raise
    except Exception as e:  # noqa: BLE001 - the experiment's own bug: traceback, then one line
        traceback.print_exc()
        _failed(out_dir, previous, _one_line(e))
        raise RunnerError(f"experiment {exp.name!r} failed: {_one_line(e)}", 1) from e
    _drop_previous(previous)
    _log(
        f"{exp.name}: {claims_summary(metrics['claims'])} claims hold · "
        f"{metrics['wall_seconds']:.1f} s · wrote {out_dir / 'metrics.json'}"
    )
    return 0


def _cmd_reproduce(args: argparse.Namespace, signals: SignalGuard) -> int:
    entries = _registry.entries()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {e.name for e in entries})
        if unknown:
            known = ", ".join(e.name for e in entries)
            raise RunnerError(
                f"--only: unknown experiment(s) {', '.join(unknown)}; known: {known}", 2
            )
        entries = [e for e in entries if e.name in wanted]
    root = pathlib.Path(args.out)
    if not (args.resume or args.force):
        busy = [
            str(root / e.name)
            for e in entries
            if _holds_results(root / e.name) or _unfinished(root / e.name)
        ]
        if busy:
            raise RunnerError(
                f"{', '.join(busy)} already hold results; pass --resume to continue them or "
                "--force to overwrite them",
                2,
            )
    _check_writable(root)

    outcomes = []
    for entry in entries:
        start = time.perf_counter()
        title = entry.experiment.title if entry.experiment is not None else ""
        previous, prepared = None, False
        try:
            if entry.experiment is None:
                raise RunnerError(f"cannot be imported: {entry.error}")
            exp = entry.experiment
            out_dir = root / exp.name
            cfg, _ = _configure(exp, args.scale, [])
            previous = _prepare_out_dir(out_dir, resume=args.resume, force=args.force)
            prepared = True
            metrics = run_experiment(
                exp,
                cfg=cfg,
                scale=args.scale,
                seed=args.seed,
                overrides={},
                out_dir=out_dir,
                resume=args.resume,
                checkpoint_every_s=args.checkpoint_every,
                signals=signals,
            )
            _drop_previous(previous)
            outcomes.append(Outcome(exp.name, title, metrics))
            _log(f"{exp.name}: {claims_summary(metrics['claims'])} claims hold")
        except Interrupted:
            _drop_previous(previous)
            raise
        except Exception as e:  # noqa: BLE001 - reported in REPORT.md, the others still run
            if not isinstance(e, RunnerError):
                traceback.print_exc()
            message = str(e) if isinstance(e, RunnerError) else _one_line(e)
            if prepared and isinstance(e, RunnerError):
                _restore_previous(root / entry.name, previous)
            elif prepared:
                _failed(root / entry.name, previous, message)
            outcomes.append(Outcome(entry.name, title, None, message, time.perf_counter() - start))
            _print_error(f"experiment {entry.name!r} failed: {message}")

    header = (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC} · seed {args.seed} · "
        f"{_devices()['count']} × {_devices()['kind']} · {jax.process_count()} process(es) · "
        f"jax {jax.__version__} · commit `{_git_commit() or 'unknown'}`"
    )
    if _distributed.is_writer():
        atomic_write(root / "REPORT.md", summary_report(outcomes, scale=args.scale, header=header))
    failed = [o.name for o in outcomes if o.metrics is None]
    if failed:
        _print_error(
            f"{len(failed)} of {len(outcomes)} experiments failed ({', '.join(failed)}); "
            f"see {root / 'REPORT.md'}"
        )
        return 1
    _log(f"wrote {root / 'REPORT.md'}")
    return 0


# ---- one run -----------------------------------------------------------------------------------


def run_experiment(
    exp: Experiment,
    *,
    cfg: Any,
    scale: str,
    seed: int,
    overrides: dict[str, Any],
    out_dir: pathlib.Path,
    resume: bool = False,
    checkpoint_every_s: float = 60.0,
    signals: SignalGuard | None = None,
) -> dict[str, Any]:
    """Run one experiment into a prepared `out_dir`; returns the metrics.json content.

    Args:
        exp: the experiment.
        cfg: its config (scale config with overrides applied).
        scale: the scale name.
        seed: the seed.
        overrides: the parsed overrides, recorded in metrics.json.
        out_dir: the output directory (see `_prepare_out_dir`).
        resume: continue from the checkpoints in `out_dir`.
        checkpoint_every_s: the loops' checkpoint period.
        signals: the installed SIGTERM/SIGINT guard.

    Returns:
        The dict written to `out_dir/metrics.json`.
    """
    identity = {
        "name": exp.name,
        "scale": scale,
        "seed": seed,
        "config": to_jsonable(dataclasses.asdict(cfg), "config"),
    }
    _check_identity(out_dir, identity, resume=resume)
    if _distributed.is_writer():
        (out_dir / "checkpoints" / _FAILED).unlink(missing_ok=True)
    clock = _WallClock(out_dir / "checkpoints" / "wall.json", resume=resume)
    ctx = Context(
        cfg=cfg,
        scale=scale,
        seed=seed,
        out_dir=out_dir,
        checkpoint_every_s=checkpoint_every_s,
        resume=resume,
        signals=signals,
    )
    with clock:
        result = exp.run(cfg, ctx)
    parts = clock.parts
    if not isinstance(result, Result):
        raise TypeError(f"{exp.name}.run returned a {type(result).__name__}, not a Result")
    metrics = {
        "name": exp.name,
        "title": exp.title,
        "scale": scale,
        "seed": seed,
        "config": identity["config"],
        "overrides": to_jsonable(overrides, "overrides"),
        "git_commit": _git_commit(),
        "jax_version": jax.__version__,
        "devices": _devices(),
        "num_processes": jax.process_count(),
        "wall_seconds": sum(parts),
        "wall_seconds_parts": parts,
        "metrics": to_jsonable(result.metrics, "metrics"),
        "claims": claim_rows(result.claims, scale=scale),
        "figures": list(ctx.figures),
    }
    if _distributed.is_writer():
        atomic_write(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        atomic_write(out_dir / "report.md", run_report(metrics, result.report, ctx.figures))
    return metrics


def _scale_config(exp: Experiment, scale: str) -> Any:
    if scale not in exp.scales:
        raise RunnerError(
            f"experiment {exp.name!r} has no {scale!r} scale; it has {', '.join(exp.scales)}", 2
        )
    return exp.scales[scale]


def _agree(problem: str | None, exit_code: int = 2) -> None:
    """Raise on every process if any process found a problem."""
    (anyone,) = _distributed.any_process(problem is not None)
    if problem is not None:
        raise RunnerError(problem, exit_code)
    if anyone:
        raise RunnerError("another process refused to start (see process 0's error)", exit_code)


def _check_writable(directory: pathlib.Path) -> None:
    problem = None
    if _distributed.is_writer():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as e:
            problem = f"cannot write to output directory {directory}: {e.strerror or e}"
    _agree(problem)


def _holds_results(path: pathlib.Path) -> bool:
    """Whether `path` holds a finished run: a metrics.json that parses and names its run."""
    try:
        metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and {"name", "scale", "claims"} <= metrics.keys()


_FAILED = "failed.json"


def _unfinished(path: pathlib.Path) -> bool:
    """Checkpoints of a run that was interrupted (or killed), not of one that failed."""
    checkpoints = path / "checkpoints"
    return (checkpoints / "run.json").exists() and not (checkpoints / _FAILED).exists()


def _mark_failed(out_dir: pathlib.Path, message: str) -> None:
    """Note in the checkpoints that the run failed, so the next plain run may start over."""
    if not _distributed.is_writer() or not (out_dir / "checkpoints").is_dir():
        return
    try:
        atomic_write(out_dir / "checkpoints" / _FAILED, json.dumps({"error": message}) + "\n")
    except OSError:
        pass


class _WallClock:
    """Times the parts of a run (the first, then each `--resume`) in `checkpoints/wall.json`.

    The running part's time is rewritten every few seconds, so a run killed outright still
    counts the time it had spent; `parts` lists every part's seconds, this one last.
    """

    _PERIOD_S = 2.0

    def __init__(self, path: pathlib.Path, *, resume: bool):
        self._path = path
        self._earlier: list[float] = []
        if resume:
            try:
                saved = json.loads(path.read_text())["parts"]
                self._earlier = [float(x) for x in saved]
            except (OSError, ValueError, KeyError, TypeError):
                self._earlier = []
        self._start = time.perf_counter()
        self._end: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def parts(self) -> list[float]:
        end = self._end if self._end is not None else time.perf_counter()
        return [*self._earlier, end - self._start]

    def _save(self) -> None:
        if not _distributed.is_writer():
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self._path, json.dumps({"parts": self.parts}) + "\n")
        except OSError:
            pass  # timing is best-effort; the run itself must not fail on it

    def _tick(self) -> None:
        while not self._stop.wait(self._PERIOD_S):
            self._save()

    def __enter__(self) -> "_WallClock":
        self._start = time.perf_counter()
        self._save()
        self._thread = threading.Thread(target=self._tick, name="respax-wall-clock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._end = time.perf_counter()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._save()


def _prepare_out_dir(out_dir: pathlib.Path, *, resume: bool, force: bool) -> pathlib.Path | None:
    """Refuse to overwrite results without --resume/--force; check the directory is writable.

    With --force the previous run's files are moved aside (not deleted) into a hidden folder
    that is returned: `_drop_previous` removes it once the new run has written its results,
    `_restore_previous` puts the old files back if the new run fails, so a failed --force run
    loses nothing.
    """
    problem = None
    if out_dir.exists() and not out_dir.is_dir():
        problem = f"output directory {out_dir} exists and is not a directory"
    elif _holds_results(out_dir) and not (resume or force):
        problem = (
            f"output directory {out_dir} already holds results; pass --resume to continue them "
            "or --force to overwrite them"
        )
    elif _unfinished(out_dir) and not (resume or force):
        problem = (
            f"output directory {out_dir} holds the checkpoints of an interrupted run; pass "
            "--resume to continue it or --force to start over"
        )
    _agree(problem)
    _check_writable(out_dir)
    previous = None
    if _distributed.is_writer():
        if force and not resume:
            previous = _move_previous(out_dir)
        elif not resume:
            # No finished run here (else we refused above): a failed or interrupted run's
            # checkpoints would otherwise be mixed into this fresh run's.
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    _distributed.barrier("respax-out-dir-ready")
    return previous


_PREVIOUS = ".previous"


def _move_previous(out_dir: pathlib.Path) -> pathlib.Path | None:
    """Move the files a previous run wrote (and only those) into `out_dir/.previous/`."""
    old = out_dir / "metrics.json"
    figures: list[str] = []
    try:
        figures = [f for f in json.loads(old.read_text()).get("figures", []) if "/" not in f]
    except (OSError, ValueError, AttributeError):
        pass
    names = [n for n in ["metrics.json", "report.md", "checkpoints", *figures] if n != _PREVIOUS]
    present = [n for n in names if (out_dir / n).exists()]
    if not present:
        return None
    stash = out_dir / _PREVIOUS
    shutil.rmtree(stash, ignore_errors=True)  # left by a run that died before cleaning up
    stash.mkdir()
    for name in present:
        os.replace(out_dir / name, stash / name)
    return stash


def _restore_previous(out_dir: pathlib.Path, stash: pathlib.Path | None) -> None:
    """Put the previous run's files back after a failed --force run (writer only)."""
    if stash is None or not _distributed.is_writer() or not stash.is_dir():
        return
    for item in stash.iterdir():
        target = out_dir / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(item, target)
    stash.rmdir()
    print(f"restored the previous results in {out_dir}", file=sys.stderr, flush=True)


def _failed(out_dir: pathlib.Path, stash: pathlib.Path | None, message: str) -> None:
    """After a failed run: the previous results back if --force moved them, else a marker."""
    if stash is not None:
        _restore_previous(out_dir, stash)
    else:
        _mark_failed(out_dir, message)


def _drop_previous(stash: pathlib.Path | None) -> None:
    if stash is not None and _distributed.is_writer():
        shutil.rmtree(stash, ignore_errors=True)


def _check_identity(out_dir: pathlib.Path, identity: dict[str, Any], *, resume: bool) -> None:
    """On --resume, the checkpoints must come from a run with the same name/scale/seed/config."""
    path = out_dir / "checkpoints" / "run.json"
    problem = None
    if resume and path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            saved, problem = None, f"checkpoint {path} is corrupt ({e}); start over with --force"
        if saved is not None and saved != identity:
            diffs = [
                f"{k}={saved.get(k)!r} there, {identity[k]!r} here"
                for k in identity
                if k != "config" and saved.get(k) != identity[k]
            ]
            old_cfg, new_cfg = saved.get("config") or {}, identity["config"]
            diffs += [
                f"{k}={old_cfg.get(k)!r} there, {new_cfg.get(k)!r} here"
                for k in sorted(set(old_cfg) | set(new_cfg))
                if old_cfg.get(k) != new_cfg.get(k)
            ]
            problem = (
                f"cannot --resume in {out_dir}: it was started differently ({'; '.join(diffs)})"
            )
    _agree(problem)
    if _distributed.is_writer():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(identity, indent=1))


# ---- environment facts -------------------------------------------------------------------------


def _devices() -> dict[str, Any]:
    devices = jax.devices()
    return {
        "count": len(devices),
        "kind": devices[0].device_kind,
        "platform": devices[0].platform,
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _log(message: str) -> None:
    if _distributed.is_writer():
        print(message, flush=True)
