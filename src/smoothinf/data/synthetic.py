"""``synthetic``: a small generated image data set for tests and smoke runs (milliseconds to make).

Four classes of 1x12x12 images. Each class has a fixed binary prototype (a horizontal bar, a
vertical bar, a diagonal band, a hollow square); an example is

    x = clip(0.5 + contrast * (P_y - 0.5) shifted by (dy, dx) in {-1, 0, 1}^2 + noise_std * z, 0, 1)

with z ~ N(0, I). The defaults make it learnable to > 95% test accuracy by a small CNN in about
a second of CPU training, while the low contrast (0.6) against the canonical L_inf radius 0.1 leaves
room for attacks to succeed. Splits are independent draws (train 2000, val 500, test 1000) from a
CPU generator seeded by (seed, split), so one seed gives the same tensors everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smoothinf.data.dataset import ImageDataset

SIZE = 12
NUM_CLASSES = 4
SPLIT_SIZES = {"train": 2000, "val": 500, "test": 1000}
_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator (pixel units)."""

    contrast: float = 0.6
    noise_std: float = 0.3
    max_shift: int = 1


def prototypes() -> torch.Tensor:
    """The (4, 1, 12, 12) binary class prototypes (1 = foreground)."""
    protos = torch.zeros(NUM_CLASSES, 1, SIZE, SIZE)
    protos[0, 0, 5:7, 2:10] = 1  # horizontal bar
    protos[1, 0, 2:10, 5:7] = 1  # vertical bar
    idx = torch.arange(2, 10)
    protos[2, 0, idx, idx] = 1  # diagonal band
    protos[2, 0, idx[:-1], idx[1:]] = 1
    protos[3, 0, 3:9, 3:9] = 1  # hollow square
    protos[3, 0, 4:8, 4:8] = 0
    return protos


def make_synthetic(
    n: int, seed: int = 0, stream: int = 0, config: SyntheticConfig = SyntheticConfig()
) -> ImageDataset:
    """``n`` balanced examples (float32 images (n, 1, 12, 12) in [0, 1], int64 labels)."""
    gen = torch.Generator().manual_seed(int(seed) * 1000003 + stream)
    labels = torch.arange(n) % NUM_CLASSES
    labels = labels[torch.randperm(n, generator=gen)]
    s = config.max_shift
    pad = torch.nn.functional.pad(prototypes(), (s, s, s, s))
    shifts = torch.randint(0, 2 * s + 1, (n, 2), generator=gen)
    rows = (shifts[:, :1] + torch.arange(SIZE))[:, :, None]  # (n, 12, 1)
    cols = (shifts[:, 1:] + torch.arange(SIZE))[:, None, :]  # (n, 1, 12)
    shapes = pad[labels][:, 0][torch.arange(n)[:, None, None], rows, cols].unsqueeze(1)
    noise = torch.randn(n, 1, SIZE, SIZE, generator=gen)
    images = (0.5 + config.contrast * (shapes - 0.5) + config.noise_std * noise).clamp_(0.0, 1.0)
    return ImageDataset(images, labels)


def load_synthetic(
    splits: tuple[str, ...], seed: int = 0, config: SyntheticConfig = SyntheticConfig()
) -> dict[str, ImageDataset]:
    """The requested splits (sizes in ``SPLIT_SIZES``), independent draws per split."""
    return {s: make_synthetic(SPLIT_SIZES[s], seed, _SPLIT_STREAMS[s], config) for s in splits}
