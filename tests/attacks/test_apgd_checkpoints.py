"""APGD's step-size checkpoints against AutoAttack's APGDAttack (issue 38, item 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothinf.attacks.apgd import checkpoints

# Read off AutoAttack's APGDAttack (``autopgd_base.py``): the first check after floor(0.22 n) steps,
# each next interval floor(0.03 n) shorter (>= 1) but >= floor(0.06 n) (>= 1), counted in whole steps.
# The old fractional schedule (ceil(p_j n), p_j = 0.22, 0.41, 0.57, ...) agreed at 1, 100 and 200
# steps only: it gave 10 -> [3, 5, 6, 7, 8, 9], 37 -> [9, 16, 22, 26, 30, 33, 35],
# 50 -> [11, 21, 29, 35, 40, 44, 47] and 150 -> [33, 62, 86, 105, 120, 131, 140, 149].
REFERENCE = {
    1: [],
    10: [2, 3, 4, 5, 6, 7, 8, 9],  # intervals 2, then 1 (floor(0.3) and floor(0.6) are raised to 1)
    37: [8, 15, 21, 26, 30, 33, 35],  # intervals 8, 7, 6, 5, 4, 3, 2 (floor(2.22) = 2 is the shortest)
    50: [11, 21, 30, 38, 45],  # intervals 11, 10, 9, 8, 7
    100: [22, 41, 57, 70, 80, 87, 93, 99],  # intervals 22, 19, 16, 13, 10, 7, 6, 6
    150: [33, 62, 87, 108, 125, 138, 147],  # intervals 33, 29, 25, 21, 17, 13, 9
    200: [44, 82, 114, 140, 160, 174, 186, 198],  # intervals 44, 38, 32, 26, 20, 14, 12, 12
}


@pytest.mark.parametrize("steps", sorted(REFERENCE))
def test_checkpoints_are_autoattacks(steps: int) -> None:
    assert checkpoints(steps) == REFERENCE[steps]


def _reference_checkpoints(steps: int) -> list[int]:
    """Run AutoAttack's APGDAttack for ``steps`` iterations on a 2-pixel linear model and record after
    how many gradient steps (its loop index i + 1) it runs its step-size check."""
    autopgd = pytest.importorskip("pyautoattack.autopgd_base")
    seen: list[int] = []

    class Recording(autopgd.APGDAttack):
        def check_oscillation(self, x, j, k, y5, k3=0.75):  # called once per check, at loop index j
            seen.append(j + 1)
            return super().check_oscillation(x, j, k, y5, k3)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3)).eval()
    x, y = torch.full((1, 1, 1, 2), 0.5), torch.zeros(1, dtype=torch.long)
    attack = Recording(model, n_iter=steps, norm="Linf", eps=0.1, device=torch.device("cpu"))
    attack.init_hyperparam(x)
    attack.attack_single_run(x, y)
    return seen


def test_checkpoints_match_the_instrumented_reference_for_many_step_counts() -> None:
    """Its checks at index i == steps - 1 come after the last step and change nothing: ours stop
    before ``steps`` (APGD takes no gradient after its last step)."""
    for steps in [*range(1, 41), 50, 99, 100, 101, 150, 200, 333]:
        assert checkpoints(steps) == [w for w in _reference_checkpoints(steps) if w < steps], steps
