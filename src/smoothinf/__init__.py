"""smoothinf: smoothed inference for adversarial robustness.

Pixels are NCHW float32 in [0, 1]; normalisation is a layer inside each model; noise sigma and
attack eps are in pixel units.

The public names below are re-exported lazily (PEP 562): ``import smoothinf.models`` loads the
model layer only, never the attacks or training above it (imports go one way:
data/models/noise <- smoothing <- attacks <- training/evaluation <- cli).
"""

from __future__ import annotations

import importlib
from typing import Any

from smoothinf._version import __version__ as __version__

# The curated public API (the names the README uses), each -> the module that defines it; every
# other name lives under its module (``smoothinf.attacks.EPGD``, ``smoothinf.smoothing.certify``...).
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("APGD", "PGD", "AutoAttackAdapter", "judged_correct"), "smoothinf.attacks"),
    "load_dataset": "smoothinf.data",
    **dict.fromkeys(("Report", "evaluate"), "smoothinf.evaluation"),
    **dict.fromkeys(("create_model", "load_checkpoint", "save_checkpoint"), "smoothinf.models"),
    **dict.fromkeys(("NoiseDistribution", "inject_noise"), "smoothinf.noise"),
    "SmoothedClassifier": "smoothinf.smoothing",
    **dict.fromkeys(("TrainConfig", "train"), "smoothinf.training.trainer"),
}
_SUBPACKAGES = (
    "attacks",
    "cli",
    "data",
    "evaluation",
    "models",
    "noise",
    "recipes",
    "smoothing",
    "training",
    "zoo",
)

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load a public name (or a sub-package) on first access."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"smoothinf.{name}")
    else:
        raise AttributeError(f"module 'smoothinf' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
