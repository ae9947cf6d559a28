"""Probability judging of randomised defences: each point judged J times, correctness = fraction right."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from smoothinf.attacks import is_randomised, judged_correct, robust_accuracy
from smoothinf.errors import ConfigError, SmoothinfError
from smoothinf.evaluation import EvalConfig
from smoothinf.smoothing import SmoothedClassifier

SIGMA = 0.2


def _two_class(n: int = 200):
    """A 2-class linear model on 1x4x4 images and n points with margins spread so that the one-draw
    smoothed classifier is right with probabilities between about 0.55 and 0.98."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 16) * 0.25)
        lin.bias.zero_()
    model = nn.Sequential(nn.Flatten(), lin).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((4 * n, 1, 4, 4), generator=gen)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = lin.weight[1] - lin.weight[0]
    margin = (z[:, 1] - z[:, 0]).abs()
    p = 0.5 * (1 + torch.erf(margin / (SIGMA * w.norm() * math.sqrt(2))))  # P(one draw right)
    keep = ((p > 0.55) & (p < 0.98)).nonzero().squeeze(1)[:n]
    return model, x[keep], y[keep], p[keep].detach()


def identity(xb, yb, generator=None):
    return xb.clone()


def test_judged_probability_matches_the_closed_form_of_a_smoothed_linear_classifier():
    model, x, y, p = _two_class(40)
    smoothed = SmoothedClassifier(model, SIGMA, 1, "hard")
    est = judged_correct(smoothed, x, y, torch.Generator().manual_seed(2), judgements=2000)
    se = (p * (1 - p) / 2000).sqrt()
    assert est.shape == (40,) and est.dtype == torch.float32
    assert ((est - p).abs() <= 4 * se + 1e-3).all()
    assert est.min() < 0.7 < est.max()  # genuinely fractional: not a 0/1 judgement


def test_judging_once_per_attack_biases_the_worst_case_low_and_judging_many_times_does_not():
    """Five attacks that do nothing: the true robust accuracy is the clean one, mean p. One judgement
    per point makes an example's minimum over six judgements 1 only with probability p**6."""
    model, x, y, p = _two_class(200)
    smoothed = SmoothedClassifier(model, SIGMA, 1, "hard")
    attacks = {f"none{i}": identity for i in range(5)}
    once = robust_accuracy(smoothed, x, y, attacks, torch.Generator().manual_seed(3), judgements=1)
    many = robust_accuracy(smoothed, x, y, attacks, torch.Generator().manual_seed(3), judgements=400)
    truth, biased = float(p.mean()), float((p**6).mean())
    assert once.worst_case_accuracy == pytest.approx(biased, abs=0.06)
    assert once.worst_case_accuracy < truth - 0.15
    # the minimum of six estimates, each with a standard error of at most 0.025
    assert truth - 0.06 < many.worst_case_accuracy <= truth + 0.01
    assert many.clean_accuracy == pytest.approx(truth, abs=0.02)
    assert many.robust.dtype == torch.float32 and 0 < many.robust.min() < many.robust.max() <= 1
    # per-attack accuracies stay below the clean one and, without a cascade, near it
    for name in attacks:
        assert many.accuracy[name] <= many.clean_accuracy + 1e-6
        assert many.accuracy[name] == pytest.approx(truth, abs=0.04)


def test_a_deterministic_defence_is_judged_with_one_forward_per_point():
    rows = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(16, 3)

        def forward(self, x):
            rows.append(x.shape[0])
            return self.lin(x.flatten(1))

    model = Counting().eval()
    x = torch.rand(10, 1, 4, 4)
    y = model(x).argmax(1)
    rows.clear()
    assert not is_randomised(model) and not is_randomised(SmoothedClassifier(model, 0.0, 4))
    assert is_randomised(SmoothedClassifier(model, 0.1, 4))
    ok = judged_correct(model, x, y, judgements=16)
    assert sum(rows) == 10 and ok.tolist() == [1.0] * 10
    res = robust_accuracy(model, x, y, {"none": identity}, judgements=16)
    assert res.worst_case_accuracy == 1.0 and res.robust.tolist() == [1.0] * 10


def test_a_bad_judgement_count_is_a_clear_error():
    model, x, y, _ = _two_class(4)
    with pytest.raises(SmoothinfError, match="judgements must be an integer >= 1"):
        judged_correct(SmoothedClassifier(model, SIGMA, 1), x, y, judgements=0)
    with pytest.raises(SmoothinfError, match="not 2.5"):
        robust_accuracy(SmoothedClassifier(model, SIGMA, 1), x, y, {}, judgements=2.5)
    with pytest.raises(ConfigError, match="judgements must be >= 1"):
        EvalConfig(checkpoint="c", judgements=0).validate()
    assert EvalConfig(checkpoint="c").fingerprint() != EvalConfig(checkpoint="c", judgements=4).fingerprint()
