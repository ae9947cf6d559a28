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

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "APGD",
            "EPGD",
            "FGSM",
            "PGD",
            "AutoAttackAdapter",
            "NAttack",
            "RobustResult",
            "SmoothAdv",
            "TransferAttack",
            "build_attack",
            "list_attacks",
            "preset_attacks",
            "robust_accuracy",
        ),
        "smoothinf.attacks",
    ),
    **dict.fromkeys(
        (
            "DatasetInfo",
            "ImageDataset",
            "augment_crop_flip",
            "get_dataset_info",
            "list_datasets",
            "load_dataset",
            "load_splits",
        ),
        "smoothinf.data",
    ),
    **dict.fromkeys(("EvalConfig", "evaluate", "write_report"), "smoothinf.evaluation"),
    **dict.fromkeys(("ResultsStore", "evaluation_identity"), "smoothinf.evaluation.results"),
    **dict.fromkeys(("StudyConfig", "judge_grid", "run_study"), "smoothinf.experiments"),
    **dict.fromkeys(
        (
            "Normalize",
            "check_model_input",
            "create_model",
            "create_model_for",
            "list_models",
            "load_checkpoint",
            "load_legacy_checkpoint",
            "save_checkpoint",
        ),
        "smoothinf.models",
    ),
    **dict.fromkeys(
        (
            "NOISE_KINDS",
            "NoiseDistribution",
            "inject_noise",
            "noise_disabled",
            "noise_summary",
            "per_draw_noise",
            "set_noise",
        ),
        "smoothinf.noise",
    ),
    **dict.fromkeys(
        (
            "SmoothedClassifier",
            "certify",
            "exponential_rank",
            "predict_with_abstain",
            "reciprocal_rank",
            "top_k",
        ),
        "smoothinf.smoothing",
    ),
    **dict.fromkeys(("COGuard", "COGuardConfig", "SingleStep", "build_objective"), "smoothinf.training"),
    **dict.fromkeys(("TrainConfig", "train"), "smoothinf.training.trainer"),
    "tune_cpu_allocator": "smoothinf.utils",
}
_SUBPACKAGES = (
    "attacks",
    "cli",
    "data",
    "evaluation",
    "experiments",
    "models",
    "noise",
    "smoothing",
    "training",
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
