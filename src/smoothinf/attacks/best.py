"""Best-point selection: per example, the strongest point an attack visited, judged afresh.

An attack on a randomised defence follows noisy gradients, so its last iterate is not always its
best: a late step can undo an early success. Every run of PGD / EPGD / SmoothAdv / APGD keeps, per
example, the point of highest surrogate loss and the last point the surrogate saw misclassified
(``VisitedPoints``); ``judge_points`` then scores these candidates and the last iterate with a
*fresh* Monte Carlo estimate of the defended classifier (its own noise and m) and keeps the
strongest: misclassified first, then the smallest margin of the true class over the best other.

That one noisy judgement both picks the point and calls it a success, so its verdict is biased
towards success; ``confirm`` re-judges the chosen points with fresh draws before an attack stops
spending restarts, targets or queries on an example.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# judge(x (B,C,H,W), generator) -> class scores (B, K) (argmax = the defended prediction).
JudgeFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# score(x (B,C,H,W), y (B,)) -> class scores (B, K), each call with fresh draws of the randomness.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class VisitedPoints:
    """Candidates of one attack run over N examples: highest surrogate score and last surrogate success.

    ``update(adv, score, success)`` with adv (N,C,H,W), score (N,) (higher = stronger), success (N,) bool.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.best = x.clone()
        self.best_score = x.new_full((x.shape[0],), float("-inf"))
        self.fooled = x.clone()
        self.any_fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    @torch.no_grad()
    def update(self, adv: torch.Tensor, score: torch.Tensor, success: torch.Tensor) -> None:
        better = score > self.best_score
        self.best[better] = adv[better]
        self.best_score = torch.where(better, score, self.best_score)
        self.fooled[success] = adv[success]
        self.any_fooled |= success

    def candidates(self, last: torch.Tensor) -> list[torch.Tensor]:
        """[last iterate, best-score point, last surrogate success (the last iterate where none)]."""
        fooled = torch.where(self.any_fooled.view(-1, *([1] * (last.dim() - 1))), self.fooled, last)
        return [last, self.best, fooled]


def margins(
    scores: torch.Tensor, y: torch.Tensor, targeted: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(success (N,) bool, margin (N,))`` of class scores (N, K) for labels y (N,).

    Untargeted: success = argmax != y, margin = s_y - max_{j != y} s_j (negative once fooled).
    Targeted (y = targets): success = argmax == y, margin = max_{j != y} s_j - s_y.
    Ties break to the lowest class, as in ``SmoothedClassifier.predict``.
    """
    s_y = scores.gather(1, y[:, None])[:, 0]
    other = scores.scatter(1, y[:, None], float("-inf")).max(1).values
    pred = scores.argmax(1)
    if targeted:
        return pred == y, other - s_y
    return pred != y, s_y - other


@torch.no_grad()
def judge_scores(judge: nn.Module | JudgeFn, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Class scores (N, K) of the defended classifier: ``vote_counts`` of a SmoothedClassifier (fresh
    draws from ``generator``), else its forward."""
    counts = getattr(judge, "vote_counts", None)
    if callable(counts):
        return counts(x, generator).float()
    return judge(x).float()


@torch.no_grad()
def select_strongest(
    candidates: list[torch.Tensor],
    y: torch.Tensor,
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    targeted: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per example, the strongest of ``candidates`` (each (N,C,H,W)) by ``score_fn``'s class scores.

    All candidates are scored in one batch (C*N rows). Returns ``(x (N,C,H,W), success (N,) bool,
    margin (N,))``; among equals the earlier candidate wins.
    """
    n = y.shape[0]
    scores = score_fn(torch.cat(candidates))
    success, margin = margins(scores, y.repeat(len(candidates)), targeted)
    success, margin = success.view(len(candidates), n), margin.view(len(candidates), n)
    # Lexicographic key: a success first (the smallest margin among successes), else the smallest margin.
    pick_success = margin.masked_fill(~success, float("inf")).argmin(0)
    pick = torch.where(success.any(0), pick_success, margin.argmin(0))
    stacked = torch.stack(candidates)
    ar = torch.arange(n, device=y.device)
    return stacked[pick, ar], success[pick, ar], margin[pick, ar]


@torch.no_grad()
def confirm(
    points: torch.Tensor, y: torch.Tensor, hit: torch.Tensor, score_fn: ScoreFn, targeted: bool = False
) -> torch.Tensor:
    """``hit`` (N,) bool kept only where an independent judgement of ``points`` (N,C,H,W) with fresh
    draws also succeeds (``margins``); ``score_fn`` runs once, on the rows of ``hit`` only."""
    rows = hit.nonzero().squeeze(1)
    out = hit.clone()
    if rows.numel():
        out[rows] = margins(score_fn(points[rows], y[rows]), y[rows], targeted)[0]
    return out
