"""Cohen et al.'s PREDICT and CERTIFY for many examples at once (L2 randomized smoothing).

Guarantee (Cohen, Rosenfeld, Kolter 2019, Theorem 1): if ``certify`` returns class c with radius
R > 0, then with probability >= 1 - alpha over its noise draws, the hard-vote smoothed classifier
with Gaussian noise of std sigma returns c at every x' with ||x' - x||_2 < R. ``predict_with_abstain``
returns a class that differs from the hard-vote smoothed classifier's with probability <= alpha.

Both statistics hold only where they are derived: the radius sigma * Phi^-1(p_A) is the L2
certificate of *Gaussian* noise (uniform and Laplace noise certify other norms with other radii,
so ``certify`` refuses them), and the binomial test counts *hard votes* (rank-weight sums, summed
probabilities or logits are not binomial counts, so ``predict_with_abstain`` refuses other votes).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import beta, binom, norm

from smoothinf.errors import SmoothinfError
from smoothinf.noise.distributions import NoiseDistribution
from smoothinf.smoothing.classifier import SmoothedClassifier

ABSTAIN = -1


def check_certifiable(noise: str | NoiseDistribution) -> None:
    """Raise unless ``noise`` (a family name or a NoiseDistribution) is Gaussian, the only family
    ``certify``'s L2 radius holds for."""
    family = noise.family if isinstance(noise, NoiseDistribution) else noise
    if family != "gaussian":
        raise SmoothinfError(
            f"certify gives the L2 radius of Gaussian noise only; {family!r} noise has no certificate"
            " here (use --noise gaussian)"
        )


def check_abstain_vote(vote: str) -> None:
    """Raise unless ``vote`` is "hard": the binomial test of PREDICT is valid on vote counts only."""
    if vote != "hard":
        raise SmoothinfError(
            f"prediction with abstention (alpha) runs a binomial test on hard-vote counts; the {vote!r}"
            " vote's scores are not counts (use vote hard, or drop alpha)"
        )


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise SmoothinfError(f"alpha must lie in (0, 1), got {alpha}")


def clopper_pearson_lower(successes: np.ndarray, trials: int | np.ndarray, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion."""
    successes = np.asarray(successes, dtype=np.float64)
    trials = np.broadcast_to(np.asarray(trials, dtype=np.float64), successes.shape)
    out = beta.ppf(alpha, successes, trials - successes + 1)
    return np.where(successes > 0, out, 0.0)


def binomial_two_sided_pvalue(n_a: np.ndarray, n_b: np.ndarray) -> np.ndarray:
    """p-value of scipy.stats.binomtest(n_a, n_a + n_b, 0.5) (two-sided), vectorised."""
    n_a = np.asarray(n_a, dtype=np.int64)
    n_b = np.asarray(n_b, dtype=np.int64)
    k = np.minimum(n_a, n_b)
    p = 2.0 * binom.cdf(k, n_a + n_b, 0.5)
    return np.where(n_a == n_b, 1.0, np.minimum(1.0, p))


def predict_with_abstain(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    n: int,
    alpha: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PREDICT: (N,) int64 classes, -1 where the top two vote counts of n draws are not
    significantly different at level alpha (binomial test). Needs ``smoothed.vote == "hard"``."""
    check_abstain_vote(smoothed.vote)
    _check_alpha(alpha)
    counts = smoothed.vote_counts(x, generator, m=n)
    top2 = counts.topk(2, dim=1)
    n_a = top2.values[:, 0].round().long().cpu().numpy()
    n_b = top2.values[:, 1].round().long().cpu().numpy()
    pvalue = torch.from_numpy(binomial_two_sided_pvalue(n_a, n_b))
    pred = top2.indices[:, 0].clone()
    pred[(pvalue > alpha).to(pred.device)] = ABSTAIN
    return pred


def certify(
    model: torch.nn.Module,
    x: torch.Tensor,
    sigma: float,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    noise: str | NoiseDistribution = "gaussian",
) -> tuple[torch.Tensor, torch.Tensor]:
    """CERTIFY a batch x (N, C, H, W) in [0, 1]: returns (pred (N,) int64, radius (N,) float64).

    n0 draws select c_A, n fresh draws count n_A; p_A_lower is the one-sided Clopper-Pearson bound
    at level 1 - alpha; abstain (-1, 0.0) when p_A_lower < 1/2, else R = sigma * Phi^-1(p_A_lower)
    (L2, pixel units). Memory is bounded by ``batch_size`` rows per forward. ``noise`` must be
    "gaussian": the radius is the Gaussian L2 certificate (other families raise).
    """
    check_certifiable(noise)
    if sigma <= 0:
        raise SmoothinfError(f"certification needs sigma > 0, got {sigma}")
    for name, value in (("n0", n0), ("n", n)):
        if not isinstance(value, int) or value < 1:
            raise SmoothinfError(f"{name} must be an integer >= 1, got {value!r}")
    _check_alpha(alpha)
    smoothed = SmoothedClassifier(model, sigma, m=n0, vote="hard", noise=noise, batch_size=batch_size)
    c_a = smoothed.vote_counts(x, generator, m=n0).argmax(1)
    counts = smoothed.vote_counts(x, generator, m=n)
    n_a = counts.gather(1, c_a[:, None])[:, 0].round().cpu().numpy()
    p_lower = clopper_pearson_lower(n_a, n, alpha)
    radius = np.where(p_lower >= 0.5, sigma * norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)
    pred = c_a.cpu().clone()
    pred[torch.from_numpy(p_lower < 0.5)] = ABSTAIN
    return pred, torch.from_numpy(radius)


def certified_accuracy(
    radius: torch.Tensor | np.ndarray, correct: torch.Tensor | np.ndarray, thresholds
) -> np.ndarray:
    """Fraction of examples certified correct with radius >= each threshold (strict > 0 at 0 is
    not required: an abstain has correct = False)."""
    radius = np.asarray(radius, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    thresholds = np.asarray(list(thresholds), dtype=np.float64)
    if radius.size == 0:
        return np.zeros_like(thresholds)
    return ((radius[None, :] >= thresholds[:, None]) & correct[None, :]).mean(1)
