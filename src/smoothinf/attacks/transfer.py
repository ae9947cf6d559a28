"""Transfer attack: craft adversarial examples on a source model, evaluate them on the target."""

from __future__ import annotations

from collections.abc import Callable

import torch

from smoothinf.errors import ConfigError

AttackFn = Callable[..., torch.Tensor]


class TransferAttack:
    """Wraps any attack built on a *source* model (plain or smoothed); ``attack(x, y)`` returns its
    x_adv unchanged for the target, which only judges them (``robust_accuracy``).

    The threat model (eps, norm) is the source attack's.
    """

    name = "transfer"

    def __init__(self, source_attack: AttackFn) -> None:
        if not callable(source_attack):
            raise ConfigError("source_attack must be an attack: callable (x, y, generator) -> x_adv")
        self.source_attack = source_attack
        self.eps = getattr(source_attack, "eps", None)
        self.norm = getattr(source_attack, "norm", None)

    def __repr__(self) -> str:
        return f"TransferAttack({self.source_attack!r})"

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """x_adv (N,C,H,W) crafted on the source model."""
        return self.source_attack(x, y, generator)

    def attack(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self(x, y, generator)
