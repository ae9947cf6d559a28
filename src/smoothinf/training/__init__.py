"""Training: objectives (standard, Gaussian augmentation, PGD-AT, TRADES, CNI-I+W, EPGD/SmoothAdv-AT,
single-step FGSM / FGSM-RS / N-FGSM with optional GradAlign) and the catastrophic-overfitting guard."""

from smoothinf.training.co_guard import COGuard, COGuardConfig, GuardCheck
from smoothinf.training.objectives import (
    INPUT_NOISE_OBJECTIVES,
    OBJECTIVES,
    Step,
    adversarial,
    build_objective,
    check_input_noise,
    single_step,
    standard,
    trades,
)
from smoothinf.training.single_step import (
    SINGLE_STEP_OBJECTIVES,
    SingleStep,
    grad_align_penalty,
    single_step_perturbation,
)

__all__ = [
    "INPUT_NOISE_OBJECTIVES",
    "OBJECTIVES",
    "SINGLE_STEP_OBJECTIVES",
    "COGuard",
    "COGuardConfig",
    "GuardCheck",
    "SingleStep",
    "Step",
    "adversarial",
    "build_objective",
    "check_input_noise",
    "grad_align_penalty",
    "single_step",
    "single_step_perturbation",
    "standard",
    "trades",
]
