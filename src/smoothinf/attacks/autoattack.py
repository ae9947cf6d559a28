"""Adapter over the official AutoAttack (Croce & Hein 2020; the optional ``pyautoattack`` package).

Runs the documented protocol (standard: APGD-CE, APGD-T, FAB-T, Square; rand: APGD-CE and APGD-DLR
with EOT over 20 draws, for randomised defences) on our models and SmoothedClassifiers, whose
``forward`` returns (N, K) class scores as AutoAttack expects.

``best_loss=True`` (version "rand" only) runs rand's two attacks with rand's settings (the official
``APGDAttack``, 100 iterations, EOT 20, one restart each) but keeps, for *every* example, each run's
highest-loss point on the surrogate (``x_best``), instead of AutoAttack's output, which is the clean
image wherever no single forward of the surrogate was fooled and which skips the examples a single
forward already gets wrong. On a randomised surrogate that output says little; best-loss points can
be judged by the defended classifier.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from smoothinf.attacks.base import check_eps, check_positive_int
from smoothinf.attacks.best import select_strongest
from smoothinf.errors import ConfigError, SmoothinfError
from smoothinf.utils import check_images, check_labels, model_device

_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
VERSIONS = ("standard", "rand", "plus", "custom")
# AutoAttack rand's attacks and their settings (``AutoAttack._set_version("rand")``).
RAND_LOSSES = {"apgd-ce": "ce", "apgd-dlr": "dlr"}
RAND_ITERATIONS, RAND_EOT, RAND_RESTARTS = 100, 20, 1


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


def _pyautoattack() -> tuple[type, type]:
    """``(AutoAttack, APGDAttack)`` of the ``pyautoattack`` package, or an error saying how to install it."""
    try:
        from pyautoattack import AutoAttack
        from pyautoattack.autopgd_base import APGDAttack
    except ImportError as exc:
        raise SmoothinfError(
            "AutoAttack is not installed; install the peers extra: pip install --no-deps pyautoattack==0.2.0"
        ) from exc
    return AutoAttack, APGDAttack


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode within the context; each module's mode restored afterwards."""
    training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in training:
            m.training = t


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device | str) -> Iterator[None]:
    """Torch's global RNG (CPU, and ``device`` when it is a GPU) seeded with ``seed`` within the
    context and restored afterwards."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


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
        best_loss: with version="rand", return best-loss points of every example (see the module
            docstring and ``best_loss_points``) instead of AutoAttack's adversarial examples.
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
        best_loss: bool = False,
    ) -> None:
        if norm not in _NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose one of {', '.join(_NORMS)}")
        if version not in VERSIONS:
            raise ConfigError(f"unknown AutoAttack version {version!r}; choose one of {', '.join(VERSIONS)}")
        if version == "custom" and not attacks:
            raise ConfigError("version='custom' needs attacks=[...] (e.g. ['apgd-ce', 'apgd-dlr'])")
        if best_loss and version != "rand":
            raise ConfigError(
                "best_loss=True runs AutoAttack rand's APGD-CE and APGD-DLR: use version='rand'"
            )
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
        self.best_loss = bool(best_loss)

    def __repr__(self) -> str:
        extra = f", attacks={self.attacks!r}" if self.attacks else ""
        extra += f", square_queries={self.square_queries}" if self.square_queries is not None else ""
        extra += ", best_loss=True" if self.best_loss else ""
        return f"AutoAttackAdapter(norm={self.norm!r}, eps={self.eps}, version={self.version!r}{extra})"

    @property
    def surrogate_draws(self) -> int:
        """Noise draws per forward of the attacked model: m of a SmoothedClassifier, else 1."""
        return int(getattr(self.model, "m", 1))

    def description(self) -> str:
        """What a call runs, in words (e.g. for a record)."""
        if not self.best_loss:
            return self.version
        return (
            f"rand (official APGD-CE + APGD-DLR, {RAND_ITERATIONS} iterations, EOT {RAND_EOT}, "
            f"best-loss points on a {self.surrogate_draws}-draw soft surrogate)"
        )

    def budget(self) -> dict[str, int]:
        """Gradient evaluations per example of the white-box part, at most (AutoAttack's settings:
        100 iterations per APGD run; rand: 2 runs x EOT 20 (x the surrogate's draws); standard:
        APGD-CE + 9 APGD-T targets)."""
        if self.version == "rand":
            draws = RAND_EOT * self.surrogate_draws
            runs = len(RAND_LOSSES) * RAND_RESTARTS
            return {
                "steps": RAND_ITERATIONS,
                "draws": draws,
                "restarts": runs,
                "gradients": RAND_ITERATIONS * draws * runs,
            }
        if self.version == "standard":
            return {"steps": 100, "draws": 1, "restarts": 10, "gradients": 1000}
        return {}

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """x_adv (N,C,H,W): AutoAttack's worst case per example (x itself where every attack failed);
        with ``best_loss``, per example the best-loss point of APGD-CE or APGD-DLR whose surrogate
        margin (true class score minus the best other) is smaller (``best_loss_points``)."""
        if self.best_loss:
            seed = self._seed(generator)
            points = list(self.best_loss_points(x, y, seed=seed).values())
            device = model_device(self.model)
            with torch.no_grad(), _eval_mode(self.model), _seeded(seed + 1, device):
                scores = self.model  # the surrogate's scores pick the candidate
                best, _, _ = select_strongest([p.to(device) for p in points], y.to(device), scores)
            return best.to(x.device)
        AutoAttack, _ = _pyautoattack()
        device = model_device(self.model)
        check_images(x, "x", device)
        check_labels(y, x.shape[0])
        seed = self._seed(generator)
        with _eval_mode(self.model):
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
        return x_adv.detach().to(x.device)

    def _seed(self, generator: torch.Generator | None) -> int:
        """``seed``, else one drawn from ``generator``."""
        if self.seed is not None:
            return self.seed
        device = generator.device if generator is not None else "cpu"
        return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device))

    def best_loss_points(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """AutoAttack rand's attacks with its settings, each returning best-loss points.

        For each of "apgd-ce" and "apgd-dlr" (DLR needs 3 or more classes; skipped below that):
        the official ``APGDAttack`` (``RAND_ITERATIONS`` iterations, EOT ``RAND_EOT``,
        ``RAND_RESTARTS`` restart) from a random start in the eps-ball, on every example of
        x (N, C, H, W) in [0, 1] with labels y (N,), and per example the point of highest surrogate
        loss it visited (N, C, H, W), whether or not the surrogate was fooled there. Torch's global
        RNG (the random start, a SmoothedClassifier's noise) is seeded from ``seed`` (default: the
        adapter's, else one drawn from ``generator``) inside and restored afterwards."""
        if not self.best_loss:
            raise SmoothinfError(
                "best_loss_points needs AutoAttackAdapter(..., version='rand', best_loss=True)"
            )
        _, APGDAttack = _pyautoattack()
        device = model_device(self.model)
        check_images(x, "x", device)
        check_labels(y, x.shape[0])
        seed = self._seed(generator) if seed is None else seed
        x_in, y_in = x.detach().to(device), y.detach().to(device).long()
        out: dict[str, torch.Tensor] = {}
        with _eval_mode(self.model), _seeded(seed, device):
            if x.shape[0] == 0:
                return {name: x.detach().clone() for name in RAND_LOSSES}
            with torch.no_grad():
                classes = self.model(x_in[:1]).shape[1]
            for name, loss in RAND_LOSSES.items():
                if loss == "dlr" and classes < 3:
                    continue
                apgd = APGDAttack(
                    self.model,
                    n_iter=RAND_ITERATIONS,
                    norm=_NORMS[self.norm],
                    n_restarts=RAND_RESTARTS,
                    eps=self.eps,
                    seed=seed,
                    loss=loss,
                    eot_iter=RAND_EOT,
                    rho=0.75,
                    device=device,
                    logger=logging.getLogger("auto-attack"),
                )
                apgd.init_hyperparam(x_in)
                best = x_in.clone()
                for rows in torch.arange(x.shape[0], device=device).split(self.batch_size):
                    best_loss = torch.full((rows.numel(),), float("-inf"), device=device)
                    torch.manual_seed(seed)  # as APGDAttack.perturb seeds each call
                    for _ in range(RAND_RESTARTS):
                        x_best, _, loss_best, _ = apgd.attack_single_run(x_in[rows], y_in[rows])
                        better = loss_best > best_loss
                        best[rows[better]] = x_best[better].detach()
                        best_loss = torch.where(better, loss_best, best_loss)
                out[name] = best.to(x.device)
        return out

    def attack(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self(x, y, generator)
