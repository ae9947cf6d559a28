"""Craft once, judge many: the votes and m of one sigma share the attacks that do not depend on them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from smoothinf.attacks import APGD, PGD, robust_accuracies, robust_accuracy
from smoothinf.attacks.robustness import CANDIDATES, OWN, POINTS, crafting_share
from smoothinf.errors import ConfigError
from smoothinf.evaluation import EvalConfig, evaluate
from smoothinf.evaluation.protocol import judge_seed, row_groups
from smoothinf.smoothing import SmoothedClassifier
from support import UNIT, CountingForward, at_distance, halfspace, linear10, phi

SIGMA = 0.25
EPS = 0.05
SHIFT = EPS * float(UNIT.abs().sum())  # the L_inf attack's best move of the signed distance: eps * ||u||_1


def _config(**kw) -> EvalConfig:
    base = dict(checkpoint="unused", eps=[EPS], attacks=["default"], apgd_steps=5, attack_m=4, runs=1)
    base.update(judgements=16, device="cpu", autoattack_check=False, blackbox_check=False)
    return EvalConfig(**{**base, **kw})


def test_both_votes_judge_one_crafting_and_reach_the_half_spaces_closed_form():
    """On a half-space smoothed with one draw, hard and soft votes are the same classifier: under the
    optimal L_inf attack each example is right with probability Phi((d - eps ||u||_1) / sigma). One
    crafting serves both rows (``shared`` 2 in their attack times; the tempered APGD-CE runs for
    the hard vote only), each judged with its own generator, and both reach the closed form."""
    model = halfspace(10)
    d = SIGMA * torch.linspace(0.5, 2.5, 100)
    x, y = at_distance(d), torch.ones(100, dtype=torch.long)
    truth = float(phi((d - SHIFT) / SIGMA).mean())
    cfg = _config(votes=["hard", "soft"], sigmas=[SIGMA], ms=[1], check_examples=100)
    base, hard, soft = evaluate(model, x, y, config=cfg).records
    for row in (hard, soft):
        # the mean of 100 fresh 16-judgement estimates: sd about 0.01
        assert row["worst_case"] == pytest.approx(truth, abs=0.04)
        assert row["crafted_with"] == ["hard/0.25/1", "soft/0.25/1"]
        assert {k: t["shared"] for k, t in row["attack_time"].items() if not k.startswith("apgd-ce-t")} == {
            "pgd": 2,
            "apgd-ce": 2,
            "apgd-dlr": 2,
        }
        assert not row["checks"]["convergence"]["flag"]
    assert [hard["attack_time"][k]["shared"] for k in ("apgd-ce-t0.5", "apgd-ce-t0.25")] == [1, 1]
    assert "apgd-ce-t0.5" not in soft["attack_time"]
    assert hard["judge_seed"] == hard["seed"] == 0 and soft["judge_seed"] not in (0, hard["judge_seed"])
    assert base["crafted_with"] == ["none/0/1"]
    # the deterministic base model at eps: right only beyond the shifted boundary
    assert base["worst_case"] == pytest.approx(float((d > SHIFT).float().mean()))


def test_shared_crafting_runs_the_steps_of_one_row_only():
    """Examples far from the boundary are never fooled, so every attack runs on all of them in every
    row: shared, the soft row adds no gradient to the hard row's (its attacks are a subset of the
    hard vote's); per row it repeats PGD, APGD-CE and APGD-DLR."""
    d = torch.full((12,), 1.5)
    x, y = at_distance(d), torch.ones(12, dtype=torch.long)

    def gradient_forwards(**kw) -> int:
        model = CountingForward(halfspace(10))
        model.smoothinf_randomised = False  # skip the two-forward probe
        evaluate(model, x, y, config=_config(sigmas=[SIGMA], ms=[4], check_examples=0, **kw))
        return model.calls

    hard_only = gradient_forwards(votes=["hard"])
    assert gradient_forwards(votes=["hard", "soft"]) == hard_only
    per_row = gradient_forwards(votes=["hard", "soft"], crafting="per-row")
    steps = 20 + 5 + 5  # PGD-20, APGD-CE and APGD-DLR at 5 steps, one chunk each
    assert per_row - hard_only == steps


def test_a_row_alone_is_judged_as_robust_accuracy_judges_it():
    """The first of two defences sharing a crafting gets what it gets alone from ``robust_accuracy``
    when the union of their examples is its own (here every example, no cascade): its generator
    drives the crafting and its judging in the same order, the second defence judges with its own."""
    model = halfspace(10)
    x, y = at_distance(torch.linspace(0.5, 0.8, 10)), torch.ones(10, dtype=torch.long)
    hard = SmoothedClassifier(model, 0.1, 4, "hard")
    soft = SmoothedClassifier(model, 0.1, 4, "soft")

    def attacks(judge):
        return {"apgd": APGD(model, 0.05, 4, noise=0.1, m=2, reduce="softmax", judge=judge)}

    alone = robust_accuracy(hard, x, y, attacks(hard), torch.Generator().manual_seed(1), judgements=4)
    both = robust_accuracies(
        [hard, soft],
        x,
        y,
        [attacks(hard), attacks(soft)],
        [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)],
        judgements=4,
    )
    # every example is attacked by both rows (clean right everywhere, no cascade): the union is the
    # hard row's own set, so its crafting and judging draws are those it takes alone
    assert bool(alone.clean_correct.eq(1).all()) and bool(both[1].clean_correct.eq(1).all())
    assert torch.equal(both[0].robust, alone.robust) and torch.equal(both[0].worst.points, alone.worst.points)
    assert both[0].shared == both[1].shared == {"apgd": 2} and alone.shared == {"apgd": 1}
    assert both[1].attacked == {"apgd": 10}


def test_what_can_share_a_crafting():
    model = linear10()
    judged = [PGD(model, 0.1, steps=2, judge=SmoothedClassifier(model, 0.1, 4, v)) for v in ("hard", "soft")]
    assert crafting_share(judged) == CANDIDATES
    assert crafting_share([PGD(model, 0.1, steps=2), PGD(model, 0.1, steps=2)]) == POINTS
    assert crafting_share([PGD(model, 0.1, steps=2), PGD(model, 0.1, steps=3)]) == OWN  # not one attack
    restarts = [PGD(model, 0.1, steps=2, restarts=2, judge=j.judge) for j in judged]
    assert crafting_share(restarts) == OWN  # restarts stop on each judge's own verdict
    assert crafting_share(judged[:1]) == OWN
    with pytest.raises(ConfigError, match="several times"):
        restarts[0].craft(torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))


def test_groups_and_seeds():
    cfg = _config(votes=["hard", "soft"], sigmas=[0.1, 0.25], ms=[8, 16])
    groups = row_groups(cfg, cfg.settings())
    assert groups[0] == [("none", 0.0, 1)]
    assert groups[1] == [("hard", 0.1, 8), ("hard", 0.1, 16), ("soft", 0.1, 8), ("soft", 0.1, 16)]
    assert len(groups) == 3
    per_row = dataclasses.replace(cfg, crafting="per-row")
    assert all(len(g) == 1 for g in row_groups(per_row, per_row.settings()))
    assert judge_seed(3, ("soft", 0.1, 8), first=True) == 3
    assert judge_seed(3, ("soft", 0.1, 8), first=False) != judge_seed(3, ("soft", 0.1, 16), first=False)
    with pytest.raises(ConfigError, match="crafting must be one of"):
        dataclasses.replace(cfg, crafting="once").validate()
    assert per_row.fingerprint() != cfg.fingerprint()
