"""PGD's cheap bookkeeping gives the same points as the general path: visited points held by
reference and resolved at once (``VisitedPoints(shared=True)``), a deterministic surrogate's scores
reused from its steps (``PGD._scores_reusable``), steps computed in place (``inplace=True``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothinf.attacks import EPGD, FGSM, PGD
from smoothinf.attacks import best as best_mod
from smoothinf.attacks.base import clip_to_threat, project, steepest_step
from smoothinf.attacks.best import VisitedPoints, select_strongest


class RowwiseModel(nn.Module):
    """logits_k = sum_j w_kj x_kj + b_k over a fixed split of the pixels: elementwise products and
    per-row sums only, so a row's logits do not depend on the batch it is in (exact equality)."""

    def __init__(self, d: int, k: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.k = k
        self.w = nn.Parameter(torch.randn(k, d // k, generator=g) * 2)
        self.b = nn.Parameter(torch.randn(k, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)[:, : self.w.numel()].view(x.shape[0], self.k, -1)
        return (z * self.w).sum(-1) + self.b


class GeneralPGD(PGD):
    """PGD forced onto the general path: every candidate scored anew by the surrogate."""

    def _scores_reusable(self) -> bool:
        return False


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return torch.rand((n, 1, 6, 6), generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize(
    ("norm", "targeted", "restarts", "loss"),
    [("linf", False, 1, "ce"), ("linf", True, 3, "cw"), ("l2", False, 3, "dlr"), ("l2", True, 1, "ce")],
)
def test_reused_scores_pick_the_points_of_the_general_path(norm, targeted, restarts, loss):
    model = RowwiseModel(36, 4).eval()
    x, y = _data(12)
    y = (y + 1) % 4 if targeted else y
    eps = 0.3 if norm == "linf" else 1.5
    kw = dict(steps=6, norm=norm, targeted=targeted, restarts=restarts, loss=loss)
    fast, general = PGD(model, eps, **kw), GeneralPGD(model, eps, **kw)
    out_fast, out_general = fast(x, y, _gen()), general(x, y, _gen())
    assert fast._reuse_scores and not general._reuse_scores
    assert torch.equal(out_fast, out_general)


def test_scores_reused_only_for_a_deterministic_eval_surrogate():
    model = RowwiseModel(36, 4).eval()
    x, y = _data(4)
    for attack, reused in [
        (PGD(model, 0.3, steps=2), True),
        (FGSM(model, 0.3), True),
        (EPGD(model, 0.0, 1, 0.3, steps=2), True),  # sigma 0, one draw: deterministic
        (EPGD(model, 0.25, 4, 0.3, steps=2), False),  # fresh noise at every scoring
        (PGD(model, 0.3, steps=2, eot_iter=2), False),
        (PGD(model, 0.3, steps=2, judge=RowwiseModel(36, 4, seed=1).eval()), False),
        (PGD(model.train(), 0.3, steps=2, eval_mode=False), False),  # batch-dependent modules
    ]:
        attack(x, y, _gen())
        assert attack._reuse_scores is reused, attack
        assert (attack._known is not None) is reused
    model.eval()


def _updates(seed: int, n: int = 7, steps: int = 9, k: int = 3):
    """Update sequences with ties, NaN and infinite scores and repeated successes."""
    g = _gen(seed)
    out = []
    for t in range(steps):
        adv = torch.randn((n, 2, 2), generator=g)
        score = torch.randint(0, 4, (n,), generator=g).float()  # many ties
        score[t % n] = float("nan")
        if t == 3:
            score[(t + 1) % n] = float("inf")
        success = torch.rand(n, generator=g) < 0.3
        out.append((adv, score, success, torch.rand((n, k), generator=g)))
    return out


@pytest.mark.parametrize("budget", [None, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_visited_points_resolve_as_update_by_update(seed, budget, monkeypatch):
    if budget is not None:  # resolve after every few updates, not only at the end
        monkeypatch.setattr(best_mod, "SHARED_POINTS_BYTES", 3 * 7 * 4 * 4)
    x = torch.zeros(7, 2, 2)
    copied, shared = VisitedPoints(x), VisitedPoints(x, shared=True)
    for adv, score, success, scores in _updates(seed):
        copied.update(adv.clone(), score, success, scores)
        shared.update(adv, score, success, scores)
    last = torch.full_like(x, 9.0)
    for a, b in zip(copied.candidates(last), shared.candidates(last), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(copied.best_score, shared.best_score)
    last_scores = torch.rand(7, 3, generator=_gen(5))
    ka, kb = copied.candidate_scores(last_scores), shared.candidate_scores(last_scores)
    assert (ka is None) == (kb is None)
    if ka is not None:
        for a, b in zip(ka, kb, strict=True):
            assert torch.equal(a, b)


def test_visited_points_keep_the_scores_of_their_points():
    x = torch.zeros(2, 1)
    for shared in (False, True):
        v = VisitedPoints(x, shared=shared)
        s1, s2 = torch.tensor([[0.1, 0.9], [0.2, 0.8]]), torch.tensor([[0.3, 0.7], [0.4, 0.6]])
        v.update(x + 1, torch.tensor([1.0, 5.0]), torch.tensor([True, False]), s1)
        v.update(x + 2, torch.tensor([2.0, 4.0]), torch.tensor([False, False]), s2)
        last = torch.tensor([[0.5, 0.5], [0.6, 0.4]])
        c_last, c_best, c_fooled = v.candidate_scores(last)
        assert torch.equal(c_best, torch.stack([s2[0], s1[1]]))  # best: step 2, then step 1
        assert torch.equal(c_fooled, torch.stack([s1[0], last[1]]))  # no success: the last iterate
        assert torch.equal(c_last, last)
        v.update(x + 3, torch.tensor([9.0, 9.0]), torch.tensor([True, True]))  # no scores: unknown
        assert v.candidate_scores(last) is None
    v = VisitedPoints(x)
    v.update(x + 1, torch.tensor([float("nan"), 1.0]), torch.tensor([False, False]), s1)
    assert v.candidate_scores(last) is None  # example 1's best point is still its start


def test_select_strongest_with_known_scores_scores_only_the_rest():
    y = torch.tensor([0, 1])
    cands = [torch.full((2, 1), float(i)) for i in range(3)]
    table = {0.0: [[0.9, 0.1], [0.1, 0.9]], 1.0: [[0.4, 0.6], [0.7, 0.3]], 2.0: [[0.2, 0.8], [0.6, 0.4]]}
    calls = []

    def score(xc: torch.Tensor) -> torch.Tensor:
        calls.append(xc.shape[0])
        return torch.cat([torch.tensor(table[float(v)]) for v in xc[::2, 0]])

    full = select_strongest(cands, y, score)
    known = [None, torch.tensor(table[1.0]), torch.tensor(table[2.0])]
    part = select_strongest(cands, y, score, known=known)
    assert calls == [6, 2]
    for a, b in zip(full, part, strict=True):
        assert torch.equal(a, b)
    assert full[0].flatten().tolist() == [2.0, 1.0]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_inplace_steps_give_the_same_numbers(norm):
    g = _gen(3)
    x = torch.rand((5, 1, 4, 4), generator=g)
    adv = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    grad = torch.randn(x.shape, generator=g)
    grad[0] = 0.0
    want = clip_to_threat(adv + steepest_step(grad, 0.1, norm), x, 0.15, norm)
    buf = grad.clone()
    got = clip_to_threat(steepest_step(buf, 0.1, norm, inplace=True).add_(adv), x, 0.15, norm, inplace=True)
    assert torch.equal(got, want) and got.data_ptr() == buf.data_ptr()
    delta = adv - x
    assert torch.equal(project(delta.clone(), 0.15, norm, inplace=True), project(delta, 0.15, norm))
