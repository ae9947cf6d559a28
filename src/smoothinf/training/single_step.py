"""Single-step adversarial training: FGSM, FGSM-RS (Wong et al. 2020) and N-FGSM (de Jorge et al. 2022).

All three are one perturbation, ``SingleStep(eps, alpha, start, project)``, with different parameters:

========  ===============================  ==============  ============================  ===========
method    start delta_0 (L_inf)            step alpha      projection to the eps-ball    ||delta||
========  ===============================  ==============  ============================  ===========
fgsm      0                                eps             yes                           <= eps
fgsm-rs   U[-eps, eps]                     1.25 eps        yes                           <= eps
n-fgsm    U[-k eps, k eps], k = 2          eps             no (pixels clamped to [0,1])  <= (k+1) eps
========  ===============================  ==============  ============================  ===========

x_adv = clip(x + delta_0 + alpha * sign(grad_x CE(f(x + delta_0), y))); clip is the eps-ball and
[0, 1] (projected) or [0, 1] only (N-FGSM). Two passes per training step (one gradient for the
attack, one for the update) against k + 1 for PGD-AT with k steps. The objective is eq. 6,
(1 - w) CE(f(x), y) + w CE(f(x_adv), y), through ``objectives.adversarial``.

GradAlign (Andriushchenko & Flammarion 2020) adds lambda * (1 - cos(grad_x CE(f(x)), grad_x
CE(f(x + eta))), eta ~ U[-eps, eps]) to the loss. Its cost: one more input gradient and one double
backward per step (its time against an N-FGSM step: ``benchmarks/results/single_step.md``).

Like every attack here, the perturbation is computed with the model in eval mode (batch-norm
running statistics; noise layers on) and the modes are restored afterwards; the papers' code keeps
the model in train mode for the attack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from smoothinf.attacks.base import (
    attack_mode,
    ce_loss,
    check_eps,
    clip_to_threat,
    ensure_generator,
    expected_loss,
    random_start,
    steepest_step,
)
from smoothinf.errors import ConfigError
from smoothinf.noise.draws import noise_layers

SINGLE_STEP_OBJECTIVES = ("fgsm", "fgsm-rs", "n-fgsm")
# (start radius in multiples of eps, step in multiples of eps, projected to the eps-ball)
_PRESETS: dict[str, tuple[float, float, bool]] = {
    "fgsm": (0.0, 1.0, True),
    "fgsm-rs": (1.0, 1.25, True),
    "n-fgsm": (2.0, 1.0, False),
}


@dataclass
class SingleStep:
    """One-step L_inf perturbation ``perturb(model, x, y, generator) -> x_adv`` (N,C,H,W) in [0, 1].

    Args:
        eps: radius of the threat model (pixel units).
        alpha: the signed-gradient step (pixel units). Mutable: the CO guard may shrink it.
        start: the uniform start's radius in multiples of eps (0: no random start).
        project: project the result onto the eps-ball around x (False: N-FGSM, |delta| <= start*eps + alpha).
    """

    eps: float
    alpha: float
    start: float = 1.0
    project: bool = True

    def __post_init__(self) -> None:
        check_eps(self.eps)
        for name in ("alpha", "start"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"single-step {name} must be a finite number >= 0, got {value!r}")

    @property
    def bound(self) -> float:
        """The largest L_inf distance of x_adv from x (pixel units)."""
        return self.eps if self.project else self.start * self.eps + self.alpha

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        x = x.detach()
        gen = ensure_generator(generator, x.device)
        with attack_mode(model):
            x0 = random_start(x, self.start * self.eps, "linf", gen) if self.start > 0 else x
            grad = expected_loss(
                model,
                x0,
                y,
                ce_loss,
                noise=None,
                m=1,
                reduce="loss",
                generator=gen,
                batch_size=max(1, x.shape[0]),
                per_draw=bool(noise_layers(model)),
                need_probs=False,
            )[0]
        x_adv = x0 + steepest_step(grad, self.alpha, "linf")
        if self.project:
            return clip_to_threat(x_adv, x, self.eps, "linf")
        return x_adv.clamp(0.0, 1.0)


def single_step_perturbation(
    name: str, eps: float, alpha: float | None = None, start: float | None = None
) -> SingleStep:
    """The preset of ``name`` (fgsm | fgsm-rs | n-fgsm) with optional alpha / start overrides."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown single-step method {name!r}; choose one of {', '.join(_PRESETS)}")
    k, a, project = _PRESETS[name]
    return SingleStep(eps, a * eps if alpha is None else alpha, k if start is None else start, project)


def grad_align_penalty(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """GradAlign: mean over the batch of 1 - cos(grad_x CE(f(x)), grad_x CE(f(x + eta))), eta ~ U[-eps, eps].

    The second gradient keeps its graph (double backward), as in Andriushchenko & Flammarion's code;
    an example whose gradients are both zero contributes 0. Scalar tensor.
    """
    gen = ensure_generator(generator, x.device)
    x = x.detach()
    x1 = x.clone().requires_grad_(True)
    g1 = torch.autograd.grad(F.cross_entropy(model(x1), y), x1)[0].flatten(1)
    eta = (torch.rand(x.shape, generator=gen, device=gen.device) * 2 - 1).to(x) * eps
    x2 = (x + eta).requires_grad_(True)
    g2 = torch.autograd.grad(F.cross_entropy(model(x2), y), x2, create_graph=True)[0].flatten(1)
    nonzero = (g1.norm(dim=1) > 0) & (g2.norm(dim=1) > 0)
    cos = F.cosine_similarity(g1, g2, dim=1)
    return torch.where(nonzero, 1.0 - cos, torch.zeros_like(cos)).mean()
