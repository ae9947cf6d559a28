"""Cohen et al.'s statistics for L2 randomized smoothing, on vote counts (no model here).

``clopper_pearson_lower`` bounds p_A from n_A of n hard votes (CERTIFY); ``binomial_two_sided_pvalue``
tests the top two counts (PREDICT). The checks refuse what the statistics do not cover: the radius
holds for Gaussian noise only, and the binomial test for hard-vote counts only.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta, binom

from smoothinf.errors import SmoothinfError
from smoothinf.noise.distributions import NoiseDistribution

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


def check_alpha(alpha: float) -> None:
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
