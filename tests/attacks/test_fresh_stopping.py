"""Restarts, APGD-T targets and NAttack stop on a randomised defence only on a fresh judgement.

The noisy vote that picks an example's strongest point is biased towards success; an example may
leave the later runs (or NAttack's queries) only once a second judgement with fresh draws agrees.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from smoothinf.attacks import APGD, PGD, NAttack

Q = 0.3  # probability that one forward of ``Flip`` is wrong


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Flip(nn.Module):
    """K classes; class 0 (logit 5) whatever the input, but class 1 with probability ``q``,
    independently per row and forward. Follows the per-draw contract (``num_draws``; noise from
    ``noise_generator`` when set, else the global generator), so ``noise_layers`` finds it.
    ``rows`` counts the rows of every forward."""

    def __init__(self, q: float = Q, k: int = 4) -> None:
        super().__init__()
        self.q, self.k = q, k
        self.num_draws = 1
        self.noise_generator: torch.Generator | None = None
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        flip = torch.rand(x.shape[0], generator=self.noise_generator) < self.q
        z = torch.zeros(x.shape[0], self.k)
        z[:, 0] = 5.0 * ~flip
        z[:, 1] = 5.0 * flip
        return z + 1e-3 * x.flatten(1).mean(1, keepdim=True) * torch.arange(self.k)  # a gradient to follow


def record_runs(atk: PGD) -> list[int]:
    """Examples (rows) per run of ``atk`` (restart or APGD-T target), filled as it runs."""
    sizes: list[int] = []
    inner = atk._run

    def run(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, r: int) -> list[torch.Tensor]:
        sizes.append(x.shape[0])
        return inner(x, y, g, r)

    atk._run = run  # type: ignore[method-assign]
    return sizes


def assert_binomial(observed: int, n: int, p: float) -> None:
    """``observed`` is a plausible Binomial(n, p) draw: within 4 standard deviations of n p."""
    sd = math.sqrt(n * p * (1 - p))
    assert abs(observed - n * p) <= 4 * sd, (observed, n, p, n * p)


def stop_rate(candidates: int) -> float:
    """P(an example stops after a run): one of ``candidates`` noisy votes wrong, then a fresh one too."""
    return (1 - (1 - Q) ** candidates) * Q


# --------------------------------------------------------------------------- PGD / APGD / APGD-T
@pytest.mark.parametrize(
    "make",
    [
        lambda m: PGD(m, 0.1, steps=1, restarts=5),
        lambda m: PGD(m, 0.1, steps=1, restarts=5, targeted=True),
        lambda m: APGD(m, 0.1, steps=2, loss="dlr", target_classes=3),
    ],
    ids=["pgd-restarts", "pgd-targeted", "apgd-t"],
)
def test_runs_stop_only_on_a_fresh_judgement(make):
    """Each run judges 3 candidates (4 after the first: the best so far joins): an example stops with
    probability (1 - 0.7^c) x 0.3 (the fresh vote), not 1 - 0.7^c (old: after run 1, 0.657)."""
    n = 600
    model = Flip()
    atk = make(model)
    targeted = atk.targeted
    x = torch.full((n, 1, 2, 2), 0.5)
    y = torch.full((n,), 1 if targeted else 0)  # targeted: success = the flipped class 1
    sizes = record_runs(atk)
    atk(x, y, gen(0))
    runs = 3 if isinstance(atk, APGD) else 5
    assert len(sizes) == runs and sizes[0] == n
    for r in range(1, runs):  # rows of run r: the rows of run r - 1 not stopped by the fresh rule
        assert_binomial(sizes[r - 1] - sizes[r], sizes[r - 1], stop_rate(3 if r == 1 else 4))
    assert sizes[1] > 0.7 * n  # the single selecting vote alone would leave 0.343 n (old code)


class ScriptedJudge:
    """A random-looking judge (a plain callable): the picking vote calls every candidate a success;
    the fresh confirmation agrees only for even examples (id = round(10 x) - 1, x constant per image).
    ``rows`` lists the rows of every call."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        example = (x.flatten(1).mean(1) * 10).round().long() - 1
        confirming = len(self.rows) % 2 == 0  # calls alternate: pick, confirm, pick, ...
        wrong = example % 2 == 0 if confirming else torch.ones_like(example, dtype=torch.bool)
        return torch.stack([(~wrong).float(), wrong.float()], 1)


