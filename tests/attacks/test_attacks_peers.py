"""Interop with peer libraries (torchattacks, AutoAttack) and the smoothing / noise areas.

Each test skips cleanly when the peer package or the area it needs is missing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothinf.attacks import EPGD, PGD, AutoAttackAdapter, SmoothAdv, robust_accuracy
from smoothinf.errors import SmoothinfError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> bool:
    return bool((x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1)


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_our_pgd_at_least_as_strong_as_torchattacks(mnist_small_model):
    ta = pytest.importorskip("torchattacks")
    model, x, y = mnist_small_model
    x, y = x[:200], y[:200]
    eps, alpha, steps = 0.1, 0.01, 20
    torch.manual_seed(0)
    theirs = _acc(model, ta.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y), y)
    ours = _acc(model, PGD(model, eps, alpha=alpha, steps=steps)(x, y, gen(0)), y)
    assert theirs < 0.9  # the attack does something at this eps
    assert ours <= theirs + 0.01, (ours, theirs)


def test_smoothed_classifier_works_in_torchattacks_and_ours(mnist_small_model):
    ta = pytest.importorskip("torchattacks")
    try:
        from smoothinf.smoothing import SmoothedClassifier
    except ImportError:
        pytest.skip("smoothing area missing")
    model, x, y = mnist_small_model
    x, y = x[:32], y[:32]
    smoothed = SmoothedClassifier(model, sigma=0.25, m=8, vote="soft")
    eps = 0.2
    for attack in (
        ta.PGD(smoothed, eps=eps, alpha=0.05, steps=5),
        ta.EOTPGD(smoothed, eps=eps, alpha=0.05, steps=3, eot_iter=2),
    ):
        x_adv = attack(x, y)
        assert in_ball(x_adv, x, eps)
    # Our PGD on the soft smoothed classifier, and EPGD / SmoothAdv unwrapping it.
    epgd = EPGD(smoothed, eps=eps, steps=5)
    assert epgd.m == 8 and epgd.noise.sigma == 0.25 and epgd.model is model
    smoothadv = SmoothAdv(smoothed, eps=eps, steps=5)
    attacks = {"pgd": PGD(smoothed, eps, steps=5), "epgd": epgd, "smoothadv": smoothadv}
    judged = robust_accuracy(smoothed, x, y, attacks, generator=gen(0))
    assert judged.worst_case_accuracy < judged.clean_accuracy - 0.2
    assert judged.worst_case_accuracy <= min(judged.accuracy.values())


def test_noise_model_works_in_torchattacks_eotpgd_and_switch_restored(mnist_small_model):
    ta = pytest.importorskip("torchattacks")
    try:
        from smoothinf.noise import inject_noise, set_noise
    except ImportError:
        pytest.skip("noise-injection area missing")
    import copy

    base, x, y = mnist_small_model
    x, y = x[:32], y[:32]
    model = inject_noise(copy.deepcopy(base), "pni-w")
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.equal(a, b)  # noise stays on in eval mode
    eps = 0.1
    x_adv = ta.EOTPGD(model, eps=eps, alpha=0.02, steps=3, eot_iter=2)(x, y)
    assert in_ball(x_adv, x, eps)
    assert in_ball(PGD(model, eps, steps=3, eot_iter=4)(x, y, gen(0)), x, eps)
    # Our attacks leave the switch as they found it.
    set_noise(model, False)
    PGD(model, eps, steps=2, eot_iter=2)(x, y, gen(0))
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_autoattack_adapter_runs_official_package(mnist_small_model):
    pytest.importorskip("pyautoattack")
    model, x, y = mnist_small_model
    x, y = x[:40], y[:40]
    eps = 0.1
    adapter = AutoAttackAdapter(model, norm="linf", eps=eps, version="custom", attacks=["apgd-ce"], seed=0)
    x_adv = adapter(x, y)
    assert in_ball(x_adv, x, eps)
    aa = _acc(model, x_adv, y)
    ours = _acc(model, PGD(model, eps, alpha=0.01, steps=20)(x, y, gen(0)), y)
    assert aa < _acc(model, x, y) - 0.1
    assert aa <= ours + 0.05, (aa, ours)  # APGD-CE (100 iterations) is at least as strong as PGD-20
    with pytest.raises(SmoothinfError, match="custom"):
        AutoAttackAdapter(model, eps=eps, version="custom")
    with pytest.raises(SmoothinfError, match="norm"):
        AutoAttackAdapter(model, norm="l0", eps=eps)


def test_autoattack_custom_square_on_a_randomised_model_drops_only_the_rand_advice(mnist_small_model, caplog):
    """Square as a black-box check on a randomised model is chosen on purpose: AutoAttack's advice to
    use version="rand" is dropped for that call, and its logger keeps no filter afterwards."""
    import logging

    pytest.importorskip("pyautoattack")
    model, x, y = mnist_small_model

    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.inner(z) + 0.1 * torch.randn(z.shape[0], 10)

    logger = logging.getLogger("auto-attack")
    filters = list(logger.filters)
    with caplog.at_level(logging.WARNING, logger="auto-attack"):
        AutoAttackAdapter(Noisy(), eps=0.1, version="custom", attacks=["square"], square_queries=5, seed=0)(
            x[:8], y[:8]
        )
    assert not [r for r in caplog.records if "randomized defense" in r.getMessage()]
    assert logger.filters == filters
    # the advice itself still reaches the log when the filter is not in place (the check is real)
    with caplog.at_level(logging.WARNING, logger="auto-attack"):
        from pyautoattack import checks

        checks.check_randomized(Noisy(), x[:8], y[:8], logger=logger)
    assert [r for r in caplog.records if "randomized defense" in r.getMessage()]
