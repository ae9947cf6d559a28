"""Training: objectives (standard, Gaussian augmentation, PGD-AT, TRADES, CNI-I+W, EPGD/SmoothAdv-AT,
single-step FGSM / FGSM-RS / N-FGSM with optional GradAlign; Consistency, SmoothMix and MACER for
certified robustness) and the catastrophic-overfitting guard."""

from smoothinf.training.certified_objectives import (
    EpochClock,
    consistency,
    consistency_regularizer,
    macer,
    macer_loss,
    smoothadv_shared,
    smoothed_pgd,
    smoothmix,
)
from smoothinf.training.co_guard import COGuard, COGuardConfig, GuardCheck
from smoothinf.training.objectives import (
    ATTACK_NOISE,
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
    "ATTACK_NOISE",
    "INPUT_NOISE_OBJECTIVES",
    "OBJECTIVES",
    "SINGLE_STEP_OBJECTIVES",
    "COGuard",
    "COGuardConfig",
    "EpochClock",
    "GuardCheck",
    "SingleStep",
    "Step",
    "adversarial",
    "build_objective",
    "check_input_noise",
    "consistency",
    "consistency_regularizer",
    "grad_align_penalty",
    "macer",
    "macer_loss",
    "single_step",
    "single_step_perturbation",
    "smoothadv_shared",
    "smoothed_pgd",
    "smoothmix",
    "standard",
    "trades",
]
