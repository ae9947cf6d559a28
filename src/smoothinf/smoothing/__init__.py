"""Smoothed inference (batched Monte Carlo votes) and L2 certification."""

from smoothinf.smoothing.certify import certified_accuracy, certify, predict_with_abstain
from smoothinf.smoothing.classifier import SmoothedClassifier
from smoothinf.smoothing.statistics import (
    ABSTAIN,
    binomial_two_sided_pvalue,
    check_abstain_vote,
    check_certifiable,
    clopper_pearson_lower,
)
from smoothinf.smoothing.votes import (
    VOTES,
    apply_vote,
    class_ranks,
    exponential_rank,
    reciprocal_rank,
    top_k,
)

__all__ = [
    "ABSTAIN",
    "VOTES",
    "SmoothedClassifier",
    "apply_vote",
    "binomial_two_sided_pvalue",
    "certified_accuracy",
    "certify",
    "check_abstain_vote",
    "check_certifiable",
    "class_ranks",
    "clopper_pearson_lower",
    "exponential_rank",
    "predict_with_abstain",
    "reciprocal_rank",
    "top_k",
]
