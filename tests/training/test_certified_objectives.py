"""Certified-robustness training (issue 42): LeNet, the consistency / SmoothMix / MACER losses and
Salman et al.'s SmoothAdv on cases with known answers, and the certification summaries (ACR,
certified accuracy, Cohen's TSV log)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from smoothinf.data import get_dataset_info
from smoothinf.errors import ConfigError, SmoothinfError
from smoothinf.models import create_model, create_model_for, parameter_count
from smoothinf.noise import NoiseDistribution
from smoothinf.smoothing import (
    average_certified_radius,
    certified_accuracy,
    read_certify_log,
    summarize_certification,
)
from smoothinf.training import build_objective, consistency, macer, macer_loss, smoothed_pgd, smoothmix
from smoothinf.training.trainer import TrainConfig


class Constant(nn.Module):
    """Logits z for every input (a parameter, so the loss has a graph)."""

    def __init__(self, z) -> None:
        super().__init__()
        self.z = nn.Parameter(torch.tensor(z, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.z.expand(x.shape[0], -1) + 0 * x.flatten(1).sum(1, keepdim=True)


class Pixels(nn.Module):
    """Logits = the K pixels of a (N, 1, 1, K) input (so logits = x + noise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def draws(x: torch.Tensor, m: int, sigma: float, seed: int) -> torch.Tensor:
    """The objectives' noise: one (m * N, ...) draw-major sample from a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return NoiseDistribution("gaussian", sigma).sample((m * x.shape[0], *x.shape[1:]), g, x.device, x.dtype)


def test_lenet_is_the_literature_model_on_raw_pixels():
    assert parameter_count("lenet") == 431_080  # 520 + 25,050 + 400,500 + 5,010
    model = create_model_for("lenet", get_dataset_info("mnist"))
    assert model.normalize.mean.flatten().tolist() == [0.0] and model.normalize.std.flatten().tolist() == [
        1.0
    ]
    assert [n for n, _ in model.named_children()] == ["normalize", "conv1", "conv2", "fc1", "fc2"]
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    explicit = create_model("lenet", 10, 1, 0.1307, 0.3081)  # explicit statistics still normalise
    assert explicit.normalize.std.item() == pytest.approx(0.3081)


def test_consistency_on_constant_logits_is_ce_plus_eta_entropy():
    """All copies agree: KL(pbar || p_j) = 0, pbar = p, so loss = -log p_y + eta * H(p)."""
    z = [1.0, -0.5, 0.25]
    p = torch.softmax(torch.tensor(z), 0)
    x, y = torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    step = consistency(sigma=0.5, m=3, lbd=10.0, eta=0.5)(Constant(z), x, y, torch.Generator().manual_seed(0))
    expected = -torch.log(p[y]).mean() - 0.5 * (p * p.log()).sum()
    assert step.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert step.clean_correct == int((y == 0).sum())


def test_consistency_matches_its_formula_on_differing_copies():
    torch.manual_seed(0)
    x, y, m, sigma = torch.rand(5, 1, 1, 4), torch.tensor([0, 1, 2, 3, 1]), 2, 0.7
    step = consistency(sigma, m, lbd=3.0, eta=0.4)(Pixels(), x, y, torch.Generator().manual_seed(3))
    logits = x.repeat(m, 1, 1, 1).flatten(1) + draws(x, m, sigma, 3).flatten(1)
    p = torch.softmax(logits, 1).view(m, 5, 4)
    pbar = p.mean(0)
    kl = (pbar * (pbar.log() - p.log())).sum(2).mean(0)
    ce = F.cross_entropy(logits, y.repeat(m))
    expected = ce + (3.0 * kl - 0.4 * (pbar * pbar.log()).sum(1)).mean()
    assert step.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="m_train >= 2"):
        consistency(0.5, m=1)


def test_smoothmix_without_steps_mixes_clean_point_and_uniform_target():
    """0 steps: x0 = x_T = x, so x_mix = x and the target is (1 - lam) pbar + lam / K, lam ~ U[0, 1/2)
    drawn after the noise; with constant logits pbar = p and the mixup KL is KL(t || p)."""
    z = [2.0, 0.0, -1.0]
    p = torch.softmax(torch.tensor(z), 0)
    x, y, m = torch.rand(6, 1, 2, 2), torch.tensor([0, 0, 1, 0, 2, 0]), 2
    objective = smoothmix(sigma=0.5, m=m, steps=0, step_size=1.0, eta=2.0, warmup=10)
    with pytest.raises(ConfigError, match="set_epoch"):
        objective(Constant(z), x, y, torch.Generator().manual_seed(1))
    objective.set_epoch(4)  # warm-up factor (4 + 1) / 10
    step = objective(Constant(z), x, y, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    NoiseDistribution("gaussian", 0.5).sample((m * 6, 1, 2, 2), g)  # the noise comes first
    lam = torch.rand(6, generator=g) / 2
    t = (1 - lam[:, None]) * p + lam[:, None] / 3
    kl = (t * (t.log() - p.log())).sum(1)
    correct = (y == 0).float()  # argmax p = 0
    expected = -torch.log(p[y]).mean() + 2.0 * 0.5 * (correct * kl).mean()
    assert step.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_smoothed_pgd_is_an_l2_ascent_on_the_soft_smoothed_loss_with_fixed_draws():
    """Logits = x + n_j: the gradient of -log pbar_y is -mean_j p_jy (e_y - p_j) / pbar_y, so the
    first step is alpha times it normalised; ``keep_step`` 1 returns that point."""
    x = torch.full((2, 1, 1, 3), 0.5)
    y = torch.tensor([0, 2])
    noise = draws(x, 4, 0.3, 0)
    kept, last = smoothed_pgd(Pixels(), x, y, noise, steps=2, step_size=0.1, eps=None, keep_step=1)
    p = torch.softmax(x.repeat(4, 1, 1, 1).flatten(1) + noise.flatten(1), 1).view(4, 2, 3)
    p_y = p.gather(2, y.view(1, 2, 1).expand(4, 2, 1))
    grad = -(p_y * (F.one_hot(y, 3) - p)).mean(0) / p.mean(0).gather(1, y[:, None])
    expected = x.flatten(1) + 0.1 * grad / grad.norm(dim=1, keepdim=True)
    assert torch.allclose(kept.flatten(1), expected, atol=1e-6)
    assert ((last - x).flatten(1).norm(dim=1) <= 0.2 + 1e-6).all() and not torch.equal(last, kept)
    # an eps ball projects: two steps of 0.1 inside a radius of 0.05
    _, ball = smoothed_pgd(Pixels(), x, y, noise, steps=2, step_size=0.1, eps=0.05)
    assert (ball - x).flatten(1).norm(dim=1).tolist() == pytest.approx([0.05, 0.05], rel=1e-4)


def _macer_by_hand(z, y, sigma, lbd, gamma, beta):
    p = np.exp(z) / np.exp(z).sum()
    q = np.exp(beta * np.asarray(z)) / np.exp(beta * np.asarray(z)).sum()
    order = np.argsort(-q)
    loss = -np.log(p[y] + 1e-10)
    if order[0] == y:
        gap = norm.ppf(q[order[1]]) - norm.ppf(q[order[0]])
        if abs(gap) <= gamma:
            loss += lbd * (gap + gamma) * sigma / 2
    return loss


@pytest.mark.parametrize(
    ("z", "y", "gamma", "active"),
    [
        ([0.2, 0.1, 0.0], 0, 8.0, True),  # right and close: the hinge pulls
        ([0.2, 0.1, 0.0], 1, 8.0, False),  # top class wrong: no hinge
        ([0.2, 0.1, 0.0], 0, 0.1, False),  # radius term beyond gamma: no hinge
    ],
)
def test_macer_hinge_is_active_or_not_by_construction(z, y, gamma, active):
    m, n, sigma, lbd, beta = 3, 2, 0.5, 16.0, 16.0
    logits = torch.tensor(z).repeat(m * n, 1)
    yy = torch.full((n,), y)
    loss = macer_loss(logits, yy, m, sigma, lbd, gamma, beta)
    assert loss.item() == pytest.approx(_macer_by_hand(z, y, sigma, lbd, gamma, beta), rel=1e-4)
    ce_only = macer_loss(logits, yy, m, sigma, 0.0, gamma, beta)
    assert (abs(loss.item() - ce_only.item()) > 1e-3) == active


def test_macer_defers_the_hinge():
    z, x, y = [0.2, 0.1, 0.0], torch.rand(2, 1, 2, 2), torch.tensor([0, 0])
    objective = macer(sigma=0.5, m=4, lbd=16.0, gamma=8.0, beta=16.0, deferred_epochs=31)
    objective.set_epoch(30)
    early = objective(Constant(z), x, y, torch.Generator().manual_seed(0)).loss.item()
    objective.set_epoch(31)
    late = objective(Constant(z), x, y, torch.Generator().manual_seed(0)).loss.item()
    assert early == pytest.approx(_macer_by_hand(z, 0, 0.5, 0.0, 8.0, 16.0), rel=1e-5)
    assert late == pytest.approx(_macer_by_hand(z, 0, 0.5, 16.0, 8.0, 16.0), rel=1e-4)


def test_salman_smoothadv_shares_the_draws_and_warms_eps_up():
    """attack_noise shared: the loss is mean_j CE(f(x_adv + n_j)) with the attack's draws; eps ramps
    as min(1, (epoch + 1) / warmup) eps and the default step is 2 eps_t / steps."""
    x, y = torch.full((2, 1, 1, 3), 0.5), torch.tensor([0, 2])
    objective = build_objective(
        "smoothadv",
        eps=1.0,
        steps=1,
        weight=1.0,
        sigma=0.3,
        m_train=4,
        norm="l2",
        attack_noise="shared",
        warmup=10,
    )
    objective.set_epoch(1)  # eps_t = 0.2, one step of 2 eps_t clipped to the ball
    step = objective(Pixels(), x, y, torch.Generator().manual_seed(0))
    noise = draws(x, 4, 0.3, 0)
    _, x_adv = smoothed_pgd(Pixels(), x, y, noise, 1, 0.4, eps=0.2)
    assert (x_adv - x).flatten(1).norm(dim=1).tolist() == pytest.approx([0.2, 0.2], rel=1e-4)
    expected = F.cross_entropy(x_adv.repeat(4, 1, 1, 1).flatten(1) + noise.flatten(1), y.repeat(4))
    assert step.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_build_objective_and_config_reach_the_new_objectives():
    for name in ("consistency", "smoothmix", "macer"):
        with pytest.raises(ConfigError, match="sigma > 0"):
            build_objective(name, sigma=0.0)
        with pytest.raises(ConfigError, match="sigma > 0"):
            TrainConfig(data="synthetic", objective=name).validate()
        TrainConfig(data="synthetic", objective=name, sigma=0.25).validate()
    with pytest.raises(ConfigError, match="attack_noise"):
        build_objective("epgd", sigma=0.5, attack_noise="shared")
    with pytest.raises(ConfigError, match="warmup"):
        build_objective("macer", sigma=0.5, warmup=3)
    with pytest.raises(ConfigError, match="norm"):
        build_objective("trades", norm="l2")
    # defaults of the existing objectives are unchanged: no set_epoch, L_inf attacks
    assert not hasattr(build_objective("smoothadv", sigma=0.5), "set_epoch")
    assert hasattr(build_objective("smoothadv", sigma=0.5, warmup=2), "set_epoch")


def test_acr_and_certified_accuracy_by_hand():
    # (label, predict, radius, correct): right 0.8, right 0.3, wrong 0.5, abstain
    rows = [(1, 1, 0.8, 1), (2, 2, 0.3, 1), (3, 4, 0.5, 0), (5, -1, 0.0, 0)]
    radius, correct = [r[2] for r in rows], [r[3] for r in rows]
    assert average_certified_radius(radius, correct) == pytest.approx((0.8 + 0.3) / 4)
    assert certified_accuracy(radius, correct, [0.0, 0.3, 0.5, 1.0]).tolist() == [0.5, 0.5, 0.25, 0.0]
    summary = summarize_certification(rows, radii=(0.0, 0.5))
    assert summary == {
        "examples": 4,
        "acr": pytest.approx(0.275),
        "abstain": 0.25,
        "certified_accuracy": {"0": 0.5, "0.5": 0.25},
    }
    assert average_certified_radius([], []) == 0.0


def test_cohen_tsv_log_reads_and_checks(tmp_path):
    path = tmp_path / "log"
    path.write_text(
        "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
        "0\t7\t7\t0.953\t1\t0:00:00.591566\n"
        "20\t2\t-1\t0.0\t0\t0:01:02.5\n"
    )
    rows = read_certify_log(path)
    assert [r.idx for r in rows] == [0, 20] and rows[1].predict == -1
    assert rows[0].time == pytest.approx(0.591566) and rows[1].time == pytest.approx(62.5)
    assert summarize_certification(rows)["acr"] == pytest.approx(0.953 / 2)
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t3\t0.5\t1\t0:00:01\n")
    with pytest.raises(SmoothinfError, match="correct 1 but predict 3"):
        read_certify_log(path)
    path.write_text("a\tb\n")
    with pytest.raises(SmoothinfError, match="header"):
        read_certify_log(path)
    assert math.isclose(summarize_certification([])["acr"], 0.0)


def test_macer_gradient_stays_finite_when_a_soft_vote_saturates():
    """An example whose beta-softmax is exactly one-hot (q_1 = 1, q_2 = 0) leaves the hinge; its
    infinite Phi^-1 must not turn the gradient into NaN (the reference recomputes on the kept rows)."""
    z = torch.tensor([[40.0, 0.0, -40.0], [0.2, 0.1, 0.0]], requires_grad=True)
    logits = z.repeat(2, 1)
    loss = macer_loss(logits, torch.tensor([0, 0]), 2, 0.5, 16.0, 8.0, 16.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
