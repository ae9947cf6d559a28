"""Cohen et al.'s PREDICT and CERTIFY for many examples at once (L2 randomized smoothing).

Guarantee (Cohen, Rosenfeld, Kolter 2019, Theorem 1): if ``certify`` returns class c with radius
R > 0, then with probability >= 1 - alpha over its noise draws, the hard-vote smoothed classifier
with Gaussian noise of std sigma returns c at every x' with ||x' - x||_2 < R. ``predict_with_abstain``
returns a class that differs from the hard-vote smoothed classifier's with probability <= alpha.

Both statistics hold only where they are derived: the radius sigma * Phi^-1(p_A) is the L2
certificate of *Gaussian* noise (uniform and Laplace noise certify other norms with other radii,
so ``certify`` refuses them), and the binomial test counts *hard votes* (rank-weight sums, summed
probabilities or logits are not binomial counts, so ``predict_with_abstain`` refuses other votes).

Draws: given ``index`` (each example's index in its data split) and ``seed``, an example's draws are
keyed by (seed, stage, index, draw) (``smoothinf.noise.keyed``) and its result does not depend on
the batch size nor on the other examples; given a ``generator`` instead, the draws follow batch order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from smoothinf.errors import SmoothinfError
from smoothinf.noise.distributions import NoiseDistribution
from smoothinf.smoothing.classifier import SmoothedClassifier
from smoothinf.smoothing.statistics import check_certifiable

__all__ = ["certify", "predict_with_abstain"]


def predict_with_abstain(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    n: int,
    alpha: float,
    generator: torch.Generator | None = None,
    *,
    index: torch.Tensor | Sequence[int] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """PREDICT: (N,) int64 classes, -1 where the top two vote counts of n draws are not
    significantly different at level alpha (binomial test). Needs ``smoothed.vote == "hard"``
    (``SmoothedClassifier.predict(x, alpha=alpha, n=n, index=index, seed=seed)``)."""
    return smoothed.predict(x, generator, alpha=alpha, n=n, index=index, seed=seed)


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
    *,
    index: torch.Tensor | Sequence[int] | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CERTIFY a batch x (N, C, H, W) in [0, 1] with ``model`` smoothed at ``sigma`` (pixel units):
    returns (pred (N,) int64, -1 = abstain; radius (N,) float64), as ``SmoothedClassifier.certify``.
    Memory is bounded by ``batch_size`` rows per forward; ``noise`` must be "gaussian". ``index``
    (N,) int64 and ``seed``: draws keyed by example (a row independent of the batch), else from
    ``generator`` in batch order."""
    check_certifiable(noise)
    if sigma <= 0:
        raise SmoothinfError(f"certification needs sigma > 0, got {sigma}")
    smoothed = SmoothedClassifier(model, sigma, m=1, vote="hard", noise=noise, batch_size=batch_size)
    return smoothed.certify(x, n0, n, alpha, generator, index=index, seed=seed)
