"""Training augmentation as batched tensor ops (no torchvision, no per-example loop)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment_crop_flip(
    x: torch.Tensor,
    padding: int = 4,
    generator: torch.Generator | None = None,
    flip: bool = True,
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of a batch.

    ``x``: (N, C, H, W) images (any dtype). Each example is zero-padded by ``padding`` pixels on
    every side, cropped back to H x W at a uniform random offset in [0, 2 * padding]^2, and
    mirrored left-right with probability 1/2 when ``flip``. The offsets and flips are drawn on
    the generator's device (CPU when ``generator`` is None and ``x`` is on the CPU) from
    ``generator``; the crop is one advanced-indexing gather. Returns a new (N, C, H, W) tensor.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_crop_flip expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, _, h, w = x.shape
    draw_device = generator.device if generator is not None else x.device
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=draw_device).to(x.device)
    flips = torch.zeros(n, dtype=torch.bool, device=x.device)
    if flip:
        flips = (torch.rand(n, generator=generator, device=draw_device) < 0.5).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (N, H)
    col_range = torch.arange(w, device=x.device)
    cols = offsets[:, 1:] + torch.where(flips[:, None], col_range.flip(0), col_range)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
