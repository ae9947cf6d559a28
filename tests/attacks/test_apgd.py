"""APGD over noise, best-point selection and the default preset: analytic and hand-built cases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothinf.attacks import APGD, EPGD, PGD, build_attack, robust_accuracy
from smoothinf.attacks.apgd import checkpoints, targeted_loss
from smoothinf.attacks.base import random_start
from smoothinf.attacks.best import VisitedPoints, margins, select_strongest
from smoothinf.attacks.presets import HARD_VOTE_TEMPERATURES, preset_attacks
from smoothinf.errors import ConfigError
from smoothinf.smoothing import SmoothedClassifier


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def linear_model(d: int, k: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k)).eval()


def test_checkpoints_follow_croce_hein_schedule():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (AutoAttack's w_j for 100 iterations)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    # AutoAttack counts in whole steps: intervals floor(2.2) = 2, then 1 (was [3, 5, 6, 7, 8, 9], from
    # ceil(p_j * 10); tests/test_apgd_checkpoints.py compares with its code for many step counts)
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert checkpoints(1) == []


class Band(nn.Module):
    """One pixel, three classes: z = (0, h(x), 10 x - 20) with h(x) = 1 - 100 (x - 0.6)^2.

    Class 1 wins only in the band |x - 0.6| < 0.1; the loss ``z_2`` rises with x everywhere, so an
    ascent on it crosses the band (a success) and leaves it (undone) before it stops at x = 0.8.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1)[:, :1]
        return torch.cat([torch.zeros_like(v), 1 - 100 * (v - 0.6) ** 2, 10 * v - 20], 1)


def _third_logit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits[:, 2]


