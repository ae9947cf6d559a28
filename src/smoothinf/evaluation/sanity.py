"""Athalye et al.-style sanity checks of an evaluation: failures suggest gradient obfuscation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from smoothinf.attacks import FGSM, PGD


@dataclass
class Check:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        if self.passed:
            return f"ok: {self.name} ({self.detail})"
        return f"WARNING: possible gradient obfuscation: {self.name} failed ({self.detail})"


@torch.no_grad()
def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def run_sanity_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 20,
    seed: int = 0,
    tolerance: float = 0.02,
) -> list[Check]:
    """White-box checks on the base model: iterative >= single step, more steps do not help the
    defence, accuracy non-increasing in eps, and eps = 1 (the whole pixel range) gives ~0%."""
    gen = lambda: torch.Generator(device=x.device).manual_seed(seed)  # noqa: E731
    fgsm = _acc(model, FGSM(model, eps)(x, y, generator=gen()), y)
    pgd = _acc(model, PGD(model, eps, steps=steps)(x, y, generator=gen()), y)
    pgd_long = _acc(model, PGD(model, eps, steps=2 * steps)(x, y, generator=gen()), y)
    half = _acc(model, PGD(model, eps / 2, steps=steps)(x, y, generator=gen()), y)
    huge = _acc(model, PGD(model, 1.0, alpha=0.1, steps=steps)(x, y, generator=gen()), y)
    return [
        Check(
            "iterative attack at least as strong as single-step",
            pgd <= fgsm + tolerance,
            f"PGD-{steps} {pgd:.3f} vs FGSM {fgsm:.3f}",
        ),
        Check(
            "more attack steps do not raise accuracy",
            pgd_long <= pgd + tolerance,
            f"PGD-{2 * steps} {pgd_long:.3f} vs PGD-{steps} {pgd:.3f}",
        ),
        Check(
            "accuracy non-increasing in eps",
            pgd <= half + tolerance,
            f"eps {eps:g}: {pgd:.3f} vs eps {eps / 2:g}: {half:.3f}",
        ),
        Check("eps = 1 gives ~0% accuracy", huge <= 0.01, f"PGD at eps 1: {huge:.3f}"),
    ]


def check_records(records_by_setting: dict, tolerance: float = 0.02) -> list[Check]:
    """Checks on aggregated rows (``aggregate`` output): PGD at least as strong as FGSM, and
    white-box PGD at least as strong as transfer on the base model, where both ran."""
    checks = []
    for setting, row in records_by_setting.items():
        att = row["attacks"]
        if "pgd" in att and "fgsm" in att:
            checks.append(
                Check(
                    f"{setting}: PGD at least as strong as FGSM",
                    att["pgd"][0] <= att["fgsm"][0] + tolerance,
                    f"{att['pgd'][0]:.3f} vs {att['fgsm'][0]:.3f}",
                )
            )
        if setting.startswith("base") and "pgd" in att and "transfer" in att:
            checks.append(
                Check(
                    f"{setting}: white-box PGD at least as strong as transfer",
                    att["pgd"][0] <= att["transfer"][0] + tolerance,
                    f"{att['pgd'][0]:.3f} vs {att['transfer'][0]:.3f}",
                )
            )
    return checks
