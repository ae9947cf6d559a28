"""Projected gradient descent (Madry et al. 2018) with restarts, several losses and EOT.

One loop serves PGD, FGSM (one full step, no random start), EOT-PGD (``eot_iter`` draws of the
model's own randomness per step) and, through ``smoothinf.attacks.expectation``, EPGD and SmoothAdv:
they differ only in the expected loss whose gradient each step follows (``base.expected_loss``).
Every run returns, per example, the strongest point it visited (``smoothinf.attacks.best``), judged
by a fresh estimate of the defended classifier (``judge``) or, without one, of the surrogate (a
deterministic surrogate's scores of the visited points are those its steps saw). When
that judgement is random, an example leaves the later restarts (APGD-T: targets) only once a second
judgement of the chosen point, with fresh draws, also finds it a success (``best.confirm``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from smoothinf.attacks.base import (
    Attack,
    LossFn,
    attack_mode,
    check_positive_int,
    clip_to_threat,
    ensure_generator,
    expected_loss,
    random_start,
    resolve_loss,
    steepest_step,
)
from smoothinf.attacks.best import JudgeFn, VisitedPoints, confirm, judge_scores, select_strongest
from smoothinf.attacks.decided import RunStop, stop_marks
from smoothinf.attacks.judge import is_randomised
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
        restarts: independent runs; restarts after the first only run on examples not yet fooled
            (for a random judgement: not yet fooled in both the selecting and a fresh judgement).
        loss: "ce" | "cw" | "dlr" | callable (logits (N,K), y (N,)) -> (N,) to maximise.
        targeted: y holds target classes and the loss is minimised.
        eot_iter: draws of the model's own randomness (PNI/CNI weight noise) per step, batched
            example-major through ``per_draw_noise``; the step follows the mean gradient (EOT).
        judge: the defended classifier (e.g. a SmoothedClassifier) that picks, per example, the
            strongest visited point with fresh noise; default: the surrogate the steps follow.
        batch_size: bound on the rows of one forward (draws are chunked above it; default: see
            ``Attack.rows_per_forward``, and on CUDA also the rows whose saved activations fit half
            the free GPU memory, ``smoothinf.noise.grad_chunk_rows``).
        stop_decided: with a judge, an untargeted run stops spending steps on the examples every
            judge already gets wrong at their last surrogate success (``smoothinf.attacks.decided``).
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
        judge: nn.Module | JudgeFn | None = None,
        batch_size: int | None = None,
        eval_mode: bool = True,
        stop_decided: bool = False,
    ) -> None:
        super().__init__(model, eps, norm, targeted=targeted, eval_mode=eval_mode, batch_size=batch_size)
        self.steps = check_positive_int(steps, "steps")
        self.restarts = check_positive_int(restarts, "restarts")
        self.m = check_positive_int(eot_iter, "eot_iter")
        if alpha is None:
            alpha = self.default_alpha()
        if not isinstance(alpha, (int, float)) or alpha < 0:
            raise ConfigError(f"alpha must be a number >= 0 (pixel units), got {alpha!r}")
        self.alpha = float(alpha)
        self.random_start = bool(random_start)
        self.loss_fn = resolve_loss(loss)
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "callable")
        if judge is not None and not callable(judge):
            raise ConfigError("judge must be a classifier (module or callable returning class scores)")
        self.judge = judge
        self.stop_decided = bool(stop_decided)
        self._stop_judges: list = []  # the judges of the current call (``_run_stop``)
        # The expectation the step follows: none here (EOT over the model's own noise only).
        self.noise: NoiseDistribution | None = None
        self.reduce = "loss"
        self.temperature = 1.0  # logits / T before the loss (``expected_loss``)
        self._per_draw = True
        self._weight_values = 0
        self._grad_rows: int | None = None
        # Deterministic surrogate, no judge (``_scores_reusable``, decided per call): ``_run`` leaves
        # the candidates' class scores seen at the steps in ``_known`` for ``select_strongest``.
        self._reuse_scores = False
        self._known: list[torch.Tensor | None] | None = None

    def default_alpha(self) -> float:
        """Madry et al.'s step rule 2.5 eps / steps (made for deterministic models)."""
        return 2.5 * self.eps / self.steps

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, "
            f"norm={self.norm!r}, restarts={self.restarts}, loss={self.loss_name!r}, m={self.m})"
        )

    def runs_per_restart(self) -> int:
        """Runs of ``steps`` steps per restart (APGD-T: one per target class)."""
        return 1

    def budget(self) -> dict[str, int]:
        """Compute per example, at most: steps x draws x restarts (x target classes) gradients."""
        runs = self.restarts * self.runs_per_restart()
        return {
            "steps": self.steps,
            "draws": self.m,
            "restarts": runs,
            "gradients": self.steps * self.m * runs,
        }

    def _expected(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        gen: torch.Generator,
        need_grad: bool,
        need_probs: bool = True,
        loss_fn: LossFn | None = None,
    ):
        """``expected_loss`` of ``loss_fn`` (default: the attack's loss) at ``x``."""
        rows = chunk_rows(x, None, self.batch_size, weight_values=self._weight_values)
        if need_grad and self._grad_rows is not None:
            rows = min(rows, self._grad_rows)  # saved activations must fit the GPU's memory
        return expected_loss(
            self.model,
            x,
            y,
            self.loss_fn if loss_fn is None else loss_fn,
            noise=self.noise,
            m=self.m,
            reduce=self.reduce,
            generator=gen,
            batch_size=rows,
            need_grad=need_grad,
            per_draw=self._per_draw,
            need_probs=need_probs,
            temperature=self.temperature,
        )

    def _track(self, visited: VisitedPoints, adv: torch.Tensor, y: torch.Tensor, loss, probs) -> None:
        """Record the surrogate's verdict at ``adv`` (loss (N,), mean probabilities (N, K))."""
        scores = probs if self._reuse_scores else None
        if self.targeted:
            visited.update(adv, -loss, probs.argmax(1) == y, scores)
        else:
            visited.update(adv, loss, probs.argmax(1) != y, scores)

    def _run(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, run: int) -> list[torch.Tensor]:
        """One restart: ``steps`` projected steepest-ascent steps from a (random) start; returns the
        candidate points (``VisitedPoints.candidates``)."""
        adv = random_start(x, self.eps, self.norm, gen) if self.random_start else x.clone()
        visited = VisitedPoints(x, shared=True)  # every iterate is a new tensor, never changed after
        stop = self._run_stop(x, gen)
        for k in range(self.steps):
            if stop is None or stop.rows is None:
                grad, loss, probs = self._expected(adv, y, gen, True)
                self._track(visited, adv, y, loss, probs)
                adv = self._step(adv, grad, x)
            else:  # only the examples not yet decided take the step
                rows = stop.rows
                grad, loss, probs = self._expected(adv[rows], y[rows], gen, True)
                self._track(visited, adv, y, *stop.widen(loss, probs, y))
                adv = adv.index_put((rows,), self._step(adv[rows], grad, x[rows]))
            if stop is not None and k + 1 in stop.marks:
                stop.check(visited, y)
                if stop.done:
                    break
        if self._reuse_scores:  # only the last iterate is new to the (deterministic) surrogate
            self._known = visited.candidate_scores(self._scores(y, gen)(adv))
        return visited.candidates(adv)

    def _step(self, adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The next iterate ``clip_to_threat(adv + steepest_step(+/-grad))``, computed in ``grad``'s
        buffer when it has its own (the same numbers, without temporaries); ``adv`` is left as is."""
        if not grad.is_contiguous():  # e.g. an expanded gradient of a sum: no buffer of its own
            grad = grad.clone()
        if self.targeted:
            grad.neg_()
        step = steepest_step(grad, self.alpha, self.norm, inplace=True)
        return clip_to_threat(step.add_(adv), x, self.eps, self.norm, inplace=True)

    def _scores(self, y: torch.Tensor, gen: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
        """Class scores of candidate points: the judge's, else the surrogate's mean probabilities."""
        if self.judge is not None:
            return lambda xc: judge_scores(self.judge, xc, gen)

        def surrogate(xc: torch.Tensor) -> torch.Tensor:
            reps = xc.shape[0] // y.shape[0]
            with torch.no_grad():
                return self._expected(xc, y.repeat(reps), gen, False)[2]

        return surrogate

    def _random_scores(self) -> bool:
        """Whether ``_scores`` is random: a randomised judge (``is_randomised``), else a surrogate with
        input noise (sigma > 0) or a randomised model."""
        if self.judge is not None:
            return is_randomised(self.judge)
        return (self.noise is not None and self.noise.sigma > 0) or is_randomised(self.model)

    def _scores_reusable(self) -> bool:
        """Whether the candidates may keep the class scores seen at the steps (only the last iterate
        is then scored anew): the scorer is the surrogate itself (no judge), with one draw (m = 1),
        deterministic (``_random_scores``) and in eval mode everywhere (no batch statistics or
        dropout), so a second forward of a visited point gives its scores again (to rounding: a
        kernel may round a row differently in a batch of another size)."""
        return (
            self.judge is None
            and self.m == 1
            and not self._random_scores()
            and isinstance(self.model, nn.Module)
            and not any(mod.training for mod in self.model.modules())
        )

    def single_run(self) -> bool:
        """Whether a call is one run of ``steps`` steps (one restart, no APGD-T targets): the
        defended classifier then only picks each example's point among the run's candidates, so
        several classifiers can share one crafting (``craft``, then ``pick`` per classifier)."""
        return self.restarts * self.runs_per_restart() == 1

    def craft(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        judges: list | None = None,
    ) -> list[torch.Tensor]:
        """The candidate points of one run (``single_run``), each (N,C,H,W): the last iterate, the
        point of highest surrogate loss and the last surrogate success, for ``pick`` to choose from
        with any judge. ``pick(x, craft(x, y, g), y, g)`` returns what ``self(x, y, g)`` does.
        ``judges`` (default: the attack's judge) decide, with ``stop_decided``, which examples the
        run may stop on: those every one of them gets wrong."""
        if not self.single_run():
            raise ConfigError(f"{self!r} runs several times; only a single run's candidates can be shared")
        if x.shape[0] == 0:
            self._checked(x, y)
            return [x.clone() for _ in range(3)]
        self._stop_judges = list(judges) if judges is not None else self._own_judges()
        try:
            return self._run_checked(self._craft, x, y, generator)
        finally:
            self._stop_judges = []

    def _craft(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        self._prepare(x)
        self._reuse_scores = False  # ``pick`` scores every candidate
        return self._run(x, y, gen, 0)

    def pick(
        self,
        x: torch.Tensor,
        candidates: list[torch.Tensor],
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        judge: nn.Module | JudgeFn | None = None,
    ) -> torch.Tensor:
        """Per example, the strongest of ``candidates`` (from ``craft`` on x (N,C,H,W)) by ``judge``'s
        class scores (default: the attack's judge, else its surrogate), clipped to the threat model."""
        self._checked(x, y)
        if x.shape[0] == 0:
            return x.clone()
        gen = ensure_generator(generator, x.device)
        judge = self.judge if judge is None else judge
        module = self.model if isinstance(self.model, nn.Module) else nn.Module()
        with attack_mode(module, self.eval_mode):
            score = (lambda xc: judge_scores(judge, xc, gen)) if judge is not None else self._scores(y, gen)
            best = select_strongest(candidates, y, score, self.targeted)[0]
        return clip_to_threat(best, x.detach(), self.eps, self.norm)

    def _prepare(self, x: torch.Tensor) -> None:
        """Per-call state: how draws are batched and chunked for inputs like ``x``."""
        self._per_draw = not isinstance(self.model, nn.Module) or bool(noise_layers(self.model))
        self._weight_values = weight_noise_values(self.model) if isinstance(self.model, nn.Module) else 0
        module = self.batch_size is None and isinstance(self.model, nn.Module)
        self._grad_rows = grad_chunk_rows(self.model, x) if module else None  # None on the CPU

    def _own_judges(self) -> list:
        return [self.judge] if self.judge is not None else []

    def _run_stop(
        self, x: torch.Tensor, gen: torch.Generator, marks: list[int] | None = None
    ) -> RunStop | None:
        """The decided-example checks of one run on x (None: no checks: ``stop_decided`` off, no
        judge, or a targeted run)."""
        checks = stop_marks(self.steps, marks)
        if not (self.stop_decided and self._stop_judges and checks) or self.targeted:
            return None
        return RunStop(x.shape[0], x.device, checks, self._stop_judges, gen)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        self._prepare(x)
        self._stop_judges = self._own_judges()
        n = x.shape[0]
        best = x.clone()
        best_success = torch.zeros(n, dtype=torch.bool, device=x.device)
        runs = self.restarts * self.runs_per_restart()
        random_scores = runs > 1 and self._random_scores()
        self._reuse_scores = self._scores_reusable()
        for run in range(runs):
            idx = (~best_success).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xi, yi = x[idx], y[idx]
            self._known = None
            cands = self._run(xi, yi, gen, run)
            known = self._known
            if run > 0:
                cands.append(best[idx])  # the judge compares this run's points with the best so far
                known = None if known is None else [*known, None]
            best[idx], hit, _ = select_strongest(cands, yi, self._scores(yi, gen), self.targeted, known)
            if random_scores and run + 1 < runs:  # the picking vote is biased: stop on a fresh one only
                hit = confirm(best[idx], yi, hit, lambda xc, yc: self._scores(yc, gen)(xc), self.targeted)
            best_success[idx] = hit
        return best
