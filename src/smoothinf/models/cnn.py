"""MNIST convolutional networks: a fast small CNN and Madry et al.'s conv-pool-conv-pool-FC model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from smoothinf.errors import SmoothinfError
from smoothinf.models.normalize import ImageClassifier
from smoothinf.models.registry import register_model


def _size_pair(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    h, w = (int(v) for v in input_size)
    return h, w


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class ConvNet(ImageClassifier):
    """Conv stack (``conv{i}`` + ReLU [+ 2x2 max-pool]) then ``fc1`` + ReLU and ``fc2``.

    ``channels``/``kernels``/``strides`` give one entry per conv layer (padding keeps "same"
    spatial size before the stride: ``(k - 1) // 2``); ``pool`` adds a 2x2 max-pool after each conv.
    ``input_size`` (H, W) fixes the fully connected layer's width. Input (N, C, H, W) pixels in
    [0, 1]; output logits (N, num_classes).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float] | float,
        std: Sequence[float] | float,
        *,
        channels: Sequence[int],
        kernels: Sequence[int],
        strides: Sequence[int],
        pool: bool,
        hidden: int,
        input_size: int | Sequence[int] = 28,
    ):
        super().__init__(in_channels, mean, std)
        h, w = _size_pair(input_size)
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, (c_out, k, s) in enumerate(zip(channels, kernels, strides, strict=True)):
            pad = (k - 1) // 2
            conv = nn.Conv2d(c_in, c_out, k, stride=s, padding=pad)
            layers += [conv, nn.ReLU()]
            h, w = _conv_out(h, k, s, pad), _conv_out(w, k, s, pad)
            if pool:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise SmoothinfError(f"input size {input_size} is too small for conv layer {i + 1}")
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(c_in * h * w, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)
        # He init: one epoch of Adam (lr 1e-3) reaches >= 97% on MNIST (PyTorch default init ~96.5-97%)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward_normalized(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.features(z).flatten(1))))


@register_model("mnist_cnn_small", input_shape=(1, 28, 28))
def mnist_cnn_small(num_classes, in_channels, mean, std, input_size=28, hidden=100):
    """Fast CPU CNN: conv16 4x4/2 - conv32 4x4/2 - FC100 - FC."""
    return ConvNet(
        num_classes,
        in_channels,
        mean,
        std,
        channels=(16, 32),
        kernels=(4, 4),
        strides=(2, 2),
        pool=False,
        hidden=hidden,
        input_size=input_size,
    )


@register_model("mnist_cnn", input_shape=(1, 28, 28))
def mnist_cnn(num_classes, in_channels, mean, std, input_size=28, hidden=1024):
    """Madry et al. (2018): conv32 5x5 - pool - conv64 5x5 - pool - FC1024 - FC."""
    return ConvNet(
        num_classes,
        in_channels,
        mean,
        std,
        channels=(32, 64),
        kernels=(5, 5),
        strides=(1, 1),
        pool=True,
        hidden=hidden,
        input_size=input_size,
    )
