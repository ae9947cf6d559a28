"""A catastrophic-overfitting (CO) guard for single-step adversarial training.

Catastrophic overfitting (Wong et al. 2020; Andriushchenko & Flammarion 2020; de Jorge et al. 2022):
within a few iterations the accuracy under multi-step PGD falls to near zero while the accuracy
under the single-step attack the model is trained against rises. The guard watches exactly that on
one fixed validation mini-batch: every ``every`` optimizer steps (and at each epoch end) it measures
PGD-``pgd_steps`` accuracy and FGSM accuracy. A check is a *collapse* when the PGD accuracy fell by
more than ``drop`` below the last good check's while the FGSM accuracy did not fall, or when the FGSM
accuracy exceeds the PGD accuracy by more than ``gap`` (CO that set in before the model ever became
robust: from-scratch FGSM / FGSM-RS runs on MNIST at eps 0.3 never pass 3% PGD accuracy while their
FGSM accuracy climbs to 60-90%); any other check is good and becomes the new restore point
(weights and optimizer state, copied to CPU). On a collapse the guard logs it, restores the last
good point and either asks the trainer to stop (``action="stop"``) or multiplies the single-step
objective's step alpha by ``shrink`` and lets training go on (``action="shrink"``).

Cost of one check: (pgd_steps + 1) forward/backward passes plus one forward of ``examples`` images
for PGD, two passes for FGSM, and the copies. With the defaults (256 examples, PGD-10, every 100 steps
of batch 128) that is about 13 * 256 / (2 * 100 * 128) = 13% of the single-step training it
watches; measured in ``benchmarks/results/single_step.md``. Larger ``every`` makes it cheaper.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from smoothinf.attacks import FGSM, PGD
from smoothinf.errors import ConfigError

GUARD_ACTIONS = ("stop", "shrink")


@dataclass
class COGuardConfig:
    """Settings of the CO guard (fractions are accuracies in [0, 1])."""

    action: str = "stop"  # on collapse: "stop" training, or "shrink" the single-step alpha and go on
    every: int = 100  # check every N optimizer steps (0: at epoch ends only)
    examples: int = 256  # size of the fixed validation mini-batch
    pgd_steps: int = 10  # PGD steps of the multi-step check (step 2.5 eps / steps, random start)
    drop: float = 0.2  # PGD accuracy drop below the last good check that counts as a collapse
    gap: float = 0.5  # FGSM minus PGD accuracy above which a check is a collapse (1: criterion off)
    shrink: float = 0.5  # alpha multiplier after a collapse with action="shrink"
    seed: int = 0  # seeds the checks' random starts (every check draws the same starts)

    def validate(self) -> None:
        if self.action not in GUARD_ACTIONS:
            raise ConfigError(f"unknown CO guard action {self.action!r}; use {' or '.join(GUARD_ACTIONS)}")
        if self.every < 0:
            raise ConfigError(f"co_guard_every must be >= 0, got {self.every}")
        if self.examples < 1 or self.pgd_steps < 1:
            raise ConfigError("co_guard_examples and co_guard_pgd_steps must be >= 1")
        if not 0.0 < self.drop <= 1.0:
            raise ConfigError(f"co_guard_drop must lie in (0, 1], got {self.drop}")
        if not 0.0 < self.gap <= 1.0:
            raise ConfigError(f"co_guard_gap must lie in (0, 1], got {self.gap}")
        if not 0.0 < self.shrink < 1.0:
            raise ConfigError(f"co_guard_shrink must lie in (0, 1), got {self.shrink}")


@dataclass
class GuardCheck:
    """One check: optimizer step, PGD and FGSM accuracy on the fixed batch, and its verdict."""

    step: int
    pgd_acc: float
    fgsm_acc: float
    collapsed: bool = False
    restored_to: int | None = None  # step of the restore point on a collapse
    alpha: float | None = None  # the single-step alpha after the guard's action


@dataclass
class _Snapshot:
    step: int
    pgd_acc: float
    fgsm_acc: float
    model: dict[str, torch.Tensor]
    optimizer: dict | None


@dataclass
class COGuard:
    """The guard: ``check(model, optimizer, step)`` returns a ``GuardCheck``; ``history`` keeps them all.

    Args:
        config: ``COGuardConfig``.
        x, y: the fixed validation mini-batch (N,C,H,W) in [0, 1], (N,); only the first
            ``config.examples`` rows are used.
        eps: the L_inf radius of the checks (pixel units).
        perturbation: the objective's ``SingleStep`` (``objective.perturbation``), whose alpha
            ``action="shrink"`` reduces; needed for that action only.
    """

    config: COGuardConfig
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    perturbation: object | None = None
    history: list[GuardCheck] = field(default_factory=list)
    seconds: float = 0.0
    _good: _Snapshot | None = None

    def __post_init__(self) -> None:
        self.config.validate()
        if self.config.action == "shrink" and not hasattr(self.perturbation, "alpha"):
            raise ConfigError(
                "co_guard action 'shrink' needs a single-step objective (fgsm, fgsm-rs, n-fgsm)"
            )
        self.x = self.x[: self.config.examples]
        self.y = self.y[: self.config.examples]

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based, counted over the whole run) gets a check."""
        return self.config.every > 0 and step % self.config.every == 0

    @property
    def last_good_step(self) -> int | None:
        return None if self._good is None else self._good.step

    def accuracies(self, model: nn.Module) -> tuple[float, float]:
        """(PGD accuracy, FGSM accuracy) of ``model`` on the fixed batch; deterministic given weights."""
        device = next(model.parameters()).device
        x, y = self.x.to(device), self.y.to(device)
        gen = torch.Generator(device=device).manual_seed(self.config.seed)
        x_pgd = PGD(model, self.eps, steps=self.config.pgd_steps)(x, y, generator=gen)
        x_fgsm = FGSM(model, self.eps)(x, y, generator=gen)
        training = model.training
        model.eval()
        with torch.no_grad():
            pgd = (model(x_pgd).argmax(1) == y).float().mean().item()
            fgsm = (model(x_fgsm).argmax(1) == y).float().mean().item()
        model.train(training)
        return pgd, fgsm

    def check(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, step: int) -> GuardCheck:
        """Measure, then keep a restore point (good) or restore the last one and act (collapse)."""
        start = time.perf_counter()
        pgd, fgsm = self.accuracies(model)
        good = self._good
        dropped = good is not None and pgd < good.pgd_acc - self.config.drop and fgsm >= good.fgsm_acc
        collapsed = good is not None and (dropped or fgsm - pgd > self.config.gap)
        result = GuardCheck(step, pgd, fgsm, collapsed)
        if collapsed:
            model.load_state_dict(good.model)
            if optimizer is not None and good.optimizer is not None:
                optimizer.load_state_dict(copy.deepcopy(good.optimizer))
            result.restored_to = good.step
            if self.config.action == "shrink":
                self.perturbation.alpha *= self.config.shrink  # type: ignore[union-attr]
            print(
                f"CO guard: catastrophic overfitting at step {step} (PGD accuracy {pgd:.3f} vs "
                f"{good.pgd_acc:.3f} at step {good.step}, FGSM accuracy {fgsm:.3f} vs {good.fgsm_acc:.3f}); "
                f"restored step {good.step}"
                + (f", alpha now {self.perturbation.alpha:.4g}" if self.config.action == "shrink" else "")
                + (", stopping" if self.config.action == "stop" else ""),
                flush=True,
            )
        else:
            self._good = _Snapshot(
                step,
                pgd,
                fgsm,
                {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                None if optimizer is None else _cpu_copy(optimizer.state_dict()),
            )
        if self.perturbation is not None and hasattr(self.perturbation, "alpha"):
            result.alpha = float(self.perturbation.alpha)
        self.history.append(result)
        self.seconds += time.perf_counter() - start
        return result

    def records(self) -> list[dict]:
        """The history as JSON-ready dicts."""
        return [asdict(c) for c in self.history]


def _cpu_copy(state: dict) -> dict:
    """A deep copy of an optimizer state dict with every tensor on the CPU."""
    return copy.deepcopy(
        {
            "state": {
                k: {n: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else v for n, v in s.items()}
                for k, s in state["state"].items()
            },
            "param_groups": state["param_groups"],
        }
    )