def test_best_point_keeps_an_early_success_a_later_step_undoes():
    model = Band()
    x = torch.full((1, 1, 1, 1), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    x_adv = PGD(model, 0.3, alpha=0.1, steps=3, random_start=False, loss=_third_logit)(x, y, gen(0))
    # Every step moves up (the loss grows with x): the last iterate, x = 0.8, is correctly classified ...
    assert model(torch.full_like(x, 0.8)).argmax(1).item() == 0
    # ... but the attack returns the visited point inside the band, where class 1 wins.
    assert model(x_adv).argmax(1).item() == 1
    assert abs(x_adv.item() - 0.6) < 0.1


def test_apgd_keeps_a_successful_random_start_its_steps_leave():
    model = Band()
    x = torch.full((1, 1, 1, 1), 0.45)
    y = torch.zeros(1, dtype=torch.long)
    in_band = 0
    for seed in range(12):
        start = random_start(x, 0.35, "linf", gen(seed))  # APGD's first draw from the generator
        x_adv = APGD(model, 0.35, steps=6, loss=_third_logit)(x, y, gen(seed))
        if abs(start.item() - 0.6) < 0.1:  # the start already fools the model; the steps go to 0.8
            in_band += 1
            assert model(x_adv).argmax(1).item() == 1
    assert in_band >= 2


def test_select_strongest_prefers_success_then_margin():
    y = torch.tensor([0, 0, 1])
    a = torch.zeros(3, 1, 1, 1)
    b = torch.ones(3, 1, 1, 1)
    # scores of candidate a then b for the three examples
    table = {
        0.0: torch.tensor([[2.0, 1.0], [0.0, 1.0], [0.0, 3.0]]),
        1.0: torch.tensor([[1.5, 1.0], [0.0, 5.0], [0.0, 1.0]]),
    }

    def score(xc: torch.Tensor) -> torch.Tensor:
        return torch.cat([table[float(xc[i * 3].item())] for i in range(xc.shape[0] // 3)])

    best, success, margin = select_strongest([a, b], y, score)
    assert best.flatten().tolist() == [1.0, 1.0, 1.0]  # smaller margin; larger wrong margin; smaller margin
    assert success.tolist() == [False, True, False]
    assert margin.tolist() == [0.5, -5.0, 1.0]
    s, mg = margins(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([1]))
    assert s.item() and mg.item() == 0.0  # a tie goes to the lowest class: class 1 loses


def test_visited_points_track_best_score_and_last_success():
    x = torch.zeros(2, 1, 1, 1)
    v = VisitedPoints(x)
    v.update(x + 1, torch.tensor([1.0, 5.0]), torch.tensor([True, False]))
    v.update(x + 2, torch.tensor([2.0, 4.0]), torch.tensor([False, False]))
    last = x + 3
    c_last, c_best, c_fooled = v.candidates(last)
    assert c_best.flatten().tolist() == [2.0, 1.0]
    assert c_fooled.flatten().tolist() == [1.0, 3.0]  # no success for example 2: the last iterate
    assert torch.equal(c_last, last)


def _noisy_linear_setup(eps: float):
    """Two classes, z_0 - z_1 = 2 mean(x) - (1 - eps): at x = 0.5 everywhere the margin is eps, and
    an attack must lower the mean pixel by more than 0.5 eps to flip the class."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.ones(16), -torch.ones(16)]) / 16)
        model[1].bias.copy_(torch.tensor([-(1 - eps) / 2, (1 - eps) / 2]))
    return model, torch.full((4, 1, 4, 4), 0.5), torch.zeros(4, dtype=torch.long)


def test_fixed_small_step_provably_stalls_where_apgd_converges():
    eps = 0.2
    model, x, y = _noisy_linear_setup(eps)
    g = SmoothedClassifier(model, sigma=0.05, m=64, vote="hard")
    assert (g.predict(x, gen(1)) == 0).all()
    assert (g.predict(x - 0.8 * eps, gen(1)) == 1).all()
    # EPGD from x with 10 steps of eps / 100 moves every pixel by at most 0.1 eps: it cannot cross.
    small = EPGD(g, eps=eps, m=8, steps=10, alpha=eps / 100, random_start=False)
    res = robust_accuracy(g, x, y, {"small": small, "apgd": APGD(g, eps, steps=10, m=8)}, generator=gen(2))
    assert res.accuracy["small"] == 1.0
    assert res.accuracy["apgd"] == 0.0


def test_apgd_reaches_linear_linf_optimum_and_stays_in_ball():
    model = linear_model(16, 2, seed=3)
    g = torch.Generator().manual_seed(5)
    x = 0.3 + 0.4 * torch.rand((6, 1, 4, 4), generator=g)
    y = model(x).argmax(1)
    eps = 0.1
    x_adv = APGD(model, eps, steps=20)(x, y, gen(0))
    assert (x_adv - x).abs().max() <= eps + 1e-6
    w = model[1].weight
    direction = (w[1 - y] - w[y]).sign().view(-1, 1, 4, 4)  # optimum: every pixel at the corner
    assert torch.allclose(x_adv, x + eps * direction, atol=1e-5)


def test_apgd_targeted_and_apgd_t_on_a_five_class_linear_model():
    model = linear_model(16, 5, seed=1)
    g = torch.Generator().manual_seed(2)
    x = 0.3 + 0.4 * torch.rand((8, 1, 4, 4), generator=g)
    y = model(x).argmax(1)
    # APGD-T with 4 targets fools every example a large eps allows.
    atk = APGD(model, 1.0, steps=20, loss="dlr", target_classes=4)
    assert atk.budget() == {"steps": 20, "draws": 1, "restarts": 4, "gradients": 80}
    assert (model(atk(x, y, gen(0))).argmax(1) != y).all()
    # targeted=True: y holds targets that are reached.
    t = (y + 2) % 5
    x_t = APGD(model, 1.0, steps=20, loss="ce", targeted=True)(x, t, gen(0))
    assert (model(x_t).argmax(1) == t).all()
    loss = targeted_loss("dlr", 5)
    z = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    packed = torch.tensor([0 * 5 + 1])  # true 0, target 1: (z_1 - z_0) / (z_pi1 - (z_pi3 + z_pi4)/2)
    assert loss(z, packed).item() == pytest.approx(-1.0 / (4.0 - 1.5))
    with pytest.raises(ConfigError, match="4 classes"):
        targeted_loss("dlr", 3)
    with pytest.raises(ConfigError, match="target_classes"):
        APGD(model, 0.1, target_classes=2, targeted=True)


def test_apgd_expectation_reductions_and_unwrapping():
    model = linear_model(16, 3)
    g = SmoothedClassifier(model, sigma=0.1, m=6, vote="soft")
    atk = APGD(g, 0.1, steps=5)
    assert atk.model is model and atk.m == 6 and atk.noise.sigma == 0.1 and atk.judge is g
    assert APGD(g, 0.1, reduce="softmax").reduce == "softmax"
    assert build_attack("apgd", model, 0.1, m=3, noise=0.2).m == 3
    with pytest.raises(ConfigError, match="reduce"):
        APGD(g, 0.1, reduce="mean")
    x = torch.rand((5, 1, 4, 4), generator=gen(0))
    y = model(x).argmax(1)
    a = APGD(model, 0.1, steps=5, noise=0.1, m=4)(x, y, gen(7))
    b = APGD(model, 0.1, steps=5, noise=0.1, m=4)(x, y, gen(7))
    assert torch.equal(a, b)  # seeded: reproducible


def test_default_preset_by_row_kind():
    model = linear_model(16, 10)
    g = SmoothedClassifier(model, sigma=0.1, m=16)
    smoothed = preset_attacks("default", model, 0.3, noise=0.1, judge=g)
    assert set(smoothed) == {"pgd", "apgd-ce", "apgd-dlr"}
    assert smoothed["apgd-ce"].reduce == "softmax" and smoothed["apgd-dlr"].reduce == "loss"
    assert smoothed["apgd-ce"].budget() == {"steps": 200, "draws": 16, "restarts": 1, "gradients": 3200}
    assert smoothed["apgd-dlr"].judge is g
    doubled = preset_attacks("default", model, 0.3, noise=0.1, judge=g, scale=2)
    assert doubled["apgd-ce"].budget()["gradients"] == 4 * 3200
    plain = preset_attacks("default", model, 0.3)
    assert list(plain) == ["pgd", "apgd-ce", "apgd-t", "square"]  # Square last, on what APGD leaves
    assert plain["apgd-t"].budget()["restarts"] == 9
    assert plain["square"].budget() == {"queries": 5000, "p_init": 0.8}
    assert preset_attacks("default", model, 0.3, scale=2)["square"].queries == 10000
    assert list(preset_attacks("default", model, 0.3, square_queries=0)) == ["pgd", "apgd-ce", "apgd-t"]
    with pytest.raises(ConfigError, match="preset"):
        preset_attacks("strong", model, 0.3)


def test_default_preset_tempered_attacks():
    """temperatures add one APGD-CE on the expected softmax of logits / T per T, after the pair,
    at the preset's budget; a bad list is a one-line ConfigError."""
    model = linear_model(16, 10)
    g = SmoothedClassifier(model, sigma=0.1, m=16, vote="hard")
    attacks = preset_attacks("default", model, 0.3, noise=0.1, judge=g, temperatures=HARD_VOTE_TEMPERATURES)
    assert list(attacks) == ["pgd", "apgd-ce", "apgd-dlr", "apgd-ce-t0.5", "apgd-ce-t0.25"]
    for name, t in (("apgd-ce-t0.5", 0.5), ("apgd-ce-t0.25", 0.25)):
        a = attacks[name]
        assert (a.temperature, a.reduce, a.loss_name, a.noise.sigma, a.judge) == (t, "softmax", "ce", 0.1, g)
        assert a.budget() == attacks["apgd-ce"].budget()
    assert attacks["apgd-ce"].temperature == attacks["apgd-dlr"].temperature == 1.0
    doubled = preset_attacks("default", model, 0.3, noise=0.1, judge=g, scale=2, temperatures=[0.5])
    assert doubled["apgd-ce-t0.5"].budget()["gradients"] == 4 * 3200
    plain = preset_attacks("default", model, 0.3, temperatures=[0.5])  # the caller's choice
    assert list(plain) == ["pgd", "apgd-ce", "apgd-t", "apgd-ce-t0.5", "square"]
    assert plain["apgd-ce-t0.5"].m == 1
    for bad in ([0.5, 0.5], [0], [-1.0], [float("nan")], [True]):
        with pytest.raises(ConfigError, match="^temperatures must be distinct numbers > 0"):
            preset_attacks("default", model, 0.3, noise=0.1, temperatures=bad)
