"""Exception types: every user-facing failure is a one-line message naming what to do."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager


class SmoothinfError(ValueError):
    """Base class of smoothinf's errors (a ValueError, so callers may catch either)."""


class DataError(SmoothinfError):
    """A data set is missing, corrupt, or has an unexpected format."""


class CheckpointError(SmoothinfError):
    """A checkpoint is missing, corrupt, unsafe, or does not fit its architecture."""


class ConfigError(SmoothinfError):
    """A configuration value is unknown or out of range."""


class OutputBusyError(SmoothinfError):
    """Another process holds the lock of an output file or folder."""


class TrainingDiverged(SmoothinfError):
    """A training loss or weight became NaN or infinite."""


_OS_HINTS = {
    errno.EACCES: "choose a writable location or fix its permissions",
    errno.EPERM: "choose a writable location or fix its permissions",
    errno.EROFS: "the file system is read-only: choose another location",
    errno.ENOSPC: "the disk is full: free some space or choose another location",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another location",
    errno.EISDIR: "it is a folder: pass a file path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.ENOENT: "check the path",
    errno.EEXIST: "it already exists: choose another path",
}


def os_error_line(error: OSError) -> str:
    """One line for a file-system error: the path (``error.filename``), what happened, what to do."""
    what = error.strerror or str(error)
    where = "" if error.filename is None else f"{os.fsdecode(error.filename)}"
    if error.filename2 is not None:
        where += f" -> {os.fsdecode(error.filename2)}"
    hint = _OS_HINTS.get(error.errno)
    return f"{where + ': ' if where else ''}{what}" + (f"; {hint}" if hint else "")


@contextmanager
def naming(path: str | os.PathLike):
    """Re-raise an ``OSError`` of the block with ``path`` as its ``filename`` when it names none
    (writes and flushes on an open file do not), so the one-line message says which file."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = os.fspath(path)
        raise
