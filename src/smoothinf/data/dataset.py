"""In-memory image data set and its description."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.data import Dataset

from smoothinf.errors import SmoothinfError


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and an attack need to know about a data set.

    ``mean``/``std`` are per channel in pixel units; ``eps_linf`` is the canonical L_inf radius
    (8/255 for CIFAR, 0.3 for MNIST).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps_linf: float

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]

    def to_dict(self) -> dict:
        return asdict(self)


class ImageDataset(Dataset):
    """Images (N, C, H, W) with labels (N,), held in memory.

    ``images`` is uint8 (0..255) or float32 in [0, 1]; items and ``tensors()`` are always float32
    in [0, 1] so every consumer sees pixel units.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images must be (N, C, H, W) and labels (N,), got {tuple(images.shape)}"
                f" and {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.labels.shape[0]

    @staticmethod
    def _to_float(images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            return images.float().div_(255.0)
        return images.float()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._to_float(self.images[index]), self.labels[index]

    def tensors(self, max_examples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All (or the first ``max_examples`` >= 1) images as float32 [0, 1] and labels as int64."""
        if max_examples is not None and (
            isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1
        ):
            raise SmoothinfError(
                f"max_examples must be an integer >= 1 (or None for all), got {max_examples!r}"
            )
        end = len(self) if max_examples is None else min(max_examples, len(self))
        return self._to_float(self.images[:end]), self.labels[:end]

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        """A new data set holding the given rows."""
        return ImageDataset(self.images[indices], self.labels[indices])
