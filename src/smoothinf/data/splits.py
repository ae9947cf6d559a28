"""Train / validation / test splits: the validation split is a seeded hold-out of train."""

from __future__ import annotations

import numpy as np
import torch

from smoothinf.data.dataset import ImageDataset
from smoothinf.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")


def check_split(split: str) -> str:
    """Return ``split`` or raise a one-line :class:`DataError` for an unknown name."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return split


def holdout_indices(n: int, val_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, val)`` of a seeded random hold-out of ``val_size`` out of ``n`` rows.

    Both are sorted (the kept rows stay in file order); one ``seed`` always gives the same
    hold-out on every machine (a CPU ``torch.Generator``).
    """
    if not 0 <= val_size < n:
        raise DataError(f"val_size must lie in [0, {n}) for a training set of {n} examples, got {val_size}")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def as_dataset(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> ImageDataset:
    """Wrap arrays (images NCHW uint8 or float32 in [0, 1], labels (N,)) without copying."""
    images_t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    labels_t = (
        torch.from_numpy(np.asarray(labels, dtype=np.int64))
        if not isinstance(labels, torch.Tensor)
        else labels
    )
    return ImageDataset(images_t, labels_t.long())


def split_train_val(
    train: ImageDataset, splits: tuple[str, ...], val_size: int, seed: int
) -> dict[str, ImageDataset]:
    """The requested ones of ``train``/``val`` carved out of a full training set."""
    train_idx, val_idx = holdout_indices(len(train), val_size, seed)
    out: dict[str, ImageDataset] = {}
    if "train" in splits:
        out["train"] = train.subset(train_idx) if val_size else train
    if "val" in splits:
        out["val"] = train.subset(val_idx)
    return out