def test_scripted_judge_stops_exactly_the_confirmed_examples():
    n = 6
    x = torch.arange(1, n + 1).float().div(10).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    y = torch.zeros(n, dtype=torch.long)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    judge = ScriptedJudge()
    atk = PGD(model, 0.01, alpha=0.0, steps=1, restarts=3, judge=judge)
    sizes = record_runs(atk)
    atk(x, y, gen(0))
    # run 1: all 6 picked as fooled, the fresh vote confirms the 3 even ones; runs 2, 3: the odd 3.
    assert sizes == [6, 3, 3]
    # picks: 3 candidates x 6, 4 x 3, 4 x 3; confirmations: the 6 hits, then 3; none after the last run.
    assert judge.rows == [18, 6, 12, 3, 12]


class CountingJudge(nn.Module):
    """A deterministic judge (class 1 iff the first pixel > 0.5) counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        wrong = (x.flatten(1)[:, 0] > 0.5).float()
        return torch.stack([1 - wrong, wrong], 1)


def test_deterministic_judge_is_not_asked_again():
    """A deterministic judge's fresh verdict equals its pick: one call per run, as before."""
    x = torch.full((64, 1, 1, 2), 0.5)
    y = torch.zeros(64, dtype=torch.long)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2)).eval()
    judge = CountingJudge()
    atk = PGD(model, 0.25, alpha=0.0, steps=1, restarts=4, judge=judge)
    sizes = record_runs(atk)
    out = atk(x, y, gen(4))
    assert judge.calls == len(sizes) == 4
    # random starts push pixel 0 above 0.5 half the time: about 64, 32, 16, 8 rows, each a binomial
    for r in range(1, 4):
        assert_binomial(sizes[r - 1] - sizes[r], sizes[r - 1], 0.5)
    fooled = out[:, 0, 0, 0] > 0.5
    assert int(fooled.sum()) > 64 - sizes[-1]  # every stopped example is fooled, and some of the last run


# ------------------------------------------------------------------------------------------ NAttack
def test_nattack_stops_only_on_a_fresh_forward_and_counts_it():
    """pop = 4: an iteration's 5 queries hold a wrong vote with probability 1 - 0.7^5 = 0.832. The old
    code stopped those examples at 5 queries; now a 6th query must also be wrong (P = 0.3)."""
    n, pop = 600, 4
    model = Flip()
    atk = NAttack(model, 0.05, population=pop, max_queries=50)
    x = torch.full((n, 1, 2, 2), 0.5)
    y = torch.zeros(n, dtype=torch.long)
    torch.manual_seed(0)  # Flip draws from the global generator under NAttack
    atk(x, y, gen(0))
    q = atk.queries
    assert int((q == pop + 1).sum()) == 0  # old code: about 0.832 n stopped right there
    assert_binomial(int((q == pop + 2).sum()), n, stop_rate(pop + 1))
    assert int(q.max()) <= 50
    assert model.rows == int(q.sum()) + 1  # every forward row is a counted query (+1: the class count)


def test_nattack_on_a_deterministic_model_spends_no_confirmation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand((32, 1, 2, 2), generator=gen(1))
    y = model(x).argmax(1)
    atk = NAttack(model, 0.3, population=5, max_queries=60)
    atk(x, y, gen(0))
    assert (atk.queries % 6 == 0).all() and int(atk.queries.min()) < 60  # whole iterations only
