"""Training objectives: each maps (model, x, y, generator) to a scalar loss and batch statistics.

* standard: CE(f(x), y).
* gaussian_augmentation(sigma): CE(f(x + N(0, sigma^2)), y) (noise in pixel units, not clipped).
* adversarial(attack, weight): (1 - w) CE(f(x), y) + w CE(f(x_adv), y) (paper eq. 6; w = 1 is Madry).
* trades(attack_kwargs, beta): CE(f(x), y) + beta * KL(p(x) || p(x_adv)), x_adv maximising the KL.
* cni-iw: adversarial training under Gaussian input noise (paper eq. 23). As in the reference code,
  whose noise sits inside the forward, the attack sees the noise too: its PGD follows the gradient
  of one noisy forward per step (EPGD with m = 1), and the loss is CE at one noisy draw.
* epgd / smoothadv (EPGD-AT, SmoothAdv-AT): x_adv from EPGD / SmoothAdv with m_train draws, and the
  loss is that of the smoothed classifier at x_adv (Salman et al. 2019): CE averaged over m_train
  noisy copies x_adv + n_j (and x + n_j for the clean term). They need sigma > 0.
  ``norm="l2"`` runs their attack in L2 (Salman et al.'s training threat model), ``warmup`` > 0 ramps
  eps linearly over that many epochs (Salman et al.: min(eps, (epoch + 1) eps / warmup)), and
  ``attack_noise="shared"`` trains smoothadv exactly as Salman et al.'s code: one set of m_train
  draws per batch for every attack step and for the loss, no random start, the last iterate, step
  2 eps / steps (``training.certified_objectives.smoothadv_shared``). The default ``"fresh"`` is
  this library's SmoothAdv attack (fresh draws every step, random start, strongest visited point).
* consistency / smoothmix / macer: certified-robustness training of the smoothed classifier
  (Jeong & Shin 2020, Jeong et al. 2021, Zhai et al. 2020), see ``training.certified_objectives``.
* fgsm / fgsm-rs / n-fgsm: single-step adversarial training (``training.single_step``), eq. 6.
The inner attack runs with the model in eval mode (batch-norm statistics) and noise on; the attack
restores the training mode afterwards. Batch-norm running statistics come only from the forwards
the loss uses (with w = 1 the clean accuracy is measured in eval mode, without touching them).
Input noise has one source: the objective's sigma, or a cni-i layer inside the model, never both
(``check_input_noise``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from smoothinf.attacks import EPGD, PGD, SmoothAdv
from smoothinf.errors import ConfigError
from smoothinf.noise import NoiseDistribution
from smoothinf.training.single_step import SingleStep, grad_align_penalty, single_step_perturbation
from smoothinf.training.step import Objective, Step, frozen_forward

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
    "consistency",
    "smoothmix",
    "macer",
)
# Objectives that add Gaussian input noise of std sigma themselves (they need sigma > 0).
INPUT_NOISE_OBJECTIVES = ("gaussian", "cni-iw", "epgd", "smoothadv", "consistency", "smoothmix", "macer")
# The attack's noise draws for smoothadv: fresh every step (this library's attack) or one shared set
# per batch for the attack and the loss (Salman et al.'s training code).
ATTACK_NOISE = ("fresh", "shared")


def _noisy(x: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    if sigma <= 0:
        return x
    return x + NoiseDistribution("gaussian", sigma).sample(x.shape, generator, x.device, x.dtype)


def _noisy_ce(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    draws: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean CE over ``draws`` noisy copies x + n_j of the batch, logits (N, K) of the first copy).

    The copies run as one forward of draws * N rows (draw-major), so batch-norm statistics and any
    weight noise are those of one training batch; draws = 1 is CE(f(x + n), y)."""
    rows = x if draws == 1 else x.repeat(draws, *([1] * (x.dim() - 1)))
    logits = model(_noisy(rows, sigma, generator))
    loss = F.cross_entropy(logits, y if draws == 1 else y.repeat(draws))
    return loss, logits[: x.shape[0]]


@torch.no_grad()
def standard(sigma: float = 0.0) -> Objective:
    """CE on clean inputs, or on Gaussian-augmented inputs when sigma > 0."""

    def step(model, x, y, generator=None):
        logits = model(_noisy(x, sigma, generator))
        return Step(F.cross_entropy(logits, y), int((logits.argmax(1) == y).sum()))

    return step


