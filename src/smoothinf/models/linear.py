"""A linear classifier (flatten + Linear): logits are affine in the pixels, handy for analytic tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from smoothinf.models.cnn import _size_pair
from smoothinf.models.normalize import ImageClassifier
from smoothinf.models.registry import register_model


class LinearClassifier(ImageClassifier):
    """logits = fc(flatten(normalize(x))); x (N, C, H, W) with H, W = ``input_size``; logits (N, K)."""

    def __init__(self, num_classes: int, in_channels: int, mean, std, input_size: int | Sequence[int] = 28):
        super().__init__(in_channels, mean, std)
        h, w = _size_pair(input_size)
        self.fc = nn.Linear(in_channels * h * w, num_classes)

    def forward_normalized(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z.flatten(1))


@register_model("linear", input_shape=(1, 28, 28))
def linear(num_classes, in_channels, mean, std, input_size=28):
    """Flatten + Linear: a linear classifier on the normalised pixels."""
    return LinearClassifier(num_classes, in_channels, mean, std, input_size=input_size)
