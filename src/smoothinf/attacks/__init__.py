"""Attacks: FGSM, PGD (EOT), APGD over noise, EPGD, SmoothAdv, transfer, NAttack, Square, AutoAttack; judging.

Every attack is ``attack(x, y, generator=None) -> x_adv`` with x, x_adv (N, C, H, W) in [0, 1] and
``||x_adv - x||_p <= eps`` (pixel units); ``robust_accuracy`` judges them with the defended classifier.
"""

from smoothinf.attacks.apgd import APGD
from smoothinf.attacks.autoattack import AutoAttackAdapter
from smoothinf.attacks.base import (
    Attack,
    ce_loss,
    clip_to_threat,
    cw_loss,
    dlr_loss,
    expected_loss,
    project,
    random_start,
)
from smoothinf.attacks.expectation import EPGD, ExpectationPGD, SmoothAdv
from smoothinf.attacks.fgsm import FGSM
from smoothinf.attacks.judge import defended_predict, detect_randomised, is_randomised, judged_correct
from smoothinf.attacks.nattack import NAttack
from smoothinf.attacks.pgd import PGD
from smoothinf.attacks.presets import PRESETS, preset_attacks
from smoothinf.attacks.registry import build_attack, list_attacks
from smoothinf.attacks.robustness import RobustResult, robust_accuracies, robust_accuracy
from smoothinf.attacks.square import Square
from smoothinf.attacks.transfer import TransferAttack

__all__ = [
    "APGD",
    "EPGD",
    "FGSM",
    "PGD",
    "PRESETS",
    "Attack",
    "AutoAttackAdapter",
    "ExpectationPGD",
    "NAttack",
    "RobustResult",
    "SmoothAdv",
    "Square",
    "TransferAttack",
    "build_attack",
    "ce_loss",
    "clip_to_threat",
    "cw_loss",
    "defended_predict",
    "detect_randomised",
    "dlr_loss",
    "expected_loss",
    "is_randomised",
    "judged_correct",
    "list_attacks",
    "preset_attacks",
    "project",
    "random_start",
    "robust_accuracies",
    "robust_accuracy",
]
