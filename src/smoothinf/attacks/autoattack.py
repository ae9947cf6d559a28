"""Adapter over the official AutoAttack (Croce & Hein 2020; the optional ``pyautoattack`` package).

Runs the documented protocol (standard: APGD-CE, APGD-T, FAB-T, Square; rand: APGD-CE and APGD-DLR
with EOT over 20 draws, for randomised defences) on our models and SmoothedClassifiers, whose
``forward`` returns (N, K) class scores as AutoAttack expects.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from smoothinf.attacks.base import check_eps, check_positive_int
from smoothinf.errors import ConfigError, SmoothinfError
from smoothinf.utils import check_images, check_labels, model_device

_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
VERSIONS = ("standard", "rand", "plus", "custom")


def _not_the_randomised_advice(record: logging.LogRecord) -> bool:
    return "randomized defense" not in record.getMessage()


@contextlib.contextmanager
def _chosen_attacks_on_purpose(version: str) -> Iterator[None]:
    """With version="custom" the attacks were chosen on purpose (e.g. Square as a black-box check on
    a randomised model): drop AutoAttack's advice to use version="rand" for this call only."""
    logger = logging.getLogger("auto-attack")
    if version == "custom":
        logger.addFilter(_not_the_randomised_advice)
    try:
        yield
    finally:
        logger.removeFilter(_not_the_randomised_advice)


class AutoAttackAdapter:
    """``attack(x, y, generator=None) -> x_adv`` through ``pyautoattack.AutoAttack``.

    Args:
        model: classifier or SmoothedClassifier (scores (N, K)).
        norm: "linf" | "l2" | "l1". eps: radius (pixel units).
        version: "standard" | "rand" | "plus" | "custom" (custom needs ``attacks``).
        attacks: AutoAttack's attack names for version="custom" (e.g. ["apgd-ce", "apgd-dlr"]).
        seed: AutoAttack's seed (it seeds torch's global RNG); None: drawn from ``generator``.
        batch_size: examples per AutoAttack batch.
        square_queries: queries of the Square attack (AutoAttack's default 5000), e.g. for a
            black-box check with ``attacks=["square"]``.
        verbose: keep AutoAttack's own logging.
    """

    name = "autoattack"

    def __init__(
        self,
        model: nn.Module,
        norm: str = "linf",
        eps: float = 8 / 255,
        version: str = "standard",
        *,
        attacks: list[str] | None = None,
        seed: int | None = None,
        batch_size: int = 500,
        square_queries: int | None = None,
        verbose: bool = False,
    ) -> None:
        if norm not in _NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose one of {', '.join(_NORMS)}")
        if version not in VERSIONS:
            raise ConfigError(f"unknown AutoAttack version {version!r}; choose one of {', '.join(VERSIONS)}")
        if version == "custom" and not attacks:
            raise ConfigError("version='custom' needs attacks=[...] (e.g. ['apgd-ce', 'apgd-dlr'])")
        self.model = model
        self.norm = norm
        self.eps = check_eps(eps)
        self.version = version
        self.attacks = list(attacks) if attacks else None
        self.seed = seed
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.square_queries = (
            None if square_queries is None else check_positive_int(square_queries, "square_queries")
        )
        self.verbose = bool(verbose)

    def __repr__(self) -> str:
        extra = f", attacks={self.attacks!r}" if self.attacks else ""
        extra += f", square_queries={self.square_queries}" if self.square_queries is not None else ""
        return f"AutoAttackAdapter(norm={self.norm!r}, eps={self.eps}, version={self.version!r}{extra})"

    def budget(self) -> dict[str, int]:
        """Gradient evaluations per example of the white-box part, at most (AutoAttack's settings:
        100 iterations per APGD run; rand: 2 runs x EOT 20; standard: APGD-CE + 9 APGD-T targets)."""
        if self.version == "rand":
            return {"steps": 100, "draws": 20, "restarts": 2, "gradients": 4000}
        if self.version == "standard":
            return {"steps": 100, "draws": 1, "restarts": 10, "gradients": 1000}
        return {}

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """x_adv (N,C,H,W): AutoAttack's worst case per example (x itself where every attack failed)."""
        try:
            from pyautoattack import AutoAttack
        except ImportError as exc:
            raise SmoothinfError(
                "AutoAttack is not installed; install the peers extra: "
                "pip install --no-deps pyautoattack==0.2.0"
            ) from exc
        device = model_device(self.model)
        check_images(x, "x", device)
        check_labels(y, x.shape[0])
        seed = self.seed
        if seed is None:
            seed = int(
                torch.randint(
                    0,
                    2**31 - 1,
                    (1,),
                    generator=generator,
                    device=generator.device if generator is not None else "cpu",
                )
            )
        training = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            kwargs = {"attacks": self.attacks} if self.version == "custom" else {}
            adversary = AutoAttack(
                self.model,
                eps=self.eps,
                norm=_NORMS[self.norm],
                version=self.version,
                device=device,
                seed=seed,
                **kwargs,
            )
            adversary.verbose = self.verbose
            if self.square_queries is not None:
                adversary.square.n_queries = self.square_queries
            with _chosen_attacks_on_purpose(self.version):
                x_adv, _ = adversary.run_standard_evaluation(
                    x.detach().clone(), y.detach().clone(), batch_size=self.batch_size
                )
        finally:
            for m, t in training:
                m.training = t
        return x_adv.detach().to(x.device)

    def attack(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self(x, y, generator)
