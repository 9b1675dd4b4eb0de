"""Multi-process plumbing: `jax.distributed` start-up, host copies of global arrays, agreement."""

import os
from typing import Any

import jax
import numpy as np

from experiments._errors import RunnerError

ENV_COORDINATOR = "RESPAX_COORDINATOR"
ENV_NUM_PROCESSES = "RESPAX_NUM_PROCESSES"
ENV_PROCESS_ID = "RESPAX_PROCESS_ID"


def resolve_settings(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> tuple[str, int, int] | None:
    """Merge command-line and environment settings; `None` means a single process.

    Raises:
        RunnerError: incomplete or inconsistent settings (exit code 2).
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    if coordinator is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise RunnerError(
                f"--num-processes/--process-id need --coordinator HOST:PORT (or {ENV_COORDINATOR})",
                2,
            )
        return None
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RunnerError(f"--coordinator must be HOST:PORT, got {coordinator!r}", 2)
    if num_processes is None or process_id is None:
        raise RunnerError(
            "--coordinator needs --num-processes N and --process-id I "
            f"(or {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID})",
            2,
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise RunnerError(
            f"need num_processes >= 1 and 0 <= process_id < num_processes, "
            f"got num_processes={num_processes}, process_id={process_id}",
            2,
        )
    return coordinator, num_processes, process_id


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise RunnerError(f"{name} must be an integer, got {value!r}", 2) from None


def initialize(settings: tuple[str, int, int] | None) -> None:
    """Join the other processes with `jax.distributed.initialize` (no-op for one process).

    Must run before anything touches a JAX device. CPU collectives across processes use gloo
    (the default of jax 0.10; set explicitly so that an environment override does not break it).
    """
    if settings is None:
        return
    coordinator, num_processes, process_id = settings
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
        )
    except Exception as e:  # noqa: BLE001 - reported as one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RunnerError(
            f"jax.distributed.initialize failed ({coordinator}, process {process_id} of "
            f"{num_processes}): {type(e).__name__}: {msg}",
            1,
        ) from e


def is_writer() -> bool:
    """Only process 0 writes files, prints logs and shows progress bars."""
    return jax.process_index() == 0


def any_process(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over all processes (a collective when there are several)."""
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    from jax.experimental import multihost_utils

    local = np.asarray([int(bool(f)) for f in flags], dtype=np.int32)
    gathered = np.asarray(multihost_utils.process_allgather(local))
    return tuple(bool(v) for v in gathered.reshape(-1, len(flags)).max(axis=0))


def barrier(name: str) -> None:
    """Wait for every process (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def to_host(x: Any) -> Any:
    """A host numpy copy of a (possibly global, multi-process) JAX array; other leaves unchanged.

    A collective when the array is sharded across processes, so every process must call it
    for the same leaves in the same order.
    """
    if not isinstance(x, jax.Array):
        return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        raise TypeError(
            "typed PRNG key arrays (jax.random.key) cannot be copied to the host; "
            "use raw keys (jax.random.PRNGKey) or jax.random.key_data"
        )
    if x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def same_on_all_processes(value: int) -> bool:
    """Whether an integer is the same on every process (a collective when there are several)."""
    if jax.process_count() == 1:
        return True
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(np.asarray([value], np.int64)))
    return bool((gathered == value).all())
