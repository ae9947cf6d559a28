"""Per-channel normalisation as the first layer of every model (inputs stay in pixel units)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from smoothinf.errors import SmoothinfError


def _channel_stats(values: Sequence[float] | float, in_channels: int, name: str) -> list[float]:
    """``values`` as a list of ``in_channels`` floats (a scalar or length-1 sequence is broadcast)."""
    if isinstance(values, (int, float)):
        values = [float(values)]
    values = [float(v) for v in values]
    if len(values) == 1:
        values = values * in_channels
    if len(values) != in_channels:
        raise SmoothinfError(
            f"{name} has {len(values)} entries but the model has {in_channels} input channels"
        )
    return values


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; x is (N, C, H, W) in pixel units [0, 1].

    ``mean`` and ``std`` are persistent buffers of shape (1, C, 1, 1), so they are saved with the
    weights and move with the model. Keeping them inside the model means attacks, smoothing noise
    and eps all live in pixel units.
    """

    def __init__(
        self, mean: Sequence[float] | float, std: Sequence[float] | float, in_channels: int | None = None
    ):
        super().__init__()
        if in_channels is None:
            in_channels = 1 if isinstance(mean, (int, float)) else len(mean)
        mean_l = _channel_stats(mean, in_channels, "mean")
        std_l = _channel_stats(std, in_channels, "std")
        if any(not s > 0 for s in std_l):
            raise SmoothinfError(f"std must be positive per channel, got {std_l}")
        self.register_buffer("mean", torch.tensor(mean_l, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_l, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def in_channels(self) -> int:
        return self.mean.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = ", ".join(f"{v:.4g}" for v in self.mean.flatten().tolist())
        std = ", ".join(f"{v:.4g}" for v in self.std.flatten().tolist())
        return f"mean=({mean}), std=({std})"


class ImageClassifier(nn.Module):
    """Base of the zoo: ``normalize`` is the first module, ``forward_normalized`` the network.

    Subclasses call ``super().__init__(in_channels, mean, std)`` before creating their layers
    (so ``normalize`` is registered first) and implement ``forward_normalized(z)`` on normalised
    inputs z (N, C, H, W); ``forward(x)`` takes pixels in [0, 1] and returns logits (N, K).
    """

    def __init__(self, in_channels: int, mean: Sequence[float] | float, std: Sequence[float] | float):
        super().__init__()
        self.normalize = Normalize(mean, std, in_channels)

    def forward_normalized(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_normalized(self.normalize(x))
