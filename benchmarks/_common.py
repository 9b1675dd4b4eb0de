"""Shared helpers for the benchmark scripts: machine and version facts, timing, atomic JSON and
the RESULTS.md section refresh."""

import datetime
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

RESULTS = Path(__file__).with_name("RESULTS.md")
ROOT = Path(__file__).resolve().parents[1]

# Exit status of a benchmark whose peer is missing (distinct from a crash's 1 and usage's 2).
PEER_MISSING = 3


def bench_group_command(script: str | os.PathLike) -> str:
    """How to run `script` with the in-process peers of the `bench` dependency group."""
    return f"uv run --group bench python benchmarks/{Path(script).name} --quick"


BENCH_ENV_COMMAND = "make bench-env"


def peer_missing(peer: str, install: str) -> NoReturn:
    """Print which peer is missing and the command that installs it, then exit `PEER_MISSING`.

    A benchmark exists to compare with its peer: without it the ratios would be null, which
    must not pass for a result (`make bench` stops; `--ours-only` times ours alone on purpose).
    """
    print(
        f"error: the peer {peer} is not installed; install it with `{install}` "
        "(or pass --ours-only to time ours alone)",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(PEER_MISSING)


def require_modules(peer: str, modules: Iterable[str], install: str) -> None:
    """`peer_missing` unless every module in `modules` can be imported in this environment."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        peer_missing(f"{peer} (module {', '.join(missing)})", install)


def require_python(peer: str, python: Path, install: str = BENCH_ENV_COMMAND) -> None:
    """`peer_missing` unless the peer's pinned environment (its interpreter) exists."""
    if not Path(python).exists():
        peer_missing(f"{peer} (no environment at {python})", install)


def machine() -> str:
    """One line naming the machine: CPU model, core count and JAX backend."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import jax

        backend = f"{jax.default_backend()} x{jax.device_count()}"
    except Exception:  # noqa: BLE001 - the facts are best effort
        backend = "unknown backend"
    return f"{cpu}, {os.cpu_count()} cores, {backend}"


def versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones as 'not installed')."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` (which must block until its result is ready)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """Write `obj` as JSON atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def update_results_section(name: str, body: str) -> None:
    """Replace (or append) the `## name` section of benchmarks/RESULTS.md with `body`, dated."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    stamp = datetime.date.today().isoformat()
    section = f"## {name}\n\n_Updated {stamp} on {machine()}._\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + section
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, RESULTS)
