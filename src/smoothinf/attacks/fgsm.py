"""FGSM (Goodfellow et al. 2015): one full step, x' = clip(x + eps * sign(grad_x L(f(x), y)))."""

from __future__ import annotations

from torch import nn

from smoothinf.attacks.base import LossFn
from smoothinf.attacks.pgd import PGD


class FGSM(PGD):
    """Fast gradient sign method (``norm="l2"``: the fast gradient method, eps * g / ||g||_2).

    PGD with one step of size eps from x itself; optimal against a linear model.
    """

    name = "fgsm"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        loss: str | LossFn = "ce",
        targeted: bool = False,
        eot_iter: int = 1,
        *,
        batch_size: int | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(
            model,
            eps,
            alpha=eps,
            steps=1,
            norm=norm,
            random_start=False,
            restarts=1,
            loss=loss,
            targeted=targeted,
            eot_iter=eot_iter,
            batch_size=batch_size,
            eval_mode=eval_mode,
        )

    def __repr__(self) -> str:
        return f"FGSM(eps={self.eps}, norm={self.norm!r}, loss={self.loss_name!r})"
