"""APGD (Croce & Hein 2020) on an expected loss: the converging attack for randomised defences.

Auto-PGD needs no step-size tuning: it starts with a step of 2 eps, moves with momentum 0.75, and
at checkpoints (``checkpoints``: AutoAttack's, in whole steps; 22, 41, 57, ... for 100 steps)
halves the step of every example whose loss rose in fewer than rho = 75% of the steps since the
last checkpoint, or whose step and best loss did not change, and restarts it from its best point.
Here its loss is a Monte Carlo expectation over the smoothing noise and the model's own weight
noise, m draws per step batched exactly as EPGD's (``base.expected_loss``): ``reduce="loss"``
follows the expectation of the loss (EPGD / EOT style), ``reduce="softmax"`` the loss of the
expected softmax (SmoothAdv style). Losses: CE, CW, DLR; ``targeted=True`` minimises the loss of
the classes given in y; ``target_classes = T`` runs APGD-T, one run per each of the T most likely
wrong classes with the targeted DLR (or CE) loss, for an untargeted goal.
Cost per example: steps x m gradients per run, runs = restarts (x T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smoothinf.attacks.base import (
    LossFn,
    check_positive_int,
    clip_to_threat,
    random_start,
    steepest_step,
)
from smoothinf.attacks.best import JudgeFn, VisitedPoints
from smoothinf.attacks.expectation import ExpectationPGD
from smoothinf.errors import ConfigError
from smoothinf.noise.distributions import NoiseDistribution


def checkpoints(steps: int) -> list[int]:
    """APGD's checkpoints: the numbers of gradient steps after which the step size may halve, < steps.

    AutoAttack's ``APGDAttack`` counts them in whole steps: the first interval is floor(0.22 steps),
    each next one floor(0.03 steps) shorter (at least 1) but never under floor(0.06 steps) (at least
    1). For 100 steps: 22, 41, 57, 70, 80, 87, 93, 99 (the paper's p_j = 0.22, 0.41, ...); for 50:
    11, 21, 30, 38, 45, where rounding fractions of the budget would give 11, 21, 29, 35, ...
    """
    # integer percentages: the same as AutoAttack's max(int(0.22 * steps), 1) etc. (float products)
    first, shortest, shrink = (max(pct * steps // 100, 1) for pct in (22, 6, 3))
    marks: list[int] = []
    mark = interval = first
    while mark < steps:
        marks.append(mark)
        interval = max(interval - shrink, shortest)
        mark += interval
    return marks


def targeted_loss(name: str, num_classes: int) -> LossFn:
    """A loss to maximise for APGD-T, taking ``packed = y * K + t`` (true class y, target t) as labels.

    dlr: (z_t - z_y) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12) (Croce & Hein's targeted DLR, K >= 4);
    ce: -CE(z, t).
    """
    if name == "dlr" and num_classes < 4:
        raise ConfigError("the targeted dlr loss needs at least 4 classes; use loss='ce'")
    if name not in ("dlr", "ce"):
        raise ConfigError(f"APGD-T supports the dlr and ce losses, got {name!r}")

    def loss(logits: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        y, t = packed // num_classes, packed % num_classes
        if name == "ce":
            return -F.cross_entropy(logits, t, reduction="none")
        top = logits.sort(dim=1, descending=True).values
        gap = logits.gather(1, t[:, None])[:, 0] - logits.gather(1, y[:, None])[:, 0]
        return gap / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)

    return loss


class APGD(ExpectationPGD):
    """Auto-PGD on an expectation over noise (see the module docstring).

    Args:
        model: base classifier or SmoothedClassifier (then its noise, m and, as judge, itself).
        eps: radius (pixel units). steps: iterations per run (default 100, AutoAttack's).
        noise: NoiseDistribution, Gaussian sigma or None (the smoothed classifier's, else none).
        m: draws per step (default: the smoothed classifier's m, else 1). Weight-noise models get
            each draw its own weight noise, so m > 1 is EOT over their noise too.
        reduce: "loss" (expectation of the loss) or "softmax" (loss of the expected softmax).
        temperature: T > 0 divides every draw's logits first; T < 1 with reduce="softmax" follows
            the hard vote's tally (measured much stronger against prediction voting: docs/attack-strength.md).
        loss: "ce" | "cw" | "dlr" | callable. targeted: y holds targets, their loss is minimised.
        target_classes: T > 0 runs APGD-T over the T most likely wrong classes (untargeted goal).
        restarts: runs from fresh random starts (each on the examples not yet fooled).
        rho: fraction of loss increases below which the step halves. momentum: APGD's alpha.
        judge: classifier picking each example's strongest visited point with fresh noise.
        stop_decided: as in PGD (checks at the checkpoints within the first 60% of the steps).
    """

    name = "apgd"
    default_reduce = "loss"

    def __init__(
        self,
        model: nn.Module,
        eps: float | None = None,
        steps: int = 100,
        norm: str = "linf",
        *,
        noise: NoiseDistribution | float | None = None,
        m: int | None = None,
        reduce: str | None = None,
        temperature: float = 1.0,
        loss: str | LossFn = "ce",
        targeted: bool = False,
        target_classes: int = 0,
        restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        judge: nn.Module | JudgeFn | None = None,
        batch_size: int | None = None,
        eval_mode: bool = True,
        stop_decided: bool = False,
    ) -> None:
        if isinstance(target_classes, bool) or not isinstance(target_classes, int) or target_classes < 0:
            raise ConfigError(f"target_classes must be an integer >= 0, got {target_classes!r}")
        if target_classes and targeted:
            raise ConfigError("target_classes (APGD-T) picks its own targets; do not also pass targeted=True")
        if target_classes and not isinstance(loss, str):
            raise ConfigError("APGD-T needs a named loss (dlr or ce)")
        if not 0 < rho <= 1 or not 0 <= momentum < 1:
            raise ConfigError(f"rho must be in (0, 1] and momentum in [0, 1), got {rho}, {momentum}")
        super().__init__(
            model,
            noise=noise,
            m=m,
            eps=eps,
            alpha=0.0,
            steps=check_positive_int(steps, "steps"),
            norm=norm,
            random_start=True,
            restarts=restarts,
            loss=loss if not target_classes else "ce",
            targeted=targeted,
            reduce=reduce,
            temperature=temperature,
            judge=judge,
            batch_size=batch_size,
            eval_mode=eval_mode,
            stop_decided=stop_decided,
        )
        self.loss_name = loss if isinstance(loss, str) else self.loss_name
        self.target_classes = target_classes
        self.rho = float(rho)
        self.momentum = float(momentum)

    def __repr__(self) -> str:
        sigma = self.noise.sigma if self.noise is not None else 0.0
        t = f", target_classes={self.target_classes}" if self.target_classes else ""
        t += f", temperature={self.temperature:g}" if self.temperature != 1.0 else ""
        return (
            f"APGD(eps={self.eps}, steps={self.steps}, m={self.m}, sigma={sigma}, norm={self.norm!r}, "
            f"loss={self.loss_name!r}, reduce={self.reduce!r}, restarts={self.restarts}{t})"
        )

    def runs_per_restart(self) -> int:
        return max(1, self.target_classes)

    def _run(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, run: int) -> list[torch.Tensor]:
        if not self.target_classes:
            return self._apgd(x, y, y, self.loss_fn, gen)
        k = self._num_classes or 0
        with torch.no_grad():  # targets: the wrong classes by the surrogate's probabilities at x
            probs = self._expected(x, y, gen, False)[2]
        order = probs.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
        target = order[:, min(run % self.target_classes, k - 2)]
        return self._apgd(x, y, y * k + target, targeted_loss(self.loss_name, k), gen)

    def _apgd(
        self, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn, gen: torch.Generator
    ) -> list[torch.Tensor]:
        """One APGD run from a random start maximising ``loss_fn(logits, labels)``; ``y`` judges success."""
        n = x.shape[0]
        shape = (n,) + (1,) * (x.dim() - 1)
        sign = -1.0 if self.targeted else 1.0  # the loss to maximise is sign * loss
        step = x.new_full(shape, 2 * self.eps)
        visited = VisitedPoints(x)
        adv = random_start(x, self.eps, self.norm, gen)

        stop = self._run_stop(x, gen, checkpoints(self.steps))

        def evaluate(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if stop is None or stop.rows is None:
                grad, loss, probs = self._expected(point, labels, gen, True, loss_fn=loss_fn)
            else:  # only the examples not yet decided: the others keep a zero gradient
                rows = stop.rows
                part, loss, probs = self._expected(point[rows], labels[rows], gen, True, loss_fn=loss_fn)
                grad = torch.zeros_like(point).index_put_((rows,), part)
                loss, probs = stop.widen(loss, probs, y)
            hit = probs.argmax(1) == y
            visited.update(point, sign * loss, hit if self.targeted else ~hit)
            return sign * grad, sign * loss

        grad, loss = evaluate(adv)
        best_loss, best_x, best_grad = loss.clone(), adv.clone(), grad.clone()
        prev = adv
        marks = set(checkpoints(self.steps))
        last_mark = 0
        increases = torch.zeros(n, device=x.device)
        reduced = torch.ones(n, dtype=torch.bool, device=x.device)
        best_at_mark = best_loss.clone()
        for k in range(self.steps):
            z = clip_to_threat(adv + steepest_step(grad, step, self.norm), x, self.eps, self.norm)
            a = 1.0 if k == 0 else self.momentum
            nxt = clip_to_threat(adv + a * (z - adv) + (1 - a) * (adv - prev), x, self.eps, self.norm)
            if stop is not None and stop.rows is not None:  # decided examples stay where they are
                nxt = torch.where(stop.active.view(shape), nxt, adv)
            prev, adv = adv, nxt
            if k == self.steps - 1:
                break  # the last iterate is judged as a candidate; no gradient needed
            grad, new_loss = evaluate(adv)
            increases += (new_loss > loss).float()
            loss = new_loss
            better = loss > best_loss
            best_x[better], best_grad[better] = adv[better], grad[better]
            best_loss = torch.where(better, loss, best_loss)
            if k + 1 in marks:
                stalled = increases < self.rho * (k + 1 - last_mark)
                flat = ~reduced & (best_at_mark >= best_loss)
                reduced = stalled | flat
                step[reduced] /= 2
                adv[reduced], grad[reduced] = best_x[reduced], best_grad[reduced]
                prev[reduced] = adv[reduced]  # no momentum across a restart from the best point
                increases.zero_()
                best_at_mark = best_loss.clone()
                last_mark = k + 1
            if stop is not None and k + 1 in stop.marks:
                stop.check(visited, y)
                if stop.done:
                    break
        return visited.candidates(adv)
