"""Additive input-noise distributions for smoothing and expectation attacks.

All three have standard deviation ``sigma`` per pixel (pixel units), so results are comparable
across families: Gaussian N(0, sigma^2), uniform U(-sqrt(3) sigma, sqrt(3) sigma) and Laplace with
scale sigma / sqrt(2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from smoothinf.errors import SmoothinfError

NOISE_FAMILIES = ("gaussian", "uniform", "laplace")


@dataclass(frozen=True)
class NoiseDistribution:
    """A zero-mean i.i.d. noise distribution with per-pixel std ``sigma`` (pixel units)."""

    family: str = "gaussian"
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.family not in NOISE_FAMILIES:
            raise SmoothinfError(f"unknown noise {self.family!r}; choose one of {', '.join(NOISE_FAMILIES)}")
        if not math.isfinite(self.sigma) or self.sigma < 0:
            raise SmoothinfError(f"sigma must be a finite number >= 0, got {self.sigma}")

    @classmethod
    def gaussian(cls, sigma: float) -> NoiseDistribution:
        return cls("gaussian", float(sigma))

    @classmethod
    def uniform(cls, sigma: float) -> NoiseDistribution:
        return cls("uniform", float(sigma))

    @classmethod
    def laplace(cls, sigma: float) -> NoiseDistribution:
        return cls("laplace", float(sigma))

    def sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw a noise tensor of ``shape`` on ``device`` (default: the generator's); zeros when
        sigma = 0 (no generator state used). The numbers are drawn on the generator's device and
        moved to ``device``, so a CPU generator gives the same noise to a CUDA model as on the CPU."""
        draw_device = generator.device if generator is not None else device
        out = self.sample_into(torch.empty(shape, device=draw_device, dtype=dtype), generator)
        return out if device is None else out.to(device)

    def sample_into(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill ``out`` in place with noise (the same numbers ``sample`` draws) and return it."""
        if self.sigma == 0:
            return out.zero_()
        if self.family == "gaussian":
            # normal_ scales in the same pass; its numbers equal randn(...) * sigma
            return out.normal_(0.0, self.sigma, generator=generator)
        u = out.uniform_(0.0, 1.0, generator=generator)  # the numbers of torch.rand
        if self.family == "uniform":
            return u.mul_(2).sub_(1).mul_(self.sigma * math.sqrt(3.0))
        # Laplace by inverse CDF: u in [0,1) -> centred v in [-1/2, 1/2).
        v = u.sub_(0.5)
        sign = torch.sign(v)
        scale = self.sigma / math.sqrt(2.0)
        return v.abs_().mul_(-2).log1p_().clamp_min_(-80.0).mul_(sign).mul_(-scale)


def as_noise(noise: NoiseDistribution | str, sigma: float | None = None) -> NoiseDistribution:
    """Accept a NoiseDistribution or a family name plus sigma."""
    if isinstance(noise, NoiseDistribution):
        return noise
    if sigma is None:
        raise SmoothinfError("sigma is required when noise is given by name")
    return NoiseDistribution(noise, float(sigma))
