"""Shared helpers for the benchmark scripts: machine and version facts, timing, atomic JSON and
the RESULTS.md section refresh."""

import datetime
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


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
