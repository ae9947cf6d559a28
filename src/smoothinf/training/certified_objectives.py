"""Training objectives for certified robustness of the smoothed classifier (randomized smoothing).

Each objective draws m Gaussian noise vectors n_1..n_m (std sigma, pixel units) per batch and keeps
them for the whole step: the attack (when there is one) and the loss see the same draws, as in the
reference code of every method below. Forwards of the m noisy copies run as one batch of m * N rows,
draw-major (rows j*N .. (j+1)*N - 1 are x + n_j). p_j = softmax f(x + n_j), pbar = mean_j p_j.

* consistency (Jeong & Shin 2020; smoothing-consistency ``consistency_loss``, loss='default'):
  mean_j CE(f(x + n_j), y) + mean_i [lambda * mean_j KL(pbar || p_j) + eta * H(pbar)].
* smoothmix (Jeong et al. 2021; smoothmix ``code/train.py``): L2 PGD of T steps of size alpha on
  -log pbar_y(x') (no ball), from x with the batch's draws; x0 = x (mix_step 0) or the iterate after
  one step, inside the L2 ball of radius alpha * mix_step * w; with lam ~ U[0, 1/2) per example,
  x_mix = (1 - lam) x0 + lam x_T and target t = (1 - lam) pbar(x) + lam / K (pbar(x) not detached);
  loss = mean_j CE(f(x + n_j), y) + eta * w * mean_{i,j} 1[argmax pbar(x_i) = y_i] KL(t_i || p_j(x_mix_i)),
  w = min(1, (epoch + 1) / warmup) (1 without warm-up).
* macer (Zhai et al. 2020; RuntianZ/macer ``macer_train``): (1/N) [sum_i -log(pbar_y(x_i) + 1e-10)
  + lambda * sigma / 2 * sum_{i in H} (Phi^-1(q_2) - Phi^-1(q_1) + gamma)], q = mean_j
  softmax(beta f(x + n_j)) with top two q_1 >= q_2, H = examples whose top class is y and with a
  finite |Phi^-1(q_2) - Phi^-1(q_1)| <= gamma (the hinge); lambda = 0 for the first
  ``deferred_epochs`` epochs.
* smoothadv with ``attack_noise="shared"`` (Salman et al. 2019; smoothing-adversarial
  ``train_pgd.py`` + ``PGD_L2._attack_mutlinoise``): PGD of T steps from x (no random start) on
  -log pbar_y(x') with the batch's draws, step 2 eps_t / T (unless given), projected on the eps_t
  ball and [0, 1]; eps_t = eps * min(1, (epoch + 1) / warmup); the loss is (1 - w) mean_j
  CE(f(x + n_j), y) + w mean_j CE(f(x_adv + n_j), y) on the same draws (w = 1 in their code).

Objectives whose loss depends on the epoch (warm-up, MACER's deferral) carry ``set_epoch(epoch)``
(0-based), to be called at the start of every epoch; they refuse to run before it is called.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from smoothinf.attacks.base import attack_mode, project
from smoothinf.errors import ConfigError
from smoothinf.noise import NoiseDistribution
from smoothinf.training.step import Step, frozen_forward

__all__ = [
    "EpochClock",
    "consistency",
    "consistency_regularizer",
    "macer",
    "macer_loss",
    "smoothadv_shared",
    "smoothed_pgd",
    "smoothmix",
]


class EpochClock:
    """The current epoch (0-based) of an objective whose loss changes with it; ``set_epoch`` is
    attached to the objective. ``epoch`` refuses to answer before the first ``set_epoch``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch must be an integer >= 0, got {epoch!r}")
        self._epoch = epoch

    @property
    def epoch(self) -> int:
        if self._epoch is None:
            raise ConfigError(
                f"the {self.name} objective changes with the epoch (warm-up / deferral): call"
                " objective.set_epoch(epoch) at the start of every epoch"
            )
        return self._epoch

    def ramp(self, warmup: int) -> float:
        """min(1, (epoch + 1) / warmup), the reference codes' linear warm-up; 1.0 when warmup <= 0
        (then no epoch is needed)."""
        return 1.0 if warmup <= 0 else min(1.0, (self.epoch + 1) / warmup)


def _check_draws(m: int) -> int:
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"the number of noise draws m must be an integer >= 1, got {m!r}")
    return m


