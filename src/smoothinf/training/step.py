"""What every training objective returns (``Step``) and the eval-mode forward the attacks inside
objectives share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Step:
    """The loss to minimise and the statistics of one batch (accuracies on clean / adversarial)."""

    loss: torch.Tensor
    clean_correct: int
    adv_correct: int | None = None


Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator | None], Step]


def frozen_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits in eval mode (batch-norm running statistics neither used for training nor updated);
    every module's training flag is restored afterwards."""
    model = getattr(model, "module", model)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return model(x)
    finally:
        for m, t in modes:
            m.training = t
