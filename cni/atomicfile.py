"""Crash-safe file replacement: a reader sees the old file or the new one, never a torn one.

Write to a temp file in the same directory, fsync it, ``os.replace`` it over the target
(atomic rename, POSIX ``rename(2)``), then fsync the directory so the rename itself is
durable. Used for IPAM state (an agent restart must lose no allocation), the installed
CNI plugin and the conflist (a runtime must never exec or parse a half-written file).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` (file mode ``mode``). Raises OSError; no temp file is left.

    ``sync_dir=False`` skips the directory fsync (~0.2 ms): after a power loss the file may then
    be the previous version, never a torn one; for callers to whom either version is valid."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if not sync_dir:
        return
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
