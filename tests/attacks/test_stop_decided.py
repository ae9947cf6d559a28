"""Stopping on decided examples inside an attack run (``smoothinf.attacks.decided``)."""

from __future__ import annotations

import pytest
import torch

from smoothinf.attacks import APGD, PGD, judged_correct
from smoothinf.attacks.decided import decided, stop_marks
from smoothinf.smoothing import SmoothedClassifier
from support import CountingForward, at_distance, halfspace

SIGMA = 0.1


def _attack(cls, model, judge, stop: bool, steps: int = 20):
    if cls is APGD:
        return APGD(model, 0.05, steps, noise=SIGMA, m=4, reduce="softmax", judge=judge, stop_decided=stop)
    return PGD(model, 0.05, steps=steps, judge=judge, stop_decided=stop)


@pytest.mark.parametrize("cls", [APGD, PGD])
def test_a_run_that_decides_nothing_is_unchanged_to_the_bit(cls):
    """Examples far from the boundary are never fooled: the checks retire none, draw nothing from
    the run's generator, and the points are those of a run without checks."""
    model = halfspace(10)
    x, y = at_distance(torch.full((8,), 0.6)), torch.ones(8, dtype=torch.long)
    judge = SmoothedClassifier(model, SIGMA, 16, "hard")
    out = [_attack(cls, model, judge, stop)(x, y, torch.Generator().manual_seed(0)) for stop in (False, True)]
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("cls", [APGD, PGD])
def test_decided_examples_leave_the_run_and_stay_fooled(cls):
    """Half the examples start beyond reach of the defence (fooled from the first step at this eps),
    half far inside: the fooled half leaves at the first check (a quarter or 22% of the steps), so
    the steps see fewer rows; the points it leaves with are still judged wrong, the robust half's
    points are those of a run without checks only in distribution (the batch changed)."""
    base = halfspace(10)
    d = torch.cat([torch.full((8,), 0.01), torch.full((8,), 0.6)])
    x, y = at_distance(d), torch.ones(16, dtype=torch.long)
    judge = SmoothedClassifier(base, SIGMA, 16, "hard")
    rows, points = {}, {}
    for stop in (False, True):
        model = CountingForward(base)
        attack = _attack(cls, model, SmoothedClassifier(model, SIGMA, 16, "hard"), stop)
        points[stop] = attack(x, y, torch.Generator().manual_seed(0))
        rows[stop] = model.rows
    assert rows[True] < 0.75 * rows[False]
    right = judged_correct(judge, points[True], y, torch.Generator().manual_seed(5), 16)
    assert float(right[:8].max()) <= 0.125 and float(right[8:].min()) == 1.0


def test_the_decision_needs_every_judgement_of_every_judge_wrong():
    base = halfspace(10)
    y = torch.ones(3, dtype=torch.long)
    x = at_distance(torch.tensor([-0.3, 0.0, 0.3]))  # wrong surely, a coin flip, right surely
    hard = SmoothedClassifier(base, SIGMA, 1, "hard")
    gen = torch.Generator().manual_seed(0)
    assert decided(x, y, [hard], gen).tolist() == [True, False, False]
    # a second judge that the first example does not fool keeps it in the run
    right_everywhere = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    with torch.no_grad():
        right_everywhere[1].weight.zero_()
        right_everywhere[1].bias.copy_(torch.arange(10.0) == 1)
    assert decided(x, y, [hard, right_everywhere], gen).tolist() == [False, False, False]
    assert stop_marks(200, [44, 82, 114, 140, 160]) == {44, 82, 114}
    assert stop_marks(20) == {5, 10} and stop_marks(1) == set()
