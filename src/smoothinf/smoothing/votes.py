"""Vote functions of smoothed inference and rank-weight functions of the weighted vote.

A vote maps the logits of one noisy forward, shape (..., K), to per-class votes of the same shape:
hard = one-hot of the argmax (ties to the lowest class), weighted = w(rank) with rank 0 = top,
soft = softmax probabilities, logits = the raw logits (the reference code's "expectation").
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from smoothinf.errors import SmoothinfError

VOTES = ("hard", "weighted", "soft", "logits")
RankWeight = Callable[[torch.Tensor], torch.Tensor]


def exponential_rank(base: float = 2.0) -> RankWeight:
    """w(r) = base^-r over all classes (the reference code's weighting with base 2)."""
    if base <= 1:
        raise SmoothinfError(f"base must be > 1, got {base}")
    # A Python-number base: a CPU tensor base with CUDA ranks is a mixed-device pow.
    return lambda rank: torch.pow(float(base), -rank.float())


def top_k(k: int) -> RankWeight:
    """w(r) = 1[r < k]: each draw votes once for each of its top-k classes."""
    if k < 1:
        raise SmoothinfError(f"k must be >= 1, got {k}")
    return lambda rank: (rank < k).float()


def reciprocal_rank() -> RankWeight:
    """w(r) = 1 / (r + 1)."""
    return lambda rank: 1.0 / (rank.float() + 1.0)


def class_ranks(logits: torch.Tensor) -> torch.Tensor:
    """Rank of every class in each row of ``logits`` (..., K): 0 = largest, ties to the lower class."""
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
    return torch.argsort(order, dim=-1, stable=True)


def hard_votes(logits: torch.Tensor) -> torch.Tensor:
    """One-hot of the argmax of ``logits`` (..., K) (torch.argmax returns the first maximum)."""
    return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)


def apply_vote(logits: torch.Tensor, vote: str, weights: RankWeight | None = None) -> torch.Tensor:
    """Votes (..., K) of one forward's ``logits`` (..., K) under ``vote``."""
    if vote == "hard":
        return hard_votes(logits)
    if vote == "weighted":
        w = weights if weights is not None else exponential_rank(2.0)
        return w(class_ranks(logits)).to(device=logits.device, dtype=logits.dtype)
    if vote == "soft":
        return torch.softmax(logits, dim=-1)
    if vote == "logits":
        return logits
    raise SmoothinfError(f"unknown vote {vote!r}; choose one of {', '.join(VOTES)}")


def accumulate_votes(
    total: torch.Tensor | None, logits: torch.Tensor, vote: str, weights: RankWeight | None = None
) -> torch.Tensor:
    """``total`` (N, K) plus the votes of ``logits`` (d, N, K) summed over the d draws; a new tensor
    when ``total`` is None. Hard votes are counted with one scatter-add (no one-hot tensor)."""
    if vote == "hard":
        pred = logits.argmax(-1).T  # (N, d); argmax returns the first maximum
        if total is None:
            total = torch.zeros(logits.shape[1:], dtype=torch.float32, device=logits.device)
        return total.scatter_add_(1, pred, torch.ones(pred.shape, dtype=total.dtype, device=total.device))
    votes = apply_vote(logits.float(), vote, weights).sum(0)
    return votes if total is None else total + votes
