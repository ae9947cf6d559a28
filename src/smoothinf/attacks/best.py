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


# Bytes of visited points a ``VisitedPoints(shared=True)`` holds by reference before it resolves them
# (4 MiB: all 20 iterates of a 64-image MNIST PGD-20; larger batches resolve every few steps, which
# measured as fast as holding them all, without the memory).
SHARED_POINTS_BYTES = 2**22


class VisitedPoints:
    """Candidates of one attack run over N examples: highest surrogate score and last surrogate success.

    ``update(adv, score, success)`` with adv (N,C,H,W), score (N,) (higher = stronger), success (N,) bool.
    By default each update copies the rows it keeps (``torch.where`` into kept buffers: no host sync),
    so the caller may change ``adv`` in place afterwards. ``shared=True`` is for a caller that never
    does: the points are then held by reference and resolved in one pass when the candidates are
    asked for (or once they hold ``SHARED_POINTS_BYTES``), with the same result as update by update.
    Given ``scores`` (N, K), the surrogate's class scores at ``adv``, it also keeps those of the two
    points (``candidate_scores``).
    """

    def __init__(self, x: torch.Tensor, shared: bool = False) -> None:
        self.best = x.clone()
        self.best_score = x.new_full((x.shape[0],), float("-inf"))
        self.fooled = x.clone()
        self.any_fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self._rows = (-1,) + (1,) * (x.dim() - 1)
        # class scores at best / fooled: None until every update passes them (then kept per row)
        self.best_scores: torch.Tensor | None = None
        self.fooled_scores: torch.Tensor | None = None
        self._scored = True  # every update so far came with scores
        self._shared = shared
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    @torch.no_grad()
    def update(
        self,
        adv: torch.Tensor,
        score: torch.Tensor,
        success: torch.Tensor,
        scores: torch.Tensor | None = None,
    ) -> None:
        self._scored = self._scored and scores is not None
        if self._shared:
            self._pending.append((adv, score, success, scores))
            if len(self._pending) * adv.numel() * adv.element_size() >= SHARED_POINTS_BYTES:
                self._resolve()
            return
        better = score > self.best_score
        torch.where(better.view(self._rows), adv, self.best, out=self.best)
        self.best_score = torch.where(better, score, self.best_score)
        torch.where(success.view(self._rows), adv, self.fooled, out=self.fooled)
        self.any_fooled |= success
        self._keep_scores(better, scores, success, scores)

    def _keep_scores(
        self,
        better: torch.Tensor,
        best_scores: torch.Tensor | None,
        success: torch.Tensor,
        fooled_scores: torch.Tensor | None,
    ) -> None:
        """Keep the class scores of the rows that got a new best point or a new success."""
        if not self._scored or best_scores is None or fooled_scores is None:
            self.best_scores = self.fooled_scores = None
            return
        if self.best_scores is None or self.fooled_scores is None:  # rows never kept stay NaN
            self.best_scores = torch.full_like(best_scores, float("nan"))
            self.fooled_scores = torch.full_like(fooled_scores, float("nan"))
        torch.where(better[:, None], best_scores, self.best_scores, out=self.best_scores)
        torch.where(success[:, None], fooled_scores, self.fooled_scores, out=self.fooled_scores)

    @torch.no_grad()
    def _resolve(self) -> None:
        """Apply the held updates at once: per example the first of the highest scores (if above the
        kept one; NaN never wins) and the last success, as successive updates would keep them."""
        if not self._pending:
            return
        advs, score, success, scores = zip(*self._pending, strict=True)
        self._pending = []
        score, success = torch.stack(score), torch.stack(success)  # (P, N)
        top, first = score.masked_fill(score.isnan(), float("-inf")).max(0)
        better = top > self.best_score
        hit = success.any(0)
        last = success.shape[0] - 1 - success.flip(0).to(torch.uint8).argmax(0)
        ar = torch.arange(score.shape[1], device=score.device)
        self.best_score = torch.where(better, score[first, ar], self.best_score)
        self.any_fooled |= hit
        # copy each row from the update that won it, visiting only the updates that won some row
        for s in torch.cat([first[better], last[hit]]).unique().tolist():
            for kept, won in ((self.best, better & (first == s)), (self.fooled, hit & (last == s))):
                rows = won.nonzero().squeeze(1)
                if rows.numel():
                    kept.index_copy_(0, rows, advs[s].index_select(0, rows))
        if self._scored:
            stacked = torch.stack(scores)  # (P, N, K)
            self._keep_scores(better, stacked[first, ar], hit, stacked[last, ar])
        else:
            self._keep_scores(better, None, hit, None)

    def last_success(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(last surrogate success (N,C,H,W), whether there was one (N,) bool) so far."""
        self._resolve()
        return self.fooled, self.any_fooled

    def candidates(self, last: torch.Tensor) -> list[torch.Tensor]:
        """[last iterate, best-score point, last surrogate success (the last iterate where none)]."""
        self._resolve()
        fooled = torch.where(self.any_fooled.view(self._rows), self.fooled, last)
        return [last, self.best, fooled]

    @torch.no_grad()
    def candidate_scores(self, last_scores: torch.Tensor) -> list[torch.Tensor] | None:
        """The class scores (N, K) of ``candidates(last)`` given those of the last iterate: the scores
        every ``update`` passed, kept with the points; None where some update passed none or some
        example's best point is still its start (a NaN or -inf score at every step)."""
        self._resolve()
        if self.best_scores is None or not bool((self.best_score > float("-inf")).all()):
            return None
        fooled = torch.where(self.any_fooled[:, None], self.fooled_scores, last_scores)
        return [last_scores, self.best_scores, fooled]


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
    known: list[torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per example, the strongest of ``candidates`` (each (N,C,H,W)) by ``score_fn``'s class scores.

    All candidates are scored in one batch (C*N rows), except those whose class scores (N, K) are
    given in ``known`` (aligned with ``candidates``, None where unknown): a deterministic scorer's
    scores recorded when the point was visited (``VisitedPoints.candidate_scores``).
    Returns ``(x (N,C,H,W), success (N,) bool, margin (N,))``; among equals the earlier candidate wins.
    """
    n, c = y.shape[0], len(candidates)
    stacked = torch.cat(candidates).view(c, n, *candidates[0].shape[1:])
    if known is None:
        scores = score_fn(stacked.view(c * n, *candidates[0].shape[1:]))
    else:
        todo = [p for p, s in zip(candidates, known, strict=True) if s is None]
        fresh = iter(score_fn(torch.cat(todo)).split(n) if todo else ())
        scores = torch.cat([s if s is not None else next(fresh) for s in known])
    success, margin = margins(scores, y.repeat(c), targeted)
    success, margin = success.view(c, n), margin.view(c, n)
    # Lexicographic key: a success first (the smallest margin among successes), else the smallest margin.
    pick_success = margin.masked_fill(~success, float("inf")).argmin(0)
    pick = torch.where(success.any(0), pick_success, margin.argmin(0))
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
