"""Stop spending on decided examples inside an attack run.

AutoAttack drops the examples an attack fooled only between attacks; inside one APGD / PGD run
every example takes every step. On a randomised defence most fooled examples are fooled early, so
an attack with a judge (the defended classifier, or several: the rows sharing one crafting) checks,
at a few points of the run, the examples its surrogate already fools at their last surrogate
success: an example leaves the run when every judge gets that point wrong in ``STOP_JUDGEMENTS``
fresh judgements (one judgement first, the other ones only where it was wrong: the check costs
about one vote per example still right). Its candidates stay what they were; the final pick and
the protocol's judging are unchanged, so the worst case stays unbiased and only strength an
example might still have gained after the check is given up (measured against runs that take every
step: benchmarks/results/shared_crafting.md).

The check draws from a generator of its own (seeded from the run's generator's seed), so a run in
which no example is decided takes exactly the draws it took without the check.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from smoothinf.attacks.best import VisitedPoints
from smoothinf.attacks.judge import judged_correct

STOP_JUDGEMENTS = 16
"""Fresh judgements that must all be wrong before an example leaves a run."""
STOP_SPAN = 0.6
"""Checks happen at checkpoints within this share of the steps (later ones would save little)."""
_STOP_SALT = 0x5D1CED
"""Mixed into the run generator's seed to seed the check's own generator."""


def stop_generator(generator: torch.Generator) -> torch.Generator:
    """A generator for the checks, seeded from ``generator``'s seed (its draws are left alone)."""
    seed = (generator.initial_seed() ^ _STOP_SALT) & (2**63 - 1)
    return torch.Generator(device=generator.device).manual_seed(seed)


def stop_marks(steps: int, marks: Sequence[int] | None = None) -> set[int]:
    """Steps after which a run of ``steps`` steps checks for decided examples: its ``marks`` (APGD's
    checkpoints) within ``STOP_SPAN`` of the run, else a quarter and a half of the steps."""
    if marks is None:
        marks = [steps // 4, steps // 2]
    return {k for k in marks if 0 < k <= STOP_SPAN * steps and k < steps}


@torch.no_grad()
def decided(
    points: torch.Tensor,
    y: torch.Tensor,
    judges: Sequence[nn.Module],
    generator: torch.Generator,
    judgements: int = STOP_JUDGEMENTS,
) -> torch.Tensor:
    """(N,) bool: which of ``points`` (N, C, H, W) every judge gets wrong in ``judgements`` fresh
    judgements each (labels y (N,)); tested one judgement first, then the rest on what is left."""
    left = torch.ones(points.shape[0], dtype=torch.bool, device=points.device)
    for judge in judges:
        for count in (1, judgements - 1) if judgements > 1 else (1,):
            rows = left.nonzero().squeeze(1)
            if rows.numel() == 0:
                return left
            right = judged_correct(judge, points[rows], y[rows], generator, count)
            left[rows[right > 0]] = False
    return left


class RunStop:
    """The decided examples of one run over N examples: ``rows`` (k,) the ones still attacked (None:
    all of them, the run's usual path), ``check`` at the ``marks`` steps, ``widen`` to fill the
    skipped rows of a step's loss and probabilities so that ``VisitedPoints`` keeps them as they are."""

    def __init__(
        self,
        n: int,
        device: torch.device,
        marks: set[int],
        judges: Sequence[nn.Module],
        generator: torch.Generator,
    ) -> None:
        self.active = torch.ones(n, dtype=torch.bool, device=device)
        self.rows: torch.Tensor | None = None
        self.marks, self.judges = marks, list(judges)
        self.generator = stop_generator(generator)

    @property
    def done(self) -> bool:
        """Whether every example is decided."""
        return self.rows is not None and self.rows.numel() == 0

    def check(self, visited: VisitedPoints, y: torch.Tensor) -> None:
        """Retire the active examples whose last surrogate success every judge gets wrong (``decided``)."""
        fooled, any_fooled = visited.last_success()
        rows = (self.active & any_fooled).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        gone = decided(fooled[rows], y[rows], self.judges, self.generator)
        if bool(gone.any()):
            self.active[rows[gone]] = False
            self.rows = self.active.nonzero().squeeze(1)

    def widen(
        self, loss: torch.Tensor, probs: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss (N,), probs (N, K)) from the active rows' values: -inf loss and the true class's
        one-hot elsewhere (no new best point, no new success: untargeted runs only)."""
        n = self.active.shape[0]
        full_loss = loss.new_full((n,), float("-inf"))
        full_probs = torch.nn.functional.one_hot(y, probs.shape[1]).to(probs.dtype)
        full_loss[self.rows], full_probs[self.rows] = loss, probs
        return full_loss, full_probs
