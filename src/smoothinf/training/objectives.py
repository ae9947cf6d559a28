"""Training objectives: each maps (model, x, y, generator) to a scalar loss and batch statistics.

* standard: CE(f(x), y).
* gaussian_augmentation(sigma): CE(f(x + N(0, sigma^2)), y) (noise in pixel units, not clipped).
* adversarial(attack, weight): (1 - w) CE(f(x), y) + w CE(f(x_adv), y) (paper eq. 6; w = 1 is Madry).
* trades(attack_kwargs, beta): CE(f(x), y) + beta * KL(p(x) || p(x_adv)), x_adv maximising the KL.
* fgsm / fgsm-rs / n-fgsm: single-step adversarial training (``training.single_step``), eq. 6.
* cni_iw = adversarial training with Gaussian input noise (paper eq. 23), and epgd / smoothadv
  adversarial training: ``adversarial`` with an EPGD / SmoothAdv attack and/or input noise.
The inner attack runs with the model in eval mode (batch-norm statistics) and noise on; the attack
restores the training mode afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from smoothinf.attacks import EPGD, PGD, SmoothAdv
from smoothinf.errors import ConfigError
from smoothinf.noise import NoiseDistribution

OBJECTIVES = (
    "standard",
    "gaussian",
    "adversarial",
    "trades",
    "cni-iw",
    "epgd",
    "smoothadv",
    "fgsm",
    "fgsm-rs",
    "n-fgsm",
)


@dataclass
class Step:
    """The loss to minimise and the statistics of one batch (accuracies on clean / adversarial)."""

    loss: torch.Tensor
    clean_correct: int
    adv_correct: int | None = None


Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator | None], Step]


def _noisy(x: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    if sigma <= 0:
        return x
    return x + NoiseDistribution("gaussian", sigma).sample(x.shape, generator, x.device, x.dtype)


def standard(sigma: float = 0.0) -> Objective:
    """CE on clean inputs, or on Gaussian-augmented inputs when sigma > 0."""

    def step(model, x, y, generator=None):
        logits = model(_noisy(x, sigma, generator))
        return Step(F.cross_entropy(logits, y), int((logits.argmax(1) == y).sum()))

    return step


def adversarial(
    make_attack: Callable[[nn.Module], Callable], weight: float = 0.5, sigma: float = 0.0
) -> Objective:
    """(1 - w) CE(f(x + n), y) + w CE(f(x_adv + n), y); n ~ N(0, sigma^2) when sigma > 0 (eq. 23)."""
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"adversarial weight must lie in [0, 1], got {weight}")

    def step(model, x, y, generator=None):
        # The attack runs on the plain module (a DDP wrapper would expect a parameter backward).
        x_adv = make_attack(getattr(model, "module", model))(x, y, generator=generator).detach()
        logits_adv = model(_noisy(x_adv, sigma, generator))
        loss = weight * F.cross_entropy(logits_adv, y)
        logits = None
        if weight < 1.0:
            logits = model(_noisy(x, sigma, generator))
            loss = loss + (1.0 - weight) * F.cross_entropy(logits, y)
        else:
            with torch.no_grad():
                logits = model(x)
        return Step(loss, int((logits.argmax(1) == y).sum()), int((logits_adv.argmax(1) == y).sum()))

    return step


def trades(
    eps: float,
    alpha: float,
    steps: int,
    beta: float = 6.0,
    make_attack: Callable[[nn.Module, Callable], Callable] | None = None,
) -> Objective:
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(p(x) || p(x_adv)) with KL-PGD x_adv.

    ``make_attack(model, kl_loss)`` builds the inner maximiser (default: L_inf PGD on the KL).
    """
    if make_attack is None:
        make_attack = lambda model, loss: PGD(model, eps, alpha, steps, loss=loss)  # noqa: E731

    def step(model, x, y, generator=None):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        model.train(was_training)

        def kl_loss(logits: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
            return (p_clean * (torch.log(p_clean + 1e-12) - F.log_softmax(logits, dim=1))).sum(1)

        x_adv = make_attack(getattr(model, "module", model), kl_loss)(x, y, generator=generator).detach()
        logits = model(x)
        logits_adv = model(x_adv)
        kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
        loss = F.cross_entropy(logits, y) + beta * kl
        return Step(loss, int((logits.argmax(1) == y).sum()), int((logits_adv.argmax(1) == y).sum()))

    return step


def build_objective(
    name: str,
    eps: float = 0.3,
    alpha: float | None = None,
    steps: int = 10,
    weight: float = 0.5,
    beta: float = 6.0,
    sigma: float = 0.0,
    m_train: int = 8,
    start_noise: float | None = None,
    grad_align: float = 0.0,
) -> Objective:
    """An objective by name: standard | gaussian | adversarial | trades | cni-iw | epgd | smoothadv
    | fgsm | fgsm-rs | n-fgsm. For the single-step ones alpha / start_noise None take the method's
    defaults (fgsm-rs: 1.25 eps, start U[-eps, eps]; n-fgsm: eps, start U[-2 eps, 2 eps]) and
    grad_align > 0 adds GradAlign with that weight."""
    if name in ("fgsm", "fgsm-rs", "n-fgsm"):
        from smoothinf.training.single_step import single_step, single_step_perturbation

        return single_step(single_step_perturbation(name, eps, alpha, start_noise), weight, grad_align)
    alpha = 2.5 * eps / steps if alpha is None else alpha
    if name == "standard":
        return standard()
    if name == "gaussian":
        if sigma <= 0:
            raise ConfigError("the gaussian objective needs --sigma > 0 (pixel units)")
        return standard(sigma)
    if name in ("adversarial", "cni-iw"):
        if name == "cni-iw" and sigma <= 0:
            raise ConfigError("cni-iw (adversarial training with input noise) needs --sigma > 0")
        return adversarial(lambda model: PGD(model, eps, alpha, steps), weight, sigma)
    if name == "trades":
        return trades(eps, alpha, steps, beta)
    if name in ("epgd", "smoothadv"):
        cls = EPGD if name == "epgd" else SmoothAdv
        noise = NoiseDistribution("gaussian", sigma)
        return adversarial(lambda model: cls(model, noise, m_train, eps, alpha, steps), weight)
    raise ConfigError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
