"""Append-only JSONL game logs that survive crashes: every record is one line, written, flushed
and fsynced before the game moves on; a reader skips (and reports) a line torn by a crash, and
the next append starts on a fresh line, so no completed answer is ever lost or corrupted."""

import json
import os
import pathlib
import time
from typing import Any

__all__ = ["append_record", "read_log"]


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON record as a line of `path` (created with its folder if missing).

    The line is flushed and fsynced before returning. If the file's last line was torn by a
    crash (no final newline), a newline is written first so the new record stays readable.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "log.jsonl"
        >>> append_record(p, {"player": "ann", "correct": True})
        >>> read_log(p)[0][0]["player"]
        'ann'
    """
    if not isinstance(record, dict):
        raise TypeError(f"`record` must be a dict, got {type(record).__name__}.")
    record = dict(record)
    record.setdefault("time", time.time())
    line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def read_log(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """All records of a log and a message for every line that could not be read.

    A missing file is an empty log. Lines that are not JSON objects (a line torn by a crash)
    are skipped and reported as `"<path>:<line>: ..."`.

    Returns:
        `(records, problems)`.
    """
    p = pathlib.Path(path)
    if not p.exists():
        return [], []
    records, problems = [], []
    with open(p, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{p}:{n}: unreadable line skipped ({e.msg}): {line[:60]!r}")
                continue
            if not isinstance(rec, dict):
                problems.append(f"{p}:{n}: not a JSON object, skipped")
                continue
            records.append(rec)
    return records, problems
