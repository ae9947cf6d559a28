"""Checksums of data files: one helper for MNIST's sha256 and CIFAR's published md5."""

from __future__ import annotations

import hashlib
from pathlib import Path

from smoothinf.errors import DataError

_CHUNK = 1 << 20


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (``algorithm``: any hashlib name)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(path: str | Path, expected: str | None, algorithm: str = "sha256") -> None:
    """Raise :class:`DataError` naming ``path`` unless its digest equals ``expected``.

    ``expected=None`` skips the check (for user-made files with no published checksum).
    """
    if expected is None:
        return
    actual = file_digest(path, algorithm)
    if actual != expected.lower():
        raise DataError(
            f"{path}: {algorithm} mismatch (expected {expected}, got {actual}); the file is corrupt"
            " or not the published one -- download it again"
        )
