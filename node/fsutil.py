"""Crash-safe file writes, shared by every package that persists state.

A reader, or a process that restarts after a crash, sees either the old file or the new one:
the data goes to a temporary file next to the target, is fsynced, renamed over the target, and
the directory is fsynced so that the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make renames in ``path`` durable (some file systems refuse to fsync a directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def write_file_atomically(
    path: Path,
    data: bytes | bytearray | memoryview,
    *,
    mode: int = 0o644,
    tmp: Path | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically and durably, creating parent directories.

    ``tmp`` names the temporary file (it must be on the same file system); by default it is a
    hidden file next to ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb", closefd=True) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
