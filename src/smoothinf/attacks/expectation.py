"""Expectation attacks on smoothed classifiers: EPGD (the paper's) and SmoothAdv (Salman et al. 2019).

Both are PGD whose step follows the gradient of an expectation over m input-noise draws per step
(all m draws in one example-major batch, weight noise drawn per draw via ``per_draw_noise``); they
differ only in where the expectation sits:
- EPGD:      L = mean_i loss(f(x + n_i), y)                  (expectation of the loss, eq. 24/25)
- SmoothAdv: L = loss(log mean_i softmax f(x + n_i), y)      (loss of the expected softmax;
             with loss="ce" it is -log mean_i p_y(x + n_i))
Cost: steps * m gradients per restart. With m = 1 and sigma = 0 EPGD equals PGD exactly.

Step size: the paper's reference code steps eps / 4 (its PGD and EPGD), the default here. Madry et
al.'s 2.5 eps / steps stalls on averaged noisy gradients (on the quickstart model at sigma 0.1:
44% left after 20 steps where the converged attacks leave about 20%); ``APGD`` adapts its step.
"""

from __future__ import annotations

from torch import nn

from smoothinf.attacks.base import LossFn, check_positive_int, is_positive_number, unwrap_smoothed
from smoothinf.attacks.best import JudgeFn
from smoothinf.attacks.pgd import PGD
from smoothinf.errors import ConfigError
from smoothinf.noise.distributions import NoiseDistribution

REDUCTIONS = ("loss", "softmax")


class ExpectationPGD(PGD):
    """PGD on a Monte Carlo expectation over input noise (see the module docstring).

    Args:
        model: base classifier, or a SmoothedClassifier (then its ``.model`` is attacked with its
            ``.noise`` and, unless given, its ``.m``).
        noise: a NoiseDistribution or a Gaussian sigma (pixel units); None takes the smoothed
            classifier's (or no input noise for a plain model).
        m: noise draws per step (default: the smoothed classifier's m, else 1).
        eps, alpha, steps, norm, random_start, restarts, loss, targeted, batch_size: as in PGD.
        reduce: "loss" (EPGD) or "softmax" (SmoothAdv).
        temperature: T > 0 divides the logits of every draw before the loss; T < 1 with
            reduce="softmax" follows the hard vote's tally (see ``expected_loss``).
        judge: classifier that picks each example's strongest visited point with fresh noise;
            default: the SmoothedClassifier passed as ``model`` (else the surrogate expectation).
        stop_decided: as in PGD.
    """

    name = "epgd"
    default_reduce = "loss"

    def __init__(
        self,
        model: nn.Module,
        noise: NoiseDistribution | float | None = None,
        m: int | None = None,
        eps: float | None = None,
        alpha: float | None = None,
        steps: int = 10,
        norm: str = "linf",
        random_start: bool = True,
        restarts: int = 1,
        loss: str | LossFn = "ce",
        targeted: bool = False,
        *,
        reduce: str | None = None,
        temperature: float = 1.0,
        judge: nn.Module | JudgeFn | None = None,
        batch_size: int | None = None,
        eval_mode: bool = True,
        stop_decided: bool = False,
    ) -> None:
        if not is_positive_number(temperature):
            raise ConfigError(f"temperature must be a number > 0 and finite, got {temperature!r}")
        if eps is None:
            raise ConfigError("eps is required (pixel units)")
        reduce = self.default_reduce if reduce is None else reduce
        if reduce not in REDUCTIONS:
            raise ConfigError(f"unknown reduce {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
        base, s_noise, s_m = unwrap_smoothed(model)
        if noise is None:
            noise = s_noise
        elif isinstance(noise, (int, float)) and not isinstance(noise, bool):
            noise = NoiseDistribution.gaussian(float(noise))
        elif not isinstance(noise, NoiseDistribution):
            raise ConfigError("noise must be a NoiseDistribution, a Gaussian sigma, or None")
        m = check_positive_int(m if m is not None else (s_m or 1), "m")
        super().__init__(
            base,
            eps,
            alpha=alpha,
            steps=steps,
            norm=norm,
            random_start=random_start,
            restarts=restarts,
            loss=loss,
            targeted=targeted,
            eot_iter=m,
            judge=judge if judge is not None else (model if s_noise is not None else None),
            batch_size=batch_size,
            eval_mode=eval_mode,
            stop_decided=stop_decided,
        )
        self.noise = noise
        self.reduce = reduce
        self.temperature = float(temperature)

    def default_alpha(self) -> float:
        """The paper's reference step eps / 4 (see the module docstring)."""
        return self.eps / 4

    def __repr__(self) -> str:
        sigma = self.noise.sigma if self.noise is not None else 0.0
        return (
            f"{type(self).__name__}(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, m={self.m}, "
            f"sigma={sigma}, norm={self.norm!r}, restarts={self.restarts}, loss={self.loss_name!r})"
        )


class EPGD(ExpectationPGD):
    """Expectation PGD: the gradient of the expected loss mean_i L(f(x + n_i), y) (paper eq. 24/25)."""

    name = "epgd"
    default_reduce = "loss"


class SmoothAdv(ExpectationPGD):
    """SmoothAdv (Salman et al. 2019): the loss of the expected softmax, -log mean_i p_y(x + n_i)."""

    name = "smoothadv"
    default_reduce = "softmax"
