"""Atomic file writes: a temporary file in the same directory, fsync, then `os.replace`."""

import os
import pathlib
import tempfile


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; results should get the usual permissions.
_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: pathlib.Path, data: bytes | str) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    Args:
        path: destination; its directory must exist.
        data: bytes, or text (written as UTF-8).

    Example:
        >>> atomic_write(pathlib.Path("out/metrics.json"), "{}")  # doctest: +SKIP
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: pathlib.Path) -> None:
    # Makes the rename itself durable; not every platform/filesystem allows it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
