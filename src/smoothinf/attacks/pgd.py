"""Projected gradient descent (Madry et al. 2018) with restarts, several losses and EOT.

One loop serves PGD, FGSM (one full step, no random start), EOT-PGD (``eot_iter`` draws of the
model's own randomness per step) and, through ``smoothinf.attacks.expectation``, EPGD and SmoothAdv:
they differ only in the expected loss whose gradient each step follows (``base.expected_loss``).
"""

from __future__ import annotations

import torch
from torch import nn

from smoothinf.attacks.base import (
    Attack,
    LossFn,
    check_positive_int,
    clip_to_threat,
    expected_loss,
    random_start,
    resolve_loss,
    steepest_step,
)
from smoothinf.errors import ConfigError
from smoothinf.noise.distributions import NoiseDistribution
from smoothinf.noise.draws import chunk_rows, grad_chunk_rows, noise_layers, weight_noise_values


class PGD(Attack):
    """L_inf / L2 PGD: x <- Proj(x + alpha * sign(grad)) (L_inf) or normalised-gradient steps (L2).

    Args:
        model: classifier returning logits or class scores (N, K); a SmoothedClassifier works too.
        eps: radius of the threat model (pixel units).
        alpha: step size (pixel units); default 2.5 * eps / steps (Madry et al.'s rule).
        steps: iterations per restart. random_start: start uniformly inside the eps-ball.
        restarts: independent runs; per example the worst (misclassified, else highest loss) is kept;
            restarts after the first only run on examples not yet fooled.
        loss: "ce" | "cw" | "dlr" | callable (logits (N,K), y (N,)) -> (N,) to maximise.
        targeted: y holds target classes and the loss is minimised.
        eot_iter: draws of the model's own randomness (PNI/CNI weight noise) per step, batched
            example-major through ``per_draw_noise``; the step follows the mean gradient (EOT).
        batch_size: bound on the rows of one forward (draws are chunked above it; default: see
            ``Attack.rows_per_forward``, and on CUDA also the rows whose saved activations fit half
            the free GPU memory, ``smoothinf.noise.grad_chunk_rows``).
    """

    name = "pgd"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        alpha: float | None = None,
        steps: int = 10,
        norm: str = "linf",
        random_start: bool = True,
        restarts: int = 1,
        loss: str | LossFn = "ce",
        targeted: bool = False,
        eot_iter: int = 1,
        *,
        batch_size: int | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, eps, norm, targeted=targeted, eval_mode=eval_mode, batch_size=batch_size)
        self.steps = check_positive_int(steps, "steps")
        self.restarts = check_positive_int(restarts, "restarts")
        self.m = check_positive_int(eot_iter, "eot_iter")
        if alpha is None:
            alpha = 2.5 * self.eps / self.steps
        if not isinstance(alpha, (int, float)) or alpha < 0:
            raise ConfigError(f"alpha must be a number >= 0 (pixel units), got {alpha!r}")
        self.alpha = float(alpha)
        self.random_start = bool(random_start)
        self.loss_fn = resolve_loss(loss)
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "callable")
        # The expectation the step follows: none here (EOT over the model's own noise only).
        self.noise: NoiseDistribution | None = None
        self.reduce = "loss"
        self._per_draw = True
        self._weight_values = 0
        self._grad_rows: int | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, "
            f"norm={self.norm!r}, restarts={self.restarts}, loss={self.loss_name!r}, m={self.m})"
        )

    def _expected(
        self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, need_grad: bool, need_probs: bool = True
    ):
        rows = chunk_rows(x, None, self.batch_size, weight_values=self._weight_values)
        if need_grad and self._grad_rows is not None:
            rows = min(rows, self._grad_rows)  # saved activations must fit the GPU's memory
        return expected_loss(
            self.model,
            x,
            y,
            self.loss_fn,
            noise=self.noise,
            m=self.m,
            reduce=self.reduce,
            generator=gen,
            batch_size=rows,
            need_grad=need_grad,
            per_draw=self._per_draw,
            need_probs=need_probs,
        )

    def _run(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One restart: ``steps`` projected steepest-ascent steps from a (random) start."""
        adv = random_start(x, self.eps, self.norm, gen) if self.random_start else x.clone()
        for _ in range(self.steps):
            grad = self._expected(adv, y, gen, True, need_probs=False)[0]
            if self.targeted:
                grad = -grad
            adv = clip_to_threat(adv + steepest_step(grad, self.alpha, self.norm), x, self.eps, self.norm)
        return adv

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        self._per_draw = not isinstance(self.model, nn.Module) or bool(noise_layers(self.model))
        self._weight_values = weight_noise_values(self.model) if isinstance(self.model, nn.Module) else 0
        module = self.batch_size is None and isinstance(self.model, nn.Module)
        self._grad_rows = grad_chunk_rows(self.model, x) if module else None  # None on the CPU
        if self.restarts == 1:
            return self._run(x, y, gen)
        n = x.shape[0]
        best = x.clone()
        best_loss = x.new_full((n,), float("-inf"))
        best_success = torch.zeros(n, dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            idx = (~best_success).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv = self._run(x[idx], y[idx], gen)
            with torch.no_grad():
                _, loss, probs = self._expected(adv, y[idx], gen, False)
            hit = probs.argmax(1) == y[idx]
            success = hit if self.targeted else ~hit
            score = -loss if self.targeted else loss
            prev = best_success[idx]
            better = (success & ~prev) | ((success == prev) & (score > best_loss[idx]))
            sel = idx[better]
            best[sel] = adv[better]
            best_loss[sel] = score[better]
            best_success[sel] = success[better]
        return best
