"""SmoothedClassifier.certify and .predict(alpha=...): Cohen et al.'s CERTIFY / PREDICT as methods.

A 2-class linear classifier f(x) = argmax (0, w.x + b) under Gaussian noise of std sigma has
p_1(x) = Phi((w.x + b) / (sigma ||w||)), so an input at L2 distance d from the boundary has
p_A = Phi(d / sigma) and the exact certified radius sigma * Phi^-1(p_A) = d.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from smoothinf.errors import SmoothinfError
from smoothinf.smoothing import SmoothedClassifier, certify, clopper_pearson_lower, predict_with_abstain

SHAPE = (1, 4, 4)  # 16 pixels
SIGMA = 0.25


def linear_at_distances(dist: list[float], seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """A linear 2-class model (logit 0 for class 0, w.x + b for class 1) and inputs x (N, 1, 4, 4)
    in [0, 1] at signed L2 distances ``dist`` (pixels) from its boundary (> 0: class 1)."""
    w = torch.randn(16, generator=torch.Generator().manual_seed(seed))
    unit = w / w.norm()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(16), w]))
        model[1].bias.copy_(torch.tensor([0.0, -0.5 * float(w.sum())]))  # boundary through x = 0.5
    x = 0.5 + torch.tensor(dist)[:, None] * unit
    return model, x.reshape((len(dist),) + SHAPE)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("batch_size", [None, 48])
def test_method_certify_equals_function_certify(batch_size):
    model, x = linear_at_distances([0.3, -0.1, 0.02, -0.5, 0.0])
    smoothed = SmoothedClassifier(model, SIGMA, m=7, batch_size=batch_size)
    pred, radius = smoothed.certify(x, n0=50, n=3000, alpha=0.001, generator=gen(1))
    ref_pred, ref_radius = certify(model, x, SIGMA, 50, 3000, 0.001, batch_size, gen(1))
    assert pred.dtype == torch.int64 and radius.dtype == torch.float64
    assert torch.equal(pred, ref_pred) and torch.equal(radius, ref_radius)
    assert pred.tolist()[:2] == [1, 0] and pred[4] == -1 and radius[4] == 0.0
    # An explicit batch_size overrides the classifier's; the draws, hence the answer, are the same.
    again = smoothed.certify(x, n0=50, n=3000, alpha=0.001, generator=gen(1), batch_size=5)
    assert torch.equal(again[0], pred) and torch.equal(again[1], radius)


def test_method_certify_radius_matches_closed_form():
    dist = np.array([0.05, -0.15, 0.3, -0.45])
    model, x = linear_at_distances(dist.tolist(), seed=3)
    n, alpha = 100_000, 0.001
    pred, radius = SmoothedClassifier(model, SIGMA).certify(x, n0=100, n=n, alpha=alpha, generator=gen(4))
    assert pred.tolist() == [1, 0, 1, 0]
    p_a = norm.cdf(np.abs(dist) / SIGMA)  # 0.58 .. 0.96
    expected = SIGMA * norm.ppf(clopper_pearson_lower(np.round(n * p_a), n, alpha))
    # 5 binomial standard deviations of n_A / n, carried through R = sigma * Phi^-1(p).
    tol = 5 * SIGMA * np.sqrt(p_a * (1 - p_a) / n) / norm.pdf(norm.ppf(p_a))
    assert np.all(np.abs(radius.numpy() - expected) <= tol), (radius, expected, tol)
    # The 1 - alpha lower bound keeps the radius just below the exact distance (within 0.02 pixels).
    assert np.all(radius.numpy() < np.abs(dist)) and np.all(np.abs(dist) - radius.numpy() < 0.02)


def test_predict_with_alpha_abstains_at_the_boundary_only():
    model, x = linear_at_distances([0.0, 0.5, -0.5], seed=5)
    smoothed = SmoothedClassifier(model, SIGMA, m=2000)
    pred = smoothed.predict(x, gen(6), alpha=0.001)
    assert pred.dtype == torch.int64 and pred.tolist() == [-1, 1, 0]
    # Default n is m; an explicit n overrides it; both are the function's PREDICT on the same draws.
    assert torch.equal(pred, predict_with_abstain(smoothed, x, 2000, 0.001, gen(6)))
    fewer = smoothed.predict(x, generator=gen(6), alpha=0.001, n=300)
    assert torch.equal(fewer, predict_with_abstain(smoothed, x, 300, 0.001, gen(6)))
    assert fewer.tolist() == [-1, 1, 0]


def test_predict_without_alpha_is_unchanged():
    model, x = linear_at_distances([0.0, 0.01, -0.02, 0.05, -0.3], seed=7)
    smoothed = SmoothedClassifier(model, SIGMA, m=15)
    counts = smoothed.vote_counts(x, gen(8))
    assert counts.sum().item() == 5 * 15
    plain = smoothed.predict(x, gen(8))  # positional generator, as the library calls it
    assert torch.equal(plain, counts.argmax(1)) and torch.equal(smoothed.predict(x, generator=gen(8)), plain)
    assert plain[3:].tolist() == [1, 0]
    # n without alpha: the argmax of n draws' votes.
    assert torch.equal(smoothed.predict(x, gen(8), n=40), smoothed.vote_counts(x, gen(8), m=40).argmax(1))


@pytest.mark.parametrize("vote", ["soft", "weighted", "logits"])
def test_certify_and_abstain_need_hard_votes(vote):
    model, x = linear_at_distances([0.1])
    smoothed = SmoothedClassifier(model, SIGMA, m=4, vote=vote)
    with pytest.raises(SmoothinfError, match="hard-vote counts"):
        smoothed.certify(x, n0=10, n=10, alpha=0.01)
    with pytest.raises(SmoothinfError, match="hard-vote counts"):
        smoothed.predict(x, alpha=0.01)


@pytest.mark.parametrize("noise", ["uniform", "laplace"])
def test_certify_needs_gaussian_noise(noise):
    model, x = linear_at_distances([0.1])
    with pytest.raises(SmoothinfError, match="Gaussian noise only"):
        SmoothedClassifier(model, SIGMA, noise=noise).certify(x, n0=10, n=10, alpha=0.01)


def test_certify_checks_its_arguments():
    model, x = linear_at_distances([0.1])
    with pytest.raises(SmoothinfError, match="sigma > 0"):
        SmoothedClassifier(model, 0.0).certify(x, n0=10, n=10, alpha=0.01)
    with pytest.raises(SmoothinfError, match="n0 must be"):
        SmoothedClassifier(model, SIGMA).certify(x, n0=0, n=10, alpha=0.01)
    with pytest.raises(SmoothinfError, match="alpha must lie"):
        SmoothedClassifier(model, SIGMA).predict(x, alpha=1.5)
