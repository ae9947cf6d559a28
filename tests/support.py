"""Small models and data shared by tests in several folders (``tests`` is on pytest's pythonpath)."""

from __future__ import annotations

import torch
from torch import nn


class Linear2(torch.nn.Module):
    """Binary linear classifier: logits (0, w.x + b); class 1 iff w.x + b > 0."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())
        self.b = b

    def forward(self, x):
        z = x.flatten(1) @ self.w.flatten() + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


def linear10() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()


def argmax_data(model: nn.Module, n: int = 12, side: int = 4):
    x = torch.rand((n, 1, side, side), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y
