"""Training: objectives (standard, Gaussian augmentation, PGD-AT, TRADES, CNI-I+W, EPGD/SmoothAdv-AT)."""

from smoothinf.training.objectives import (
    INPUT_NOISE_OBJECTIVES,
    OBJECTIVES,
    Step,
    adversarial,
    build_objective,
    check_input_noise,
    standard,
    trades,
)

__all__ = [
    "INPUT_NOISE_OBJECTIVES",
    "OBJECTIVES",
    "Step",
    "adversarial",
    "build_objective",
    "check_input_noise",
    "standard",
    "trades",
]
