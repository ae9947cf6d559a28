"""The per-draw weight-noise contract between noise layers and batched Monte Carlo.

A batch of B rows evaluated under ``per_draw_noise(model, d)`` is d draws of B/d examples each,
draw-major (rows j*B/d .. (j+1)*B/d - 1 belong to draw j). Every noise layer (a module with an
integer attribute ``num_draws``) then samples d independent weight-noise tensors, one per draw,
shared by the examples of that draw: the distribution of d separate forwards. Outside the context
``num_draws`` is 1 (one noise draw shared by the whole batch, as in the reference code).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def noise_layers(model: nn.Module) -> list[nn.Module]:
    """Modules of ``model`` that follow the per-draw contract."""
    return [m for m in model.modules() if hasattr(m, "num_draws")]


@contextmanager
def per_draw_noise(
    model: nn.Module, num_draws: int, generator: torch.Generator | None = None
) -> Iterator[None]:
    """Within the context, noise layers draw ``num_draws`` independent noises per forward.

    ``generator`` (optional) is used by the layers for their noise, for reproducible draws.
    """
    layers = noise_layers(model)
    saved = [(m.num_draws, getattr(m, "noise_generator", None)) for m in layers]
    try:
        for m in layers:
            m.num_draws = int(num_draws)
            m.noise_generator = generator
        yield
    finally:
        for m, (d, g) in zip(layers, saved, strict=True):
            m.num_draws = d
            m.noise_generator = g
