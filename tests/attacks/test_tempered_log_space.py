"""Tempered expected softmax in log space on confident models (issue 38, item 3).

The ``Scaled`` wrapper multiplies a trained MNIST model's logits by 16: the same decisions, margins
of 37-216 (130-860 at T = 0.25), where float32 rounds every p_k of a wrong class to 0 and 1 - p_y to 0.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoothinf.attacks import APGD
from smoothinf.attacks.base import ce_loss, cw_loss, expected_loss
from smoothinf.noise.distributions import NoiseDistribution
from smoothinf.smoothing import SmoothedClassifier

N, M, SIGMA = 16, 8, 0.1
ONE_CHUNK, FOUR_CHUNKS = 10**6, 2 * N  # batch sizes: all 8 draws at once; 2 draws per chunk


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Scaled(nn.Module):
    """``model``'s logits times ``factor`` (N, K)."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = model, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.factor


def softmax_ce(model: nn.Module, x, y, batch_size: int, temperature: float, loss_fn=ce_loss):
    """``expected_loss`` of the expected tempered softmax over M draws of sigma 0.1 (seed 1)."""
    noise = NoiseDistribution.gaussian(SIGMA)
    return expected_loss(
        model, x, y, loss_fn, noise=noise, m=M, reduce="softmax", generator=gen(1),
        batch_size=batch_size, temperature=temperature,
    )  # fmt: skip


def directions(grad: torch.Tensor) -> torch.Tensor:
    """Each example's gradient over its largest entry (N, C*H*W), float64."""
    flat = grad.double().flatten(1)
    return flat / flat.abs().amax(1, keepdim=True)


def test_tempered_ce_gradient_survives_a_confident_model_on_both_paths(mnist_small_model):
    """T = 0.25 on the x16 model: every example keeps a gradient, one batch or four chunks, and the
    two paths agree (old code: 1 of 16 examples had a non-zero gradient on either path)."""
    model, x, y = mnist_small_model
    scaled, x, y = Scaled(model, 16.0), x[:N], y[:N]
    single = softmax_ce(scaled, x, y, ONE_CHUNK, 0.25)
    chunked = softmax_ce(scaled, x, y, FOUR_CHUNKS, 0.25)
    for grad, loss, probs in (single, chunked):
        assert (grad.flatten(1).abs().amax(1) > 0).all()
        assert torch.isfinite(grad).all() and (loss >= 0).all()
        torch.testing.assert_close(probs.sum(1), torch.ones(N))
    torch.testing.assert_close(directions(chunked[0]), directions(single[0]), rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked[1], single[1], rtol=1e-4, atol=0)


def test_saturated_ce_gradient_has_the_float64_direction(mnist_small_model):
    """T = 0.5 on the x16 model (margins up to ~430: float64 still holds exp(-margin)): on both paths
    each example's float32 gradient points where the float64 autograd gradient of the same draws
    does; old code: 2 (one batch) and 1 (four chunks) of 16 examples had a non-zero gradient."""
    model, x, y = mnist_small_model
    x, y = x[:N], y[:N]
    eta = NoiseDistribution.gaussian(SIGMA).sample((M, *x.shape), gen(1))  # the draws expected_loss takes
    exact = copy.deepcopy(model).double()
    xd = x.double().requires_grad_(True)
    logits = torch.stack([exact(xd + e.double()) for e in eta]) * 16.0 / 0.5
    log_pbar = torch.logsumexp(logits.log_softmax(-1), 0) - math.log(M)
    (reference,) = torch.autograd.grad(F.cross_entropy(log_pbar, y, reduction="none").sum(), xd)
    assert (reference.flatten(1).abs().amax(1) > 0).all()
    ref = directions(reference)  # over the largest entry first: a float64 norm of denormals is 0
    unit = ref / ref.norm(dim=1, keepdim=True)
    for batch_size in (ONE_CHUNK, FOUR_CHUNKS):
        grad = directions(softmax_ce(Scaled(model, 16.0), x, y, batch_size, 0.5)[0])
        cosine = (grad / grad.norm(dim=1, keepdim=True) * unit).sum(1)
        assert cosine.min() > 1 - 1e-6, batch_size


