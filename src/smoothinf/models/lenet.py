"""LeNet as the randomized-smoothing literature trains it on MNIST (Cohen et al.'s code base, as used
by Salman et al., MACER, Consistency and SmoothMix): conv 20 5x5 - ReLU - max-pool 2 - conv 50 5x5 -
ReLU - max-pool 2 - FC 500 - ReLU - FC, no padding (28 -> 24 -> 12 -> 8 -> 4: 800 features).

Their MNIST models take raw pixels (their normalisation layer for MNIST is the identity), so
``create_model_for`` builds ``lenet`` with mean 0 and std 1 (``ModelSpec.dataset_normalization``
False); ``create_model("lenet", mean=..., std=...)`` with explicit statistics still normalises.
Layers keep PyTorch's default initialisation, as in the reference code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from smoothinf.errors import SmoothinfError
from smoothinf.models.cnn import _size_pair
from smoothinf.models.normalize import ImageClassifier
from smoothinf.models.registry import register_model


class LeNet(ImageClassifier):
    """``conv1`` (20, 5x5) -> ReLU -> pool -> ``conv2`` (50, 5x5) -> ReLU -> pool -> ``fc1`` (500) ->
    ReLU -> ``fc2``. Input (N, C, H, W) pixels in [0, 1] (H, W = ``input_size``); logits (N, K)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float] | float,
        std: Sequence[float] | float,
        input_size: int | Sequence[int] = 28,
        channels: Sequence[int] = (20, 50),
        hidden: int = 500,
    ):
        super().__init__(in_channels, mean, std)
        h, w = _size_pair(input_size)
        for _ in range(2):  # 5x5 valid conv, then 2x2 pool
            h, w = (h - 4) // 2, (w - 4) // 2
        if h < 1 or w < 1:
            raise SmoothinfError(f"input size {input_size} is too small for LeNet (needs >= 16 pixels)")
        c1, c2 = (int(c) for c in channels)
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * h * w, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward_normalized(self, z: torch.Tensor) -> torch.Tensor:
        z = F.max_pool2d(F.relu(self.conv1(z)), 2)
        z = F.max_pool2d(F.relu(self.conv2(z)), 2)
        return self.fc2(F.relu(self.fc1(z.flatten(1))))


@register_model("lenet", input_shape=(1, 28, 28), dataset_normalization=False)
def lenet(num_classes, in_channels, mean, std, input_size=28, channels=(20, 50), hidden=500):
    """LeNet of the randomized-smoothing literature (conv20-pool-conv50-pool-FC500-FC), raw pixels."""
    return LeNet(num_classes, in_channels, mean, std, input_size=input_size, channels=channels, hidden=hidden)
