"""smoothinf: smoothed inference for adversarial robustness.

Pixels are NCHW float32 in [0, 1]; normalisation is a layer inside each model; noise sigma and
attack eps are in pixel units.
"""

__version__ = "0.1.0"
