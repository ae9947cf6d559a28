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


@pytest.mark.parametrize("attacks", [1, 6])
@pytest.mark.parametrize("cascade", [False, True])
def test_the_worst_case_of_attacks_that_change_nothing_is_the_closed_form_p_correct(attacks, cascade):
    """Attacks that return x: the true worst case is mean p. The minimum of 1 + attacks estimates of
    16 judgements each is biased low (0.34 in expectation at p = 0.5 with six attacks); choosing on one
    set of judgements and valuing the choice on fresh ones is not."""
    model, x, y, p = _two_class(200)
    smoothed = SmoothedClassifier(model, SIGMA, 1, "hard")
    named = {f"none{i}": identity for i in range(attacks)}
    res = robust_accuracy(
        smoothed, x, y, named, torch.Generator().manual_seed(3), judgements=16, cascade=cascade
    )
    truth = float(p.mean())
    se = float((p * (1 - p) / 16).sum().sqrt()) / len(p)  # of a mean of 200 fresh 16-judgement estimates
    assert abs(res.worst_case_accuracy - truth) < 3.5 * se
    assert res.clean_accuracy == pytest.approx(truth, abs=3.5 * se)
    # the biased minimum of the selection judgements lies clearly below
    biased = float(res.worst.selection.mean())
    assert biased < truth - (0.03 if attacks == 1 else 0.08)
    assert res.robust.dtype == torch.float32 and 0 < res.robust.min() < res.robust.max() <= 1
    for name in named:  # each attack alone (no cascade) or the worst case so far (cascade): unbiased
        assert res.accuracy[name] == pytest.approx(truth, abs=4 * se)


def test_judging_once_is_unbiased_for_the_chosen_point():
    """With one judgement per point an example whose clean judgement failed is never attacked, and
    the chosen point is valued by a second, independent judgement (not by the failed one)."""
    model, x, y, p = _two_class(200)
    smoothed = SmoothedClassifier(model, SIGMA, 1, "hard")
    attacks = {f"none{i}": identity for i in range(5)}
    once = robust_accuracy(smoothed, x, y, attacks, torch.Generator().manual_seed(3), judgements=1)
    truth, biased = float(p.mean()), float((p**6).mean())
    assert once.worst_case_accuracy > biased + 0.3
    assert once.worst_case_accuracy == pytest.approx(truth, abs=0.1)


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


def _weight_noise_model(alpha: float = 1.5) -> nn.Module:
    """A 3-class PNI-W linear model on 1x4x4 images whose weight noise flips many decisions."""
    from smoothinf.noise import inject_noise

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    inject_noise(model, "pni-w", init=alpha)
    return model.eval()


def _separate_forwards(model: nn.Module, x: torch.Tensor, y: torch.Tensor, j: int) -> torch.Tensor:
    """The reference: j whole-batch forwards, each with one fresh weight-noise draw."""
    torch.manual_seed(5)
    with torch.no_grad():
        return sum((model(x).argmax(1) == y).float() for _ in range(j)) / j


def test_each_judgement_of_a_weight_noise_model_gets_its_own_weight_noise_draw():
    model = _weight_noise_model()
    x = torch.rand(120, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(120, dtype=torch.long)
    ref = _separate_forwards(model, x, y, 400)  # P(correct) per example, standard error <= 0.025
    fractional = ((ref > 0.05) & (ref < 0.95)).sum().item()
    assert fractional > 30
    for rows in (1, 7, 1024):
        runs = [
            judged_correct(model, x, y, torch.Generator().manual_seed(s), judgements=16, batch_size=rows)
            for s in range(8)
        ]
        # each estimate is a mean of 16 independent judgements: fractional where P(correct) is
        assert all(((est > 0) & (est < 1)).sum().item() > 0.5 * fractional for est in runs)
        # same per-example distribution whatever the chunk (128 judgements against 400)
        pooled = torch.stack(runs).mean(0)
        assert (pooled - ref).abs().max() < 0.16
        assert float(pooled.mean()) == pytest.approx(float(ref.mean()), abs=0.025)
    again = judged_correct(model, x, y, torch.Generator().manual_seed(2), judgements=16, batch_size=7)
    first = judged_correct(model, x, y, torch.Generator().manual_seed(2), judgements=16, batch_size=7)
    assert torch.equal(again, first)  # a fixed seed gives the same numbers
    torch.manual_seed(123)  # the noise comes from the generator, not torch's global RNG
    assert torch.equal(judged_correct(model, x, y, torch.Generator().manual_seed(2), 16, batch_size=7), again)


def test_judgements_of_a_smoothed_weight_noise_model_are_independent():
    """J votes of a SmoothedClassifier over a weight-noise model use J * m distinct weight draws."""
    model = _weight_noise_model()
    x = torch.rand(200, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(200, dtype=torch.long)
    ref = _separate_forwards(model, x, y, 400)
    smoothed = SmoothedClassifier(model, 0.0, 1, "hard")
    runs = [judged_correct(smoothed, x, y, torch.Generator().manual_seed(s), judgements=16) for s in range(8)]
    fractional = ((ref > 0.05) & (ref < 0.95)).sum().item()
    assert all(((est > 0) & (est < 1)).sum().item() > 0.5 * fractional for est in runs)
    # the examples of one draw share its weight noise (as m separate forwards): pool 8 seeds
    assert float(torch.stack(runs).mean()) == pytest.approx(float(ref.mean()), abs=0.025)


def test_a_third_party_stochastic_model_is_detected_and_judged_as_randomised():
    from smoothinf.attacks import detect_randomised

    class NoisyLogits(nn.Module):  # randomness of its own, none of the library's noise layers
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(16, 2)

        def forward(self, x):
            z = self.lin(x.flatten(1))
            return z + 2.0 * torch.randn_like(z)

    torch.manual_seed(0)
    model = NoisyLogits().eval()
    x = torch.rand(100, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(100, dtype=torch.long)
    assert not is_randomised(model)
    assert detect_randomised(model, x) and is_randomised(model)
    est = judged_correct(model, x, y, torch.Generator().manual_seed(2), judgements=16)
    assert ((est > 0) & (est < 1)).sum().item() > 50
    again = judged_correct(model, x, y, torch.Generator().manual_seed(2), judgements=16)
    assert torch.equal(est, again)  # the global RNG is seeded from the generator
    fresh = NoisyLogits().eval()  # robust_accuracy detects it too
    res = robust_accuracy(fresh, x, y, {"none": identity}, torch.Generator().manual_seed(3), judgements=16)
    assert 0 < res.robust.min() < res.robust.max() and is_randomised(fresh)
    declared = NoisyLogits().eval()
    declared.smoothinf_randomised = False  # the user's declaration wins over the probe
    assert not detect_randomised(declared, x)