@pytest.mark.parametrize("temperature", [0.25, 1.0])
def test_single_and_chunked_paths_agree_on_a_normal_scale_model(mnist_small_model, temperature):
    """Same draws (checked), one batch vs four chunks: the same loss, gradient and mean probabilities,
    for CE (log-odds form) and CW (any other loss)."""
    model, x, y = mnist_small_model
    x, y = x[:N], y[:N]
    noise = NoiseDistribution.gaussian(SIGMA)
    g = gen(1)
    in_chunks = torch.cat([noise.sample((2, *x.shape), g) for _ in range(M // 2)])
    assert torch.equal(noise.sample((M, *x.shape), gen(1)), in_chunks)  # the premise of the comparison
    for loss_fn in (ce_loss, cw_loss):
        grad, loss, probs = softmax_ce(model, x, y, ONE_CHUNK, temperature, loss_fn)
        c_grad, c_loss, c_probs = softmax_ce(model, x, y, FOUR_CHUNKS, temperature, loss_fn)
        assert (grad.flatten(1).abs().amax(1) > 0).all()
        torch.testing.assert_close(c_grad, grad, rtol=1e-4, atol=1e-6 * grad.abs().max().item())
        torch.testing.assert_close(c_loss, loss, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(c_probs, probs, rtol=1e-5, atol=1e-6)


def test_ce_value_and_gradient_in_log_odds_form():
    """Two classes, no noise, margins z_0 - z_1 = 7.5 and 50 at T = 0.25 (30 and 200 tempered):
    CE = softplus(-30) = 9.4e-14 (old code: 0, as p_y rounds to 1) with its exact gradient
    sigmoid(-30) (w_1 - w_0) / T; at 200 the gradient keeps that direction at the floor
    sqrt(float32 tiny) = 1.08e-19 (old code: 0)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    w = torch.tensor([[40.0, 20.0], [-20.0, 0.0]])
    with torch.no_grad():
        model[1].weight.copy_(w)
    x = torch.tensor([[0.125, 0.0], [0.5, 1.0]]).view(2, 1, 1, 2)
    y = torch.zeros(2, dtype=torch.long)
    tempered = torch.tensor([30.0, 200.0])
    with torch.no_grad():
        assert torch.equal((model(x)[:, 0] - model(x)[:, 1]) / 0.25, tempered)
    floor = torch.finfo(torch.float32).tiny ** 0.5
    expected = torch.sigmoid(-tempered).clamp_min(floor)[:, None] * (w[1] - w[0]) / 0.25
    assert expected[0].abs().min() > 1e-13 and expected[1].abs().max() < 1e-16
    for batch_size in (ONE_CHUNK, 2):  # one batch of 2 draws; one draw per chunk
        grad, loss, probs = expected_loss(
            model, x, y, ce_loss, noise=None, m=2, reduce="softmax", generator=gen(0),
            batch_size=batch_size, temperature=0.25,
        )  # fmt: skip
        torch.testing.assert_close(loss, F.softplus(-tempered), rtol=1e-5, atol=0)
        assert loss[0] > 9e-14
        torch.testing.assert_close(grad.flatten(1), expected, rtol=1e-5, atol=0)
        torch.testing.assert_close(probs[:, 1], torch.sigmoid(-tempered), rtol=1e-5, atol=0)


def test_tempered_apgd_moves_on_a_confident_model(mnist_small_model):
    """APGD-CE at T = 0.25 on the x16 model against its hard vote: it fools most images and is within
    one image of T = 1 (old code: 14 and 6 of the 15 images left right; now 2 and 2). The x16 model at
    T = 1 is already the plain model at T = 1/16, so the two are close surrogates: over eps
    0.08-0.12 and two seeds T = 0.25 left 0-4 more of 32 images right than T = 1, not fewer."""
    model, x, y = mnist_small_model
    scaled, x, y = Scaled(model, 16.0).eval(), x[:N], y[:N]
    judge = SmoothedClassifier(scaled, sigma=SIGMA, m=16, vote="hard")
    clean = int((judge.predict(x, gen(9)) == y).sum())
    assert clean >= 14
    right = {}
    for t in (0.25, 1.0):
        attack = APGD(scaled, 0.15, 20, noise=SIGMA, m=M, reduce="softmax", temperature=t, judge=judge)
        right[t] = int((judge.predict(attack(x, y, gen(0)), gen(9)) == y).sum())
    assert right[0.25] <= clean // 4
    assert right[0.25] <= right[1.0] + 1
