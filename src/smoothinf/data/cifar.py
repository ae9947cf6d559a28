"""CIFAR-10 / CIFAR-100 from the official python-version archives or their extracted folders.

``root`` may be the archive itself (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``), a
folder holding it, a folder holding the extracted ``cifar-10-batches-py/`` / ``cifar-100-python/``,
or that extracted folder. An archive is preferred when both are present: its published md5 is
checked (pass ``expected_md5=None`` for a user-made archive), and its members are read in memory
(nothing is extracted to disk; absolute or ``..`` member names and links are refused). Every batch
goes through the restricted unpickler. Images are stored uint8 (N, 3, 32, 32); CIFAR-100 uses the
100 fine labels. ``val`` is a seeded hold-out of ``val_size`` (default 5000) training images.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from smoothinf.data.dataset import ImageDataset
from smoothinf.data.integrity import check_digest
from smoothinf.data.safe_pickle import safe_loads
from smoothinf.data.splits import as_dataset, split_train_val
from smoothinf.errors import DataError

DEFAULT_VAL_SIZE = 5000
_USE_PUBLISHED = "published"


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives and how its batches are laid out."""

    name: str
    archive: str
    folder: str
    md5: str
    url: str
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    label_key: str
    num_classes: int


CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        name="cifar10",
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        md5="c58f30108f718f92721af3b95e74349a",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_members=("test_batch",),
        label_key="labels",
        num_classes=10,
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        train_members=("train",),
        test_members=("test",),
        label_key="fine_labels",
        num_classes=100,
    ),
}


def get_spec(name: str) -> CifarSpec:
    try:
        return CIFAR_SPECS[name]
    except KeyError:
        raise DataError(f"unknown CIFAR variant {name!r}; choose one of {', '.join(CIFAR_SPECS)}") from None


def _locate(spec: CifarSpec, root: Path) -> tuple[str, Path]:
    """``("archive", path)`` or ``("folder", path)`` for the data under ``root``."""
    hint = f"run `smoothinf data download {spec.name} --root DIR` or put {spec.archive} there"
    if root.is_file():
        return "archive", root
    if not root.is_dir():
        raise DataError(f"{root}: {spec.name} root does not exist; {hint}")
    if (root / spec.archive).is_file():
        return "archive", root / spec.archive
    for folder in (root / spec.folder, root):
        if all((folder / m).is_file() for m in spec.train_members + spec.test_members):
            return "folder", folder
    raise DataError(f"{root}: no {spec.archive} or extracted {spec.folder}/ found; {hint}")


def _safe_member_name(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith("\\"):
        raise DataError(f"{archive}: refusing archive member with an unsafe path {name!r}")
    return path


def read_archive_members(archive: Path, folder: str, members: tuple[str, ...]) -> dict[str, bytes]:
    """Bytes of ``folder/member`` for each requested member, read in memory from a tar archive."""
    wanted = {str(PurePosixPath(folder) / m): m for m in members}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                path = _safe_member_name(info.name, archive)
                key = str(path)
                if key not in wanted:
                    continue
                if not info.isfile():
                    raise DataError(f"{archive}: member {info.name!r} is not a regular file")
                handle = tar.extractfile(info)
                if handle is None:  # pragma: no cover - isfile() guarantees a handle
                    raise DataError(f"{archive}: cannot read member {info.name!r}")
                found[wanted[key]] = handle.read()
                if len(found) == len(wanted):
                    break
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive}: not a readable tar archive ({exc})") from None
    missing = [m for m in members if m not in found]
    if missing:
        raise DataError(f"{archive}: missing member(s) {', '.join(folder + '/' + m for m in missing)}")
    return found