def adversarial(
    make_attack: Callable[[nn.Module], Callable], weight: float = 0.5, sigma: float = 0.0, draws: int = 1
) -> Objective:
    """(1 - w) L(x) + w L(x_adv) with L(x) = mean_j CE(f(x + n_j), y) over ``draws`` noise draws
    n_j ~ N(0, sigma^2) (no noise when sigma = 0: paper eq. 6; eq. 23 with it).

    With w = 1 (Madry) the clean batch is not trained on: its accuracy is measured in eval mode,
    so batch-norm running statistics see only the adversarial batches.
    """
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"adversarial weight must lie in [0, 1], got {weight}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ConfigError(f"draws must be an integer >= 1, got {draws!r}")

    def step(model, x, y, generator=None):
        # The attack runs on the plain module (a DDP wrapper would expect a parameter backward).
        x_adv = make_attack(getattr(model, "module", model))(x, y, generator=generator).detach()
        loss_adv, logits_adv = _noisy_ce(model, x_adv, y, sigma, draws, generator)
        loss = weight * loss_adv
        if weight < 1.0:
            loss_clean, logits = _noisy_ce(model, x, y, sigma, draws, generator)
            loss = loss + (1.0 - weight) * loss_clean
        else:
            logits = frozen_forward(model, _noisy(x, sigma, generator))
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
            # The attack may score stacked copies of the batch (draws, best-point candidates).
            p = p_clean.repeat(logits.shape[0] // p_clean.shape[0], 1)
            return (p * (torch.log(p + 1e-12) - F.log_softmax(logits, dim=1))).sum(1)

        x_adv = make_attack(getattr(model, "module", model), kl_loss)(x, y, generator=generator).detach()
        logits = model(x)
        logits_adv = model(x_adv)
        kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
        loss = F.cross_entropy(logits, y) + beta * kl
        return Step(loss, int((logits.argmax(1) == y).sum()), int((logits_adv.argmax(1) == y).sum()))

    return step


def check_input_noise(objective: str, sigma: float, layer_sigma: float | None) -> float:
    """The input-noise std the objective itself must add, given the std ``layer_sigma`` of the
    model's cni-i layer (None without one): one source of truth, never two stacked.

    Without a layer: ``sigma``. With one: 0.0 (the layer's noise is inside every forward, so the
    attack and the loss both see it, as in the reference code); an objective that adds its own
    input noise, or a ``sigma`` > 0 different from the layer's, is a ConfigError.
    """
    if layer_sigma is None:
        return sigma
    if objective in INPUT_NOISE_OBJECTIVES:
        raise ConfigError(
            f"objective {objective} adds Gaussian input noise itself, and the model already has a cni-i"
            f" input-noise layer (sigma {layer_sigma:g}): the two would stack; use --objective"
            " adversarial / standard / trades with the layer, or drop --noise cni-i"
        )
    if sigma > 0 and abs(sigma - layer_sigma) > 1e-9 * max(1.0, layer_sigma):
        raise ConfigError(
            f"--sigma {sigma:g} differs from the model's cni-i input-noise sigma {layer_sigma:g}; the"
            f" cni-i layer takes its std from --sigma: pass --sigma {layer_sigma:g} (or 0)"
        )
    return 0.0


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
    *,
    norm: str = "linf",
    attack_noise: str = "fresh",
    warmup: int = 0,
    consistency_lambda: float = 10.0,
    consistency_eta: float = 0.5,
    smoothmix_eta: float = 1.0,
    smoothmix_mix_step: int = 0,
    macer_lambda: float = 16.0,
    macer_gamma: float = 8.0,
    macer_beta: float = 16.0,
    macer_deferred_epochs: int = 0,
) -> Objective:
    """An objective by name: standard | gaussian | adversarial | trades | cni-iw | epgd | smoothadv
    | fgsm | fgsm-rs | n-fgsm | consistency | smoothmix | macer.

    ``sigma`` (pixel units) is the Gaussian input noise the objective adds: gaussian, cni-iw, epgd
    and smoothadv need sigma > 0; adversarial with sigma > 0 is cni-iw. With input noise the
    attack sees it too (cni-iw / adversarial: one draw per PGD step; epgd / smoothadv: m_train).
    For the single-step ones alpha / start_noise None take the method's defaults (fgsm-rs:
    1.25 eps, start U[-eps, eps]; n-fgsm: eps, start U[-2 eps, 2 eps]) and grad_align > 0 adds
    GradAlign with that weight.

    ``norm`` (linf | l2) is the threat model of the adversarial / epgd / smoothadv attacks;
    ``warmup`` > 0 ramps eps over that many epochs (epgd, smoothadv) or SmoothMix's mixup weight, and
    needs ``objective.set_epoch(epoch)`` every epoch; ``attack_noise``: see the module docstring.
    consistency (m_train copies, lambda, eta), smoothmix (m_train, ``steps`` of size ``alpha``,
    default 1.0, eta, mix_step) and macer (m_train, lambda, gamma, beta, deferred epochs) follow
    ``training.certified_objectives``.
    """
    if norm not in ("linf", "l2"):
        raise ConfigError(f"unknown attack norm {norm!r}; use linf or l2")
    if attack_noise not in ATTACK_NOISE:
        raise ConfigError(f"unknown attack_noise {attack_noise!r}; use {' or '.join(ATTACK_NOISE)}")
    if attack_noise != "fresh" and name != "smoothadv":
        raise ConfigError(f"attack_noise {attack_noise!r} applies to the smoothadv objective, not {name}")
    if norm != "linf" and name not in ("adversarial", "cni-iw", "epgd", "smoothadv"):
        raise ConfigError(f"attack norm {norm} applies to adversarial, cni-iw, epgd, smoothadv; not {name}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be an integer >= 0 (epochs), got {warmup!r}")
    if warmup and name not in ("epgd", "smoothadv", "smoothmix"):
        raise ConfigError(f"warmup applies to the epgd, smoothadv and smoothmix objectives, not {name!r}")
    if name in INPUT_NOISE_OBJECTIVES and sigma <= 0:
        raise ConfigError(
            f"the {name} objective trains on Gaussian input noise: it needs --sigma > 0 (pixel units)"
        )
    if name in ("consistency", "smoothmix", "macer") or (name == "smoothadv" and attack_noise == "shared"):
        from smoothinf.training import certified_objectives as co

        if name == "consistency":
            return co.consistency(sigma, m_train, consistency_lambda, consistency_eta)
        if name == "smoothmix":
            step_size = 1.0 if alpha is None else alpha
            return co.smoothmix(sigma, m_train, steps, step_size, smoothmix_eta, smoothmix_mix_step, warmup)
        if name == "macer":
            return co.macer(sigma, m_train, macer_lambda, macer_gamma, macer_beta, macer_deferred_epochs)
        return co.smoothadv_shared(sigma, eps, m_train, steps, alpha, weight, norm, warmup)
    if name in ("fgsm", "fgsm-rs", "n-fgsm"):
        return single_step(single_step_perturbation(name, eps, alpha, start_noise), weight, grad_align)
    step_rule = alpha is None  # Madry's 2.5 eps / steps, following eps through the warm-up
    alpha = 2.5 * eps / steps if alpha is None else alpha
    noise = NoiseDistribution("gaussian", sigma)
    if name == "standard":
        return standard()
    if name == "gaussian":
        return standard(sigma)
    if name in ("adversarial", "cni-iw"):
        if sigma > 0:  # the reference code's noise inside the forward: PGD on one noisy draw per step
            return adversarial(lambda model: EPGD(model, noise, 1, eps, alpha, steps, norm), weight, sigma)
        return adversarial(lambda model: PGD(model, eps, alpha, steps, norm), weight)
    if name == "trades":
        return trades(eps, alpha, steps, beta)
    if name in ("epgd", "smoothadv"):
        cls = EPGD if name == "epgd" else SmoothAdv
        if not warmup:
            make = lambda model: cls(model, noise, m_train, eps, alpha, steps, norm)  # noqa: E731
            return adversarial(make, weight, sigma, draws=m_train)
        from smoothinf.training.certified_objectives import EpochClock

        clock = EpochClock(name)

        def make_warm(model):
            eps_t = eps * clock.ramp(warmup)
            return cls(model, noise, m_train, eps_t, 2.5 * eps_t / steps if step_rule else alpha, steps, norm)

        step = adversarial(make_warm, weight, sigma, draws=m_train)
        step.set_epoch = clock.set_epoch  # type: ignore[attr-defined]
        return step
    raise ConfigError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")


def single_step(perturb: SingleStep, weight: float = 1.0, grad_align: float = 0.0) -> Objective:
    """Eq. 6 with x_adv from ``perturb``, plus ``grad_align`` * GradAlign when > 0.

    The returned objective carries ``objective.perturbation = perturb`` (the CO guard shrinks its
    step through it).
    """
    if grad_align < 0:
        raise ConfigError(f"grad_align must be >= 0, got {grad_align}")
    base = adversarial(lambda model: functools.partial(perturb, model), weight)

    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator=None) -> Step:
        out = base(model, x, y, generator)
        if grad_align > 0:
            out.loss = out.loss + grad_align * grad_align_penalty(model, x, y, perturb.eps, generator)
        return out

    step.perturbation = perturb  # type: ignore[attr-defined]
    return step
