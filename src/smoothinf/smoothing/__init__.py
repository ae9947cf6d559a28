"""Smoothed inference (batched Monte Carlo votes) and L2 certification."""

from smoothinf.smoothing.certify import certify, predict_with_abstain
from smoothinf.smoothing.classifier import SmoothedClassifier
from smoothinf.smoothing.statistics import (
    ABSTAIN,
    CertifiedExample,
    average_certified_radius,
    binomial_two_sided_pvalue,
    certified_accuracy,
    check_abstain_vote,
    check_certifiable,
    clopper_pearson_lower,
    read_certify_log,
    summarize_certification,
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
    "CertifiedExample",
    "SmoothedClassifier",
    "apply_vote",
    "average_certified_radius",
    "binomial_two_sided_pvalue",
    "certified_accuracy",
    "certify",
    "check_abstain_vote",
    "check_certifiable",
    "class_ranks",
    "clopper_pearson_lower",
    "exponential_rank",
    "predict_with_abstain",
    "read_certify_log",
    "reciprocal_rank",
    "summarize_certification",
    "top_k",
]
