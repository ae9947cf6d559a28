"""Training: objectives (standard, Gaussian augmentation, PGD-AT, TRADES, CNI-I+W, EPGD/SmoothAdv-AT)."""

from smoothinf.training.objectives import (
    OBJECTIVES,
    Step,
    adversarial,
    build_objective,
    standard,
    trades,
)

__all__ = ["OBJECTIVES", "Step", "adversarial", "build_objective", "standard", "trades"]
