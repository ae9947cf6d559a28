"""Cohen et al.'s statistics for L2 randomized smoothing, on vote counts (no model here).

``clopper_pearson_lower`` bounds p_A from n_A of n hard votes (CERTIFY); ``binomial_two_sided_pvalue``
tests the top two counts (PREDICT). The checks refuse what the statistics do not cover: the radius
holds for Gaussian noise only, and the binomial test for hard-vote counts only.

Summaries of a certification run, as the literature reports them (Cohen et al.'s ``analyze.py``,
Zhai et al.'s ACR): ``certified_accuracy`` (fraction certified correct with radius >= r),
``average_certified_radius`` (mean of radius * correct, an abstention counting 0), and
``read_certify_log`` for Cohen's per-image TSV (``idx label predict radius correct time``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from typing import NamedTuple

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


class CertifiedExample(NamedTuple):
    """One row of Cohen et al.'s certification log: test index, label, predicted class (-1 =
    abstain), certified L2 radius (0 on abstain), correct (1 iff predict == label), seconds."""

    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    time: float


CERTIFY_LOG_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")


def _seconds(text: str) -> float:
    """Cohen's ``time`` column, ``str(datetime.timedelta)`` ("0:00:01.234567", "1 day, 0:00:02"),
    or plain seconds, as seconds."""
    days = 0.0
    if "day" in text:
        head, _, text = text.partition(",")
        days = float(head.split()[0])
    parts = [float(p) for p in text.strip().split(":")]
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return days * 86400 + seconds


def read_certify_log(path: str | os.PathLike) -> list[CertifiedExample]:
    """Rows of a certification log in Cohen et al.'s TSV format (header ``idx label predict radius
    correct time``, tab-separated; as written by their ``certify.py`` and the papers building on
    it). A row whose ``correct`` disagrees with ``predict == label`` is a SmoothinfError."""
    rows: list[CertifiedExample] = []
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CERTIFY_LOG_COLUMNS:
            raise SmoothinfError(
                f"{path}: not a certification log; the header must be {' '.join(CERTIFY_LOG_COLUMNS)},"
                f" got {header!r}"
            )
        for line, fields in enumerate(reader, start=2):
            if not fields:
                continue
            try:
                idx, label, predict, radius, correct, spent = fields
                row = CertifiedExample(
                    int(idx), int(label), int(predict), float(radius), int(correct), _seconds(spent)
                )
            except ValueError as exc:
                raise SmoothinfError(f"{path}:{line}: bad row {fields!r} ({exc})") from None
            if row.correct != int(row.predict == row.label):
                raise SmoothinfError(
                    f"{path}:{line}: correct {row.correct} but predict {row.predict}, label {row.label}"
                )
            rows.append(row)
    return rows


def _fields(row) -> tuple[int, float, bool]:
    """(predict, radius, correct) of a row: a CertifiedExample (or any object with those fields), a
    dict, or a (label, predict, radius, correct) tuple."""
    if isinstance(row, dict):
        return int(row["predict"]), float(row["radius"]), bool(row["correct"])
    if hasattr(row, "radius"):
        return int(row.predict), float(row.radius), bool(row.correct)
    _, predict, radius, correct = row
    return int(predict), float(radius), bool(correct)


def average_certified_radius(radius: Sequence[float] | np.ndarray, correct: Sequence | np.ndarray) -> float:
    """ACR (Zhai et al. 2020): mean over examples of radius * 1[correct]; an abstention (radius 0,
    not correct) and a misclassification count 0. Empty input: 0.0."""
    radius = np.asarray(radius, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    return float((radius * correct).mean()) if radius.size else 0.0


def certified_accuracy(
    radius: Sequence[float] | np.ndarray, correct: Sequence | np.ndarray, radii: Iterable[float]
) -> np.ndarray:
    """Certified accuracy at each of ``radii``: the fraction of examples that are correct with a
    certified radius >= r (Cohen et al.'s ``ApproximateAccuracy.at_radii``); at r = 0 this is the
    smoothed classifier's accuracy with abstention counted wrong."""
    radius = np.asarray(radius, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    radii = np.asarray(list(radii), dtype=np.float64)
    if radius.size == 0:
        return np.zeros_like(radii)
    return ((radius[None, :] >= radii[:, None]) & correct[None, :]).mean(1)


def summarize_certification(rows: Iterable, radii: Iterable[float] = (0.0, 0.5, 1.0, 1.5, 2.0)) -> dict:
    """``{"examples", "acr", "abstain", "certified_accuracy": {f"{r:g}": value}}`` of a certification
    run's rows: CertifiedExample rows, dicts, or (label, predict, radius, correct) tuples."""
    fields = [_fields(row) for row in rows]
    predict = np.asarray([f[0] for f in fields], dtype=np.int64)
    radius = np.asarray([f[1] for f in fields], dtype=np.float64)
    correct = np.asarray([f[2] for f in fields], dtype=bool)
    radii = [float(r) for r in radii]
    accuracy = certified_accuracy(radius, correct, radii)
    return {
        "examples": len(fields),
        "acr": average_certified_radius(radius, correct),
        "abstain": float((predict == ABSTAIN).mean()) if fields else 0.0,
        "certified_accuracy": {f"{r:g}": float(v) for r, v in zip(radii, accuracy, strict=True)},
    }


def wilson(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of ``successes / n`` (a sum of per-image P(correct) for a
    randomised row: then approximate)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