def _draws(x: torch.Tensor, m: int, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """m * N Gaussian noise rows of std sigma, draw-major (rows j*N.. are n_j)."""
    shape = (m * x.shape[0], *x.shape[1:])
    return NoiseDistribution("gaussian", sigma).sample(shape, generator, x.device, x.dtype)


def _copies(x: torch.Tensor, m: int) -> torch.Tensor:
    return x.repeat(m, *([1] * (x.dim() - 1)))


def _mean_softmax(logits: torch.Tensor, m: int) -> torch.Tensor:
    """(m * N, K) draw-major logits -> (N, K) mean of the m softmaxes."""
    return F.softmax(logits, dim=1).view(m, -1, logits.shape[1]).mean(0)


def smoothed_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    step_size: float,
    eps: float | None = None,
    norm: str = "l2",
    keep_step: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD on the soft smoothed classifier with fixed draws: maximise -log pbar_y(x') where
    pbar = mean_j softmax f(x' + n_j) over the m draws in ``noise`` ((m * N, ...), draw-major; the
    same draws at every step). Starts at x (no random start); each step adds ``step_size`` times
    the gradient normalised per example (L2: g / (||g||_2 + 1e-8), as the reference codes; linf:
    sign(g)), then projects on the ``eps`` ball of ``norm`` (None: no ball) and on [0, 1].

    Returns (x_keep, x_T): the iterate after ``keep_step`` steps (x when None or >= steps) and the
    last iterate, both detached. Runs in eval mode without parameter gradients.
    """
    if norm not in ("l2", "linf"):
        raise ConfigError(f"unknown norm {norm!r}; use l2 or linf")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0, got {steps!r}")
    m = noise.shape[0] // x.shape[0]
    base = getattr(model, "module", model)
    adv, kept = x.detach(), x.detach()
    with attack_mode(base):
        for i in range(steps):
            if i == keep_step:
                kept = adv
            adv = adv.clone().requires_grad_(True)
            pbar = _mean_softmax(base(_copies(adv, m) + noise), m)
            loss = F.nll_loss(torch.log(pbar.clamp(min=1e-20)), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, [adv])
            if norm == "l2":
                step = grad / (grad.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1))) + 1e-8)
            else:
                step = grad.sign()
            adv = adv.detach() + step_size * step
            if eps is not None:
                adv = x + project(adv - x, eps, norm)
            adv = adv.clamp(0.0, 1.0).detach()
    return kept, adv


def _step(loss: torch.Tensor, pbar: torch.Tensor, y: torch.Tensor, adv_correct: int | None = None) -> Step:
    """The batch's Step; clean accuracy is that of the soft smoothed prediction argmax pbar."""
    return Step(loss, int((pbar.argmax(1) == y).sum()), adv_correct)


def consistency_regularizer(logits: torch.Tensor, m: int, lbd: float, eta: float) -> torch.Tensor:
    """mean_i [lbd * mean_j KL(pbar_i || p_j,i) + eta * H(pbar_i)] from (m * N, K) draw-major logits
    (smoothing-consistency's ``consistency_loss``, loss='default'; pbar is not detached and the
    entropy clamps pbar at 1e-20 inside the log)."""
    log_p = F.log_softmax(logits, dim=1)
    pbar = _mean_softmax(logits, m)
    kl = F.kl_div(log_p, _copies(pbar, m), reduction="none").sum(1).view(m, -1).mean(0)
    entropy = -(pbar * torch.log(pbar.clamp(min=1e-20))).sum(1)
    return (lbd * kl + eta * entropy).mean()


def consistency(sigma: float, m: int = 2, lbd: float = 10.0, eta: float = 0.5) -> Callable:
    """Consistency regularisation (Jeong & Shin 2020): mean CE over the m noisy copies plus
    ``consistency_regularizer`` (see the module docstring)."""
    m = _check_draws(m)
    if m < 2:
        raise ConfigError("consistency compares noisy copies: it needs m_train >= 2")

    def step(model, x, y, generator=None):
        logits = model(_copies(x, m) + _draws(x, m, sigma, generator))
        loss = F.cross_entropy(logits, _copies(y, m)) + consistency_regularizer(logits, m, lbd, eta)
        return _step(loss, _mean_softmax(logits.detach(), m), y)

    return step


def smoothmix(
    sigma: float,
    m: int = 4,
    steps: int = 8,
    step_size: float = 1.0,
    eta: float = 1.0,
    mix_step: int = 0,
    warmup: int = 10,
    max_norm: float | None = None,
) -> Callable:
    """SmoothMix (Jeong et al. 2021), see the module docstring; ``step_size`` is their ``alpha``,
    ``max_norm`` their ``maxnorm`` (None: the attack is unbounded, as in every published run)."""
    m = _check_draws(m)
    if mix_step < 0:
        raise ConfigError(f"mix_step must be >= 0, got {mix_step}")
    clock = EpochClock("smoothmix")

    def step(model, x, y, generator=None):
        ramp = clock.ramp(warmup)
        noise = _draws(x, m, sigma, generator)
        x0, x_adv = smoothed_pgd(model, x, y, noise, steps, step_size, max_norm, "l2", keep_step=mix_step)
        x0 = (x + project(x0 - x, step_size * mix_step * ramp, "l2")).clamp(0.0, 1.0)
        logits = model(_copies(x, m) + noise)
        pbar = _mean_softmax(logits, m)
        lam = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) / 2
        lam_x = lam.view(-1, *([1] * (x.dim() - 1)))
        x_mix = (1 - lam_x) * x0 + lam_x * x_adv
        target = (1 - lam[:, None]) * pbar + lam[:, None] / logits.shape[1]
        log_p_mix = F.log_softmax(model(_copies(x_mix, m) + noise), dim=1)
        correct = (pbar.argmax(1) == y).to(x.dtype)
        mix = F.kl_div(log_p_mix, _copies(target, m), reduction="none").sum(1)
        loss = F.cross_entropy(logits, _copies(y, m)) + eta * ramp * (_copies(correct, m) * mix).mean()
        return _step(loss, pbar.detach(), y)

    step.set_epoch = clock.set_epoch  # type: ignore[attr-defined]
    return step


def macer_loss(
    logits: torch.Tensor, y: torch.Tensor, m: int, sigma: float, lbd: float, gamma: float, beta: float
) -> torch.Tensor:
    """MACER's loss from (m * N, K) draw-major logits (see the module docstring): classification
    term on the mean softmax plus lbd * sigma / 2 * the hinge on the soft certified radius, both
    summed over the batch and divided by N. lbd = 0 skips the hinge."""
    n = y.shape[0]
    pbar = _mean_softmax(logits, m)
    loss = F.nll_loss(torch.log(pbar + 1e-10), y, reduction="sum")
    if lbd != 0:
        q = _mean_softmax(beta * logits, m)
        top, idx = q.topk(2, dim=1)
        hit = idx[:, 0] == y
        q1, q2 = top[hit, 0], top[hit, 1]
        with torch.no_grad():  # select first: the gradient of Phi^-1 at q = 0 or 1 is infinite
            gap = torch.special.ndtri(q2) - torch.special.ndtri(q1)
            active = torch.isfinite(gap) & (gap.abs() <= gamma)
        q1, q2 = q1[active], q2[active]
        hinge = (torch.special.ndtri(q2) - torch.special.ndtri(q1) + gamma).sum() * sigma / 2
        loss = loss + lbd * hinge
    return loss / n


def macer(
    sigma: float,
    m: int = 16,
    lbd: float = 16.0,
    gamma: float = 8.0,
    beta: float = 16.0,
    deferred_epochs: int = 0,
) -> Callable:
    """MACER (Zhai et al. 2020), see the module docstring; ``deferred_epochs``: epochs trained
    with lbd = 0 first (the SmoothMix authors' ``--deferred`` runs: 31, their ``epoch <= 30``)."""
    m = _check_draws(m)
    if gamma < 0 or beta <= 0 or lbd < 0:
        raise ConfigError(f"macer needs lambda >= 0, gamma >= 0 and beta > 0; got {lbd}, {gamma}, {beta}")
    clock = EpochClock("macer")

    def step(model, x, y, generator=None):
        weight = lbd if deferred_epochs <= 0 or clock.epoch >= deferred_epochs else 0.0
        logits = model(_copies(x, m) + _draws(x, m, sigma, generator))
        loss = macer_loss(logits, y, m, sigma, weight, gamma, beta)
        return _step(loss, _mean_softmax(logits.detach(), m), y)

    step.set_epoch = clock.set_epoch  # type: ignore[attr-defined]
    return step


def smoothadv_shared(
    sigma: float,
    eps: float,
    m: int = 4,
    steps: int = 10,
    step_size: float | None = None,
    weight: float = 1.0,
    norm: str = "l2",
    warmup: int = 0,
) -> Callable:
    """SmoothAdv-AT as Salman et al. train it (see the module docstring); ``step_size`` None is
    their 2 eps_t / steps, which follows the warm-up."""
    m = _check_draws(m)
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"adversarial weight must lie in [0, 1], got {weight}")
    clock = EpochClock("smoothadv")

    def step(model, x, y, generator=None):
        eps_t = eps * clock.ramp(warmup)
        alpha = 2 * eps_t / max(steps, 1) if step_size is None else step_size
        noise = _draws(x, m, sigma, generator)
        _, x_adv = smoothed_pgd(model, x, y, noise, steps, alpha, eps_t, norm)
        logits_adv = model(_copies(x_adv, m) + noise)
        loss = weight * F.cross_entropy(logits_adv, _copies(y, m))
        if weight < 1.0:
            logits = model(_copies(x, m) + noise)
            loss = loss + (1.0 - weight) * F.cross_entropy(logits, _copies(y, m))
            pbar = _mean_softmax(logits.detach(), m)
        else:
            pbar = _mean_softmax(frozen_forward(model, _copies(x, m) + noise), m)
        adv_correct = int((_mean_softmax(logits_adv.detach(), m).argmax(1) == y).sum())
        return _step(loss, pbar, y, adv_correct)

    step.set_epoch = clock.set_epoch  # type: ignore[attr-defined]
    return step
