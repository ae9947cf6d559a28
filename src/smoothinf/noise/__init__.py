"""Noise: input-noise distributions, keyed draws, the per-draw contract, PNI/CNI noise-injection layers."""

from smoothinf.noise.distributions import NOISE_FAMILIES, NoiseDistribution, as_noise
from smoothinf.noise.draws import (
    chunk_rows,
    grad_chunk_rows,
    noise_layers,
    per_draw_noise,
    saved_bytes_per_row,
    weight_noise_values,
)
from smoothinf.noise.inject import (
    NOISE_KINDS,
    format_noise_summary,
    inject_noise,
    input_noise_std,
    mean_noise_level,
    noise_disabled,
    noise_parameters,
    noise_summary,
    param_groups,
    set_noise,
)
from smoothinf.noise.keyed import KEYED_STREAM, KeyedNoise
from smoothinf.noise.layers import InputNoise, NoisyLayer

__all__ = [
    "NOISE_FAMILIES",
    "NOISE_KINDS",
    "InputNoise",
    "KEYED_STREAM",
    "KeyedNoise",
    "NoiseDistribution",
    "NoisyLayer",
    "as_noise",
    "chunk_rows",
    "format_noise_summary",
    "grad_chunk_rows",
    "inject_noise",
    "input_noise_std",
    "mean_noise_level",
    "noise_disabled",
    "noise_layers",
    "noise_parameters",
    "noise_summary",
    "param_groups",
    "per_draw_noise",
    "saved_bytes_per_row",
    "set_noise",
    "weight_noise_values",
]
