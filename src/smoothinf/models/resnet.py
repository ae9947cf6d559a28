"""Residual networks for 32x32 inputs: CIFAR ResNet-20..110 (post-activation) and PreAct-ResNet-18.

One implementation, ``ResNet``, parameterised by the block kind (``basic``: conv-BN-ReLU-conv-BN,
add, ReLU, He et al. 2016a; ``preact``: BN-ReLU-conv twice, add, He et al. 2016b), the number of
blocks and the width of each stage. Module names follow the common reference implementations
(``conv1``, ``bn1``, ``layer{s}.{i}.{conv1,bn1,conv2,bn2,downsample}``, ``fc``), so legacy state
dicts (e.g. the SIAM paper's ResNet-20) load without renaming. Convs and linears are plain
``nn.Conv2d``/``nn.Linear`` so noise injection can swap them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from smoothinf.errors import SmoothinfError
from smoothinf.models.normalize import ImageClassifier
from smoothinf.models.registry import register_model


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    """Post-activation block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    ``shortcut="conv"`` (option B: 1x1 conv + BN when the shape changes, the paper's reference
    code) or ``"pad"`` (option A: parameter-free zero padding, He et al.'s CIFAR ResNets).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, shortcut: str = "conv", dropout: float = 0.0):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            if shortcut == "conv":
                self.downsample = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
                )
            else:
                self.downsample = PadShortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class PreActBlock(nn.Module):
    """Pre-activation block: conv2(relu(bn2(conv1(a)))) + shortcut, with a = relu(bn1(x)).

    The shortcut is x itself, or a 1x1 conv of the activated input a when the shape changes
    (``shortcut="conv"``; ``"pad"`` zero-pads a). Optional dropout between the convs (WRN).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, shortcut: str = "conv", dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = (
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
                if shortcut == "conv"
                else PadShortcut(c_in, c_out, stride)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn1(x))
        out = self.conv1(a)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        identity = x if self.downsample is None else self.downsample(a)
        return out + identity


BLOCKS = {"basic": BasicBlock, "preact": PreActBlock}


class ResNet(ImageClassifier):
    """Stem ``conv1`` (3x3), stages ``layer1..layerS``, global average pool, ``fc``.

    ``blocks[s]`` blocks of width ``widths[s]`` in stage s; the first block of every stage after
    the first has stride 2. ``block="basic"`` adds ``bn1`` + ReLU after the stem (post-activation);
    ``block="preact"`` adds a final ``bn`` + ReLU before pooling. Input (N, C, H, W) pixels in
    [0, 1]; output logits (N, num_classes). Any H, W >= 2**(S-1) works (global pooling).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float] | float,
        std: Sequence[float] | float,
        *,
        blocks: Sequence[int],
        widths: Sequence[int],
        block: str = "basic",
        stem_width: int | None = None,
        shortcut: str = "conv",
        dropout: float = 0.0,
    ):
        super().__init__(in_channels, mean, std)
        if block not in BLOCKS:
            raise SmoothinfError(f"unknown block {block!r}; use one of {sorted(BLOCKS)}")
        if shortcut not in ("conv", "pad"):
            raise SmoothinfError(f"unknown shortcut {shortcut!r}; use 'conv' (option B) or 'pad' (option A)")
        if len(blocks) != len(widths) or not blocks or min(blocks) < 1:
            raise SmoothinfError(
                f"blocks {list(blocks)} and widths {list(widths)} must be non-empty, same length"
            )
        if not 0.0 <= dropout < 1.0:
            raise SmoothinfError(f"dropout must lie in [0, 1), got {dropout}")
        self.block = block
        stem = stem_width or widths[0]
        self.conv1 = conv3x3(in_channels, stem)
        if block == "basic":
            self.bn1 = nn.BatchNorm2d(stem)
            self.relu = nn.ReLU()
        cls = BLOCKS[block]
        c_in = stem
        for s, (n, width) in enumerate(zip(blocks, widths, strict=True)):
            layers = []
            for i in range(n):
                stride = 2 if (i == 0 and s > 0) else 1
                layers.append(cls(c_in, width, stride, shortcut=shortcut, dropout=dropout))
                c_in = width
            self.add_module(f"layer{s + 1}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        if block == "preact":
            self.bn = nn.BatchNorm2d(c_in)
            self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_weights(self)

    def forward_normalized(self, z: torch.Tensor) -> torch.Tensor:
        out = self.conv1(z)
        if self.block == "basic":
            out = self.relu(self.bn1(out))
        for s in range(self.num_stages):
            out = getattr(self, f"layer{s + 1}")(out)
        if self.block == "preact":
            out = self.relu(self.bn(out))
        return self.fc(self.pool(out).flatten(1))


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU), BN weight 1 / bias 0, zero linear bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def cifar_resnet(
    num_classes,
    in_channels,
    mean,
    std,
    depth: int = 20,
    width: int = 16,
    shortcut: str = "conv",
    dropout: float = 0.0,
) -> ResNet:
    """CIFAR ResNet of ``depth`` = 6n + 2 layers: 3 stages of n basic blocks, widths w, 2w, 4w."""
    if depth < 8 or (depth - 2) % 6:
        raise SmoothinfError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNet(
        num_classes,
        in_channels,
        mean,
        std,
        blocks=(n, n, n),
        widths=(width, 2 * width, 4 * width),
        block="basic",
        shortcut=shortcut,
        dropout=dropout,
    )


def _register_cifar_resnet(depth: int) -> None:
    def builder(
        num_classes, in_channels, mean, std, width: int = 16, shortcut: str = "conv", dropout: float = 0.0
    ) -> ResNet:
        return cifar_resnet(num_classes, in_channels, mean, std, depth, width, shortcut, dropout)

    builder.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016): {(depth - 2) // 6} blocks per stage, 16-32-64."
    register_model(f"resnet{depth}", input_shape=(3, 32, 32))(builder)


for _depth in (20, 32, 44, 56, 110):
    _register_cifar_resnet(_depth)


@register_model("preact_resnet18", input_shape=(3, 32, 32))
def preact_resnet18(num_classes, in_channels, mean, std, width: int = 64, dropout: float = 0.0) -> ResNet:
    """PreAct-ResNet-18 (He et al. 2016b): 2-2-2-2 pre-activation blocks, 64-128-256-512."""
    return ResNet(
        num_classes,
        in_channels,
        mean,
        std,
        blocks=(2, 2, 2, 2),
        widths=(width, 2 * width, 4 * width, 8 * width),
        block="preact",
        dropout=dropout,
    )