def parse_batch(data: bytes, spec: CifarSpec, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch -> (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    obj = safe_loads(data, source=source, encoding="latin1")
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a dict batch, got {type(obj).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in batch or spec.label_key not in batch:
        raise DataError(
            f"{source}: batch lacks 'data' or {spec.label_key!r} (keys: {sorted(map(str, batch))})"
        )
    images = batch["data"]
    labels = np.asarray(batch[spec.label_key])
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 2
        or images.shape[1] != 3072
    ):
        shape = getattr(images, "shape", None)
        raise DataError(f"{source}: 'data' must be a uint8 (N, 3072) array, got {shape}")
    n = images.shape[0]
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise DataError(f"{source}: expected {n} integer labels, got shape {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"{source}: labels must lie in [0, {spec.num_classes})")
    return images.reshape(n, 3, 32, 32), labels.astype(np.int64)


def read_cifar(
    name: str,
    root: str | Path,
    parts: tuple[str, ...] = ("train", "test"),
    expected_md5: str | None = _USE_PUBLISHED,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train"|"test": (images uint8 (N, 3, 32, 32), labels int64 (N,))}`` for the asked parts.

    ``expected_md5``: by default the published md5 of the archive; ``None`` skips the check (only
    archives are checked; an extracted folder has no published checksum).
    """
    spec = get_spec(name)
    kind, path = _locate(spec, Path(root).expanduser())
    members = {"train": spec.train_members, "test": spec.test_members}
    wanted = tuple(m for part in parts for m in members[part])
    if kind == "archive":
        check_digest(path, spec.md5 if expected_md5 == _USE_PUBLISHED else expected_md5, "md5")
        blobs = read_archive_members(path, spec.folder, wanted)
        sources = {m: f"{path}:{spec.folder}/{m}" for m in wanted}
    else:
        blobs = {m: (path / m).read_bytes() for m in wanted}
        sources = {m: str(path / m) for m in wanted}
    out = {}
    for part in parts:
        batches = [parse_batch(blobs.pop(m), spec, sources[m]) for m in members[part]]
        out[part] = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    return out


def load_cifar(
    name: str,
    splits: tuple[str, ...],
    root: str | Path,
    val_size: int | None = None,
    seed: int = 0,
    verify: bool = True,
) -> dict[str, ImageDataset]:
    """The requested splits of ``cifar10``/``cifar100`` (``verify=False`` skips the md5)."""
    parts = tuple(p for p in ("train", "test") if p in splits or (p == "train" and "val" in splits))
    arrays = read_cifar(name, root, parts, _USE_PUBLISHED if verify else None)
    out: dict[str, ImageDataset] = {}
    if "train" in arrays:
        full = as_dataset(*arrays["train"])
        out.update(split_train_val(full, splits, DEFAULT_VAL_SIZE if val_size is None else val_size, seed))
    if "test" in splits:
        out["test"] = as_dataset(*arrays["test"])
    return out


def download_cifar(name: str, root: str | Path, timeout: float = 15.0, progress: bool = True) -> Path:
    """Fetch the official archive of ``name`` into ``root``, check its md5, write it atomically.

    Returns the archive path (untouched when a copy with the right md5 is already there). Raises
    :class:`DataError` when the server cannot be reached (saying to download it elsewhere and pass
    ``--root``) or the download does not match the published md5.
    """
    spec = get_spec(name)
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    target = root / spec.archive
    if target.is_file():
        with contextlib.suppress(DataError):
            check_digest(target, spec.md5, "md5")
            return target
    try:
        response = urllib.request.urlopen(spec.url, timeout=timeout)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"could not reach {spec.url} ({reason}); download the archive elsewhere and pass --root"
            f" DIR (the folder holding {spec.archive})"
        ) from None
    digest = hashlib.md5()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.archive}.", suffix=".part", dir=root)
    try:
        with response, os.fdopen(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = _progress(total, spec.archive, progress)
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            bar.close()
        if digest.hexdigest() != spec.md5:
            raise DataError(
                f"{spec.url}: downloaded file has md5 {digest.hexdigest()}, expected {spec.md5}; try again"
            )
        os.replace(tmp_name, target)
    except (OSError, TimeoutError) as exc:
        raise DataError(f"download of {spec.url} failed ({exc}); try again or pass --root DIR") from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not enabled)
