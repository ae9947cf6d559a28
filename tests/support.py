"""Small models and data shared by tests in several folders (``tests`` is on pytest's pythonpath)."""

from __future__ import annotations

import math

import torch
from torch import nn

from smoothinf.models.linear import LinearClassifier


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


UNIT = torch.full((1, 4, 4), 0.25)  # a unit vector in pixel space (16 pixels of 1/4)


def halfspace(classes: int = 2) -> LinearClassifier:
    """Class 1 iff the signed distance d = <x - 0.5, UNIT> > 0; smoothed with Gaussian noise of std
    sigma and one draw (hard vote, m = 1) it is right on class 1 with probability Phi(d / sigma).
    ``classes`` > 2 adds classes whose logit is always -10 (never predicted; for DLR losses)."""
    model = LinearClassifier(classes, 1, [0.0], [1.0], input_size=4)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.weight[1] = UNIT.flatten()
        model.fc.bias.fill_(-10.0)
        model.fc.bias[:2] = torch.tensor([0.0, -0.5 * float(UNIT.sum())])
    return model.eval()


def at_distance(d: torch.Tensor) -> torch.Tensor:
    """Images (len(d), 1, 4, 4) at signed distances d from the half-space's boundary."""
    return 0.5 + d.view(-1, 1, 1, 1) * UNIT


def phi(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(t / math.sqrt(2)))


class CountingForward(nn.Module):
    """Wraps a model and counts its forwards with gradients on (``calls``; one per attack step and
    chunk) and the rows they saw (``rows``): the attack steps' work."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.calls += 1
            self.rows += x.shape[0]
        return self.model(x)
