"""Noise: input-noise distributions, the per-draw contract, PNI/CNI noise-injection layers."""

from smoothinf.noise.distributions import NOISE_FAMILIES, NoiseDistribution, as_noise
from smoothinf.noise.draws import noise_layers, per_draw_noise

__all__ = ["NOISE_FAMILIES", "NoiseDistribution", "as_noise", "noise_layers", "per_draw_noise"]
